"""``isda visualize --generator biggan`` (torch_isda.visualize.biggan): the BigGAN adapter of
pytorch-pretrained-biggan, tested with a small randomly initialised model of the same class
(no weight download), and pixel-space neighbours for image folders (Fig. 14)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

pytest.importorskip("matplotlib")
pytest.importorskip("PIL")

from data_fixtures import make_imagefolder  # noqa: E402

from torch_isda import cli  # noqa: E402
from torch_isda.data import create_dataset  # noqa: E402
from torch_isda.visualize.biggan import (  # noqa: E402
    BigGANGenerator,
    ClassBoundGenerator,
    build_biggan,
    imagefolder_images,
    imagefolder_nearest_neighbours,
    load_biggan,
    truncated_noise,
)
from torch_isda.visualize.inversion import invert, nearest_neighbours  # noqa: E402

TINY = {"output_dim": 32, "z_dim": 8, "class_embed_dim": 8, "channel_width": 4, "num_classes": 5,
        "layers": [[True, 16, 8], [True, 8, 4], [True, 4, 2], [False, 2, 1]],
        "attention_layer_position": 2, "n_stats": 51, "eps": 1e-4}


@pytest.fixture(scope="module")
def biggan_dir(tmp_path_factory):
    """A randomly initialised BigGAN saved like a pretrained one (config.json + weights);
    the tests using it skip without the ``biggan`` extra (not part of ``test``)."""
    if importlib.util.find_spec("pytorch_pretrained_biggan") is None:
        pytest.skip("pytorch-pretrained-biggan is not installed: pip install -e '.[test,biggan]'")
    root = tmp_path_factory.mktemp("biggan")
    model = build_biggan(TINY, seed=0)
    (root / "config.json").write_text(json.dumps(TINY))
    torch.save(model.state_dict(), root / "pytorch_model.bin")
    return root


def test_truncated_noise_is_bounded_and_scaled():
    z = truncated_noise(2000, 8, 0.4, torch.Generator().manual_seed(0))
    assert z.shape == (2000, 8) and float(z.abs().max()) <= 0.8 + 1e-6
    # a standard normal truncated to [-2, 2] has std 0.8796
    assert abs(float(z.std()) / 0.4 - 0.8796) < 0.02


def test_load_biggan_from_directory_matches_the_model(biggan_dir):
    G = load_biggan(biggan_dir, truncation=0.5)
    ref = build_biggan(TINY, seed=0).eval()
    z, labels = torch.randn(3, 8), torch.tensor([0, 4, 2])
    onehot = torch.nn.functional.one_hot(labels, 5).float()
    torch.testing.assert_close(G(z, labels), ref(z, onehot, 0.5))
    assert G.image_shape == (3, 32, 32) and G.num_classes == 5 and G.z_dim == 8
    assert not any(p.requires_grad for p in G.parameters())
    small = load_biggan(biggan_dir, truncation=0.5, image_size=16)
    out = small(z, labels)
    assert out.shape == (3, 3, 16, 16) and out.abs().max() <= 1
    with pytest.raises(FileNotFoundError, match="missing: config.json, pytorch_model.bin"):
        load_biggan(biggan_dir / "nothing")
    with pytest.raises(ValueError, match="truncation must be in"):
        BigGANGenerator(ref, truncation=0.0)


def test_class_bound_generator_gives_each_latent_its_image_class(biggan_dir):
    G = load_biggan(biggan_dir, truncation=0.4)
    bound = ClassBoundGenerator(G, torch.tensor([3, 1]))
    z = torch.randn(6, 8)  # 3 latents per image, sample-major (restarts / augmentations)
    out = bound(z)
    want = G(z * 0.4, torch.tensor([3, 3, 3, 1, 1, 1]))
    torch.testing.assert_close(out, want)
    with pytest.raises(ValueError, match="expected a multiple of 2"):
        bound(torch.randn(3, 8))
    with pytest.raises(ValueError, match=r"classes must lie in \[0, 5\)"):
        ClassBoundGenerator(G, torch.tensor([5]))
    # Step I starts from BigGAN's truncated noise
    res = invert(bound, lambda x: x.mean((2, 3)), torch.zeros(2, 3, 32, 32), iterations=0, restarts=2,
                 rng=torch.Generator().manual_seed(1))
    assert res.z.shape == (2, 8) and float(res.z.abs().max()) <= 2.0
    again = bound.sample_latent(4, torch.Generator().manual_seed(1))
    assert float(again.abs().max()) <= 2.0


def test_imagefolder_neighbours_match_brute_force(tmp_path):
    root = make_imagefolder(tmp_path / "folder", n_train=3, n_val=1)
    data = create_dataset("imagefolder", root=str(root), image_size=16)
    queries = imagefolder_images(data.val, [0, 1, 2], 16)
    assert queries.shape == (3, 3, 16, 16) and 0 <= queries.min() and queries.max() <= 1
    idx, dist = imagefolder_nearest_neighbours(queries, data.train, k=4, chunk_size=2)
    everything = imagefolder_images(data.train, range(len(data.train)), 16)
    want_idx, want_dist = nearest_neighbours(queries, everything, 4)
    assert torch.equal(idx, want_idx)
    torch.testing.assert_close(dist, want_dist)
    # a training image is its own nearest neighbour at distance 0
    own, d0 = imagefolder_nearest_neighbours(everything[5:6], data.train, k=1, chunk_size=4)
    assert int(own[0, 0]) == 5 and float(d0[0, 0]) < 1e-6


def test_visualize_biggan_end_to_end(biggan_dir, tmp_path, capsys):
    root = make_imagefolder(tmp_path / "folder", n_train=3, n_val=1)
    run = tmp_path / "run"
    assert cli.main(["train", "--dataset", "imagefolder", "--data-dir", str(root), "--dataset-kwargs",
                     "image_size=16", "--model", "digits_cnn", "--preset", "small_cnn", "--loss", "isda",
                     "--epochs", "1", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--quiet",
                     "--out", str(run)]) == 0
    out = tmp_path / "vis"
    args = ["visualize", "--classifier", str(run), "--generator", "biggan", "--biggan-model", str(biggan_dir),
            "--truncation", "0.5", "--biggan-classes", "0,2,4", "--num-samples", "3", "--num-augmented", "2",
            "--num-neighbours", "2", "--step1-iterations", "2", "--step2-iterations", "2", "--restarts", "1",
            "--device", "cpu", "--quiet", "--out", str(out)]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "Step I  (Eq. 20)" in printed and "Step II (Eq. 21)" in printed
    summary = json.loads((out / "visualization.json").read_text())
    assert summary["inputs"]["generator"] == "biggan" and summary["inputs"]["truncation"] == 0.5
    assert summary["settings"]["biggan_classes"] == [0, 2, 4]  # one val image per class, in order
    for name in ("augmented.png", "neighbours.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the default identity class map needs BigGAN's number of classes
    assert cli.main([a for a in args if a not in ("--biggan-classes", "0,2,4")]) == 2
    assert "the dataset has 3 classes, BigGAN 5" in capsys.readouterr().err


def test_biggan_options_need_the_biggan_generator(tmp_path, capsys):
    assert cli.main(["visualize", "--classifier", str(tmp_path), "--generator", str(tmp_path),
                     "--truncation", "0.7"]) == 2
    assert "--truncation applies to --generator biggan only" in capsys.readouterr().err


def test_biggan_needs_an_imagefolder_run_and_the_package(tmp_path, capsys, monkeypatch):
    run = tmp_path / "digits"
    assert cli.main(["train", "--loss", "isda", "--epochs", "1", "--model-kwargs", "width=4",
                     "--device", "cpu", "--quiet", "--out", str(run)]) == 0
    assert cli.main(["visualize", "--classifier", str(run), "--generator", "biggan", "--quiet"]) == 2
    assert "visualises ImageNet-style imagefolder runs" in capsys.readouterr().err
    import sys

    monkeypatch.setitem(sys.modules, "pytorch_pretrained_biggan", None)
    with pytest.raises(ImportError, match=r"pip install 'torch-isda\[biggan\]'"):
        load_biggan("biggan-deep-128")
