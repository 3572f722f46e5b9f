"""``isda gan train`` and ``isda visualize`` (torch_isda.cli.gan / torch_isda.cli.visualize)."""

from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

from torch_isda import CovarianceEstimator, cli  # noqa: E402
from torch_isda.visualize.gan import load_gan_checkpoint, train_gan  # noqa: E402
from torch_isda.visualize.inversion import augment_features  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY_GAN = ["--dim", "16", "--batch-size", "8", "--z-dim", "8", "--sample-every", "0",
            "--device", "cpu", "--quiet"]
TINY_VIS = ["--step1-iterations", "3", "--step2-iterations", "3", "--restarts", "2",
            "--num-samples", "3", "--num-augmented", "2", "--num-neighbours", "2",
            "--device", "cpu"]


def _train_classifier(out, loss):
    status = cli.main(["train", "--dataset", "digits", "--loss", loss, "--epochs", "1",
                       "--model-kwargs", "width=4", "--device", "cpu", "--quiet",
                       "--out", str(out)])
    assert status == 0
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("vis_cli")
    isda_run = _train_classifier(root / "digits-isda", "isda")
    ce_run = _train_classifier(root / "digits-ce", "ce")
    gan = root / "gan"
    assert cli.main(["gan", "train", "--out", str(gan), "--iterations", "2", *TINY_GAN]) == 0
    return {"isda": isda_run, "ce": ce_run, "gan": gan, "root": root}


# ---------------------------------------------------------------------------- isda gan train


def test_gan_train_writes_checkpoint_and_samples_and_resumes(tmp_path, capsys):
    out = tmp_path / "gan"
    assert cli.main(["gan", "train", "--out", str(out), "--iterations", "2", *TINY_GAN]) == 0
    assert (out / "samples.png").read_bytes()[:8] == PNG_MAGIC
    state = load_gan_checkpoint(out)
    assert state["iteration"] == 2 and state["dataset"] == "digits"
    assert tuple(state["config"]["image_shape"]) == (1, 8, 8) and state["config"]["arch"] == "mlp"
    assert "2 iterations on digits" in capsys.readouterr().out

    # resume to 4 iterations: identical to an uninterrupted 4-iteration run
    assert cli.main(["gan", "train", "--out", str(out), "--iterations", "4", *TINY_GAN]) == 0
    straight = tmp_path / "straight"
    assert cli.main(["gan", "train", "--out", str(straight), "--iterations", "4", *TINY_GAN]) == 0
    a, b = load_gan_checkpoint(out), load_gan_checkpoint(straight)
    assert a["iteration"] == b["iteration"] == 4
    for key in a["generator"]:
        torch.testing.assert_close(a["generator"][key], b["generator"][key], rtol=0, atol=0)

    # already done: nothing to train; asking for fewer iterations is an error
    assert cli.main(["gan", "train", "--out", str(out), "--iterations", "4", "--dim", "16",
                     "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "nothing to do" in err and "resuming" not in err  # said once, not contradicted
    assert cli.main(["gan", "train", "--out", str(out), "--iterations", "3", *TINY_GAN]) == 2
    assert "already has 4 iterations" in capsys.readouterr().err


def test_gan_train_resume_with_other_settings_is_an_error(tmp_path, capsys):
    out = tmp_path / "gan"
    assert cli.main(["gan", "train", "--out", str(out), "--iterations", "1", *TINY_GAN]) == 0
    capsys.readouterr()
    assert cli.main(["gan", "train", "--out", str(out), "--iterations", "2", "--z-dim", "16",
                     "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("isda gan train: error:") and "--z-dim 16 (saved: 8)" in err and "--force" in err
    # --force starts over with the new settings
    assert cli.main(["gan", "train", "--out", str(out), "--iterations", "1", "--z-dim", "16",
                     "--dim", "16", "--batch-size", "8", "--quiet", "--force"]) == 0
    assert load_gan_checkpoint(out)["config"]["z_dim"] == 16


def test_gan_train_unknown_dataset(tmp_path, capsys):
    assert cli.main(["gan", "train", "--dataset", "digitz", "--out", str(tmp_path / "g")]) == 2
    assert "Unknown dataset 'digitz'" in capsys.readouterr().err


# ---------------------------------------------------------------------------- isda visualize


def test_visualize_end_to_end(runs, tmp_path, capsys):
    out = tmp_path / "vis"
    status = cli.main(["visualize", "--classifier", str(runs["isda"]), "--generator", str(runs["gan"]),
                       "--out", str(out), "--lam", "0.5", *TINY_VIS])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    for name in ("augmented.png", "neighbours.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    summary = json.loads((out / "visualization.json").read_text())
    assert summary["num_samples"] == 3 and summary["num_augmented"] == 2
    for key in ("step1_feature_mse", "step1_pixel_mse", "step2_feature_mse", "augmentation_mse"):
        assert math.isfinite(summary[key])
    assert summary["settings"]["step1_iterations"] == 3 and summary["settings"]["restarts"] == 2
    assert summary["inputs"]["classifier"] == str(runs["isda"])
    assert "ISDA estimate" in summary["inputs"]["covariance"]
    assert summary["augmentation_mse"] > 0  # the run's covariance is not zero
    lines = captured.out.splitlines()
    step1 = [line for line in lines if line.startswith("Step I ")]
    step2 = [line for line in lines if line.startswith("Step II ")]
    assert len(step1) == len(step2) == 1
    assert f"{summary['step1_feature_mse']:.4g}" in step1[0]
    assert f"{summary['step2_feature_mse']:.4g}" in step2[0]
    assert "feature-space MSE" in step1[0] and "feature-space MSE" in step2[0]


def test_visualize_missing_dirs_and_files(runs, tmp_path, capsys):
    missing = tmp_path / "nope"
    assert cli.main(["visualize", "--classifier", str(missing), "--generator", str(runs["gan"]),
                     "--out", str(tmp_path / "v")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("isda visualize: error:")
    assert "classifier run directory" in err and str(missing) in err and "does not exist" in err

    assert cli.main(["visualize", "--classifier", str(runs["isda"]), "--generator", str(missing),
                     "--out", str(tmp_path / "v")]) == 2
    err = capsys.readouterr().err
    assert "generator directory" in err and "isda gan train" in err

    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["visualize", "--classifier", str(runs["isda"]), "--generator", str(empty),
                     "--out", str(tmp_path / "v")]) == 2
    assert "no GAN checkpoint" in capsys.readouterr().err
    assert cli.main(["visualize", "--classifier", str(empty), "--generator", str(runs["gan"]),
                     "--out", str(tmp_path / "v")]) == 2
    assert "has no config.json" in capsys.readouterr().err


def test_visualize_run_without_isda_needs_estimate_covariance(runs, tmp_path, capsys):
    args = ["visualize", "--classifier", str(runs["ce"]), "--generator", str(runs["gan"]),
            "--out", str(tmp_path / "v"), *TINY_VIS]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "holds no ISDA covariance estimate" in err and "--estimate-covariance" in err
    assert "'ce'" in err
    assert not (tmp_path / "v" / "augmented.png").exists()

    assert cli.main([*args, "--estimate-covariance", "--quiet"]) == 0
    assert (tmp_path / "v" / "augmented.png").read_bytes()[:8] == PNG_MAGIC
    summary = json.loads((tmp_path / "v" / "visualization.json").read_text())
    assert summary["inputs"]["estimate_covariance"] is True
    assert summary["augmentation_mse"] > 0
    assert "Step II (Eq. 21) final feature-space MSE" in capsys.readouterr().out


def test_estimated_covariance_matches_training_features(runs):
    from torch_isda.data import normalize
    from torch_isda.cli.visualize import estimate_covariance, load_classifier

    model, config, data, _ = load_classifier(runs["ce"], torch.device("cpu"))
    est = estimate_covariance(model, data, "full", torch.device("cpu"), batch_size=100)
    with torch.no_grad():
        feats = model.forward_features(normalize(data.train_images, data.mean, data.std))
    for c in (0, 7):
        f = feats[data.train_labels == c].double()
        torch.testing.assert_close(est.covariance[c].double(), torch.cov(f.T, correction=0),
                                   rtol=1e-4, atol=1e-6)


def test_visualize_generator_image_shape_mismatch(runs, tmp_path, capsys):
    gan = tmp_path / "gan4x4"
    train_gan(torch.rand(16, 1, 4, 4), gan, iterations=1, batch_size=4, z_dim=8, dim=8,
              progress=False, sample_every=0)
    assert cli.main(["visualize", "--classifier", str(runs["isda"]), "--generator", str(gan),
                     "--out", str(tmp_path / "v"), *TINY_VIS]) == 2
    err = capsys.readouterr().err
    assert "makes 1x4x4 images" in err and "1x8x8" in err and "digits" in err


def test_kind_only_with_estimate_covariance(runs, tmp_path, capsys):
    assert cli.main(["visualize", "--classifier", str(runs["isda"]), "--generator", str(runs["gan"]),
                     "--out", str(tmp_path / "v"), "--kind", "diagonal", *TINY_VIS]) == 2
    assert "--kind applies to --estimate-covariance" in capsys.readouterr().err


# ---------------------------------------------------------------------------- grid, lowrank


def test_titled_grid_mixes_grey_rgb_and_sizes(tmp_path):
    from torch_isda.visualize.grid import save_titled_grid

    path = save_titled_grid(tmp_path / "mix.png", [("grey", torch.rand(3, 1, 8, 8)),
                                                   ("rgb", torch.rand(3, 3, 4, 6))],
                            row_labels=["a", "b", "c"], title="t")
    assert path.read_bytes()[:8] == PNG_MAGIC
    import matplotlib.image as mpimg

    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > img.shape[1] > 100  # 3 rows x 2 columns, portrait


def test_augment_features_with_lowrank_estimator():
    torch.manual_seed(0)
    A, C = 5, 2
    low = CovarianceEstimator(A, C, kind="lowrank", rank=A)
    full = CovarianceEstimator(A, C, kind="full")
    x = torch.randn(400, A) @ torch.randn(A, A)
    y = torch.arange(400) % C
    low.update(x, y)
    full.update(x, y)
    g = torch.Generator().manual_seed(0)
    a = augment_features(torch.zeros(1, A), torch.tensor([1]), low, 0.5, 40000, rng=g)[0].double()
    emp = a.T @ a / a.shape[0]
    expect = 0.5 * full.covariance[1].double()
    assert (emp - expect).abs().max() < 0.05 * expect.abs().max()


# ---------------------------------------------------------------------------- figures


def _record_texts(monkeypatch):
    """Texts drawn on axes and figure titles, recorded while a figure is made."""
    import matplotlib.axes
    import matplotlib.figure

    texts = []
    text, suptitle = matplotlib.axes.Axes.text, matplotlib.figure.Figure.suptitle
    monkeypatch.setattr(matplotlib.axes.Axes, "text",
                        lambda self, x, y, s, *a, **k: texts.append(s) or text(self, x, y, s, *a, **k))
    monkeypatch.setattr(matplotlib.figure.FigureBase, "suptitle",
                        lambda self, t, **k: texts.append(t) or suptitle(self, t, **k))
    return texts


def test_gan_samples_have_a_title_with_the_iteration_count_and_an_eta(tmp_path, monkeypatch,
                                                                      capsys):
    texts = _record_texts(monkeypatch)
    train_gan("digits", tmp_path / "g", iterations=4, batch_size=8, z_dim=8, dim=16,
              sample_every=0, log_every=2, progress=True)
    assert any("samples of digits" in t and "iteration 4 of 4" in t for t in texts)
    err = capsys.readouterr().err
    assert "it 2/4" in err and "ETA" in err.split("it 2/4")[1].splitlines()[0]
    assert "ETA" not in err.split("it 4/4")[1].splitlines()[0]  # nothing left


def test_neighbours_figure_is_a_compact_labelled_grid(runs, tmp_path, monkeypatch):
    from PIL import Image

    texts = _record_texts(monkeypatch)
    out = tmp_path / "vis"
    assert cli.main(["visualize", "--classifier", str(runs["isda"]), "--generator",
                     str(runs["gan"]), "--out", str(out), "--quiet", *TINY_VIS]) == 0
    labels = [t for t in texts if ", aug " in t]
    assert labels[:2] == ["digit 0, aug 1", "digit 0, aug 2"] and len(labels) == 3 * 2
    assert any(t.startswith("ISDA augmentations") and "Nearest training images" in t
               for t in texts)
    import re

    distances = [t for t in texts if re.fullmatch(r"\d+\.\d\d", t)]
    assert len(distances) == 3 * 2 * 2  # one per nearest neighbour
    summary = json.loads((out / "visualization.json").read_text())
    assert float(distances[0]) == pytest.approx(summary["per_sample"]["neighbour_distances"][0][0][0], abs=0.006)
    # the default sizes (10 images x 4 augmentations x 5 neighbours): a compact grid, not
    # one row per augmented image (40 rows)
    from types import SimpleNamespace

    from torch_isda.visualize.grid import save_neighbour_grid

    g = torch.Generator().manual_seed(0)
    result = SimpleNamespace(augmented=torch.rand(10, 4, 1, 8, 8, generator=g),
                             labels=torch.arange(10),
                             neighbour_images=torch.rand(10, 4, 5, 1, 8, 8, generator=g),
                             neighbour_distances=torch.rand(10, 4, 5, generator=g))
    width, height = Image.open(save_neighbour_grid(tmp_path / "nb.png", result, "t")).size
    assert height < width <= 1400 and height <= 1000
    assert "nearest training images of aug 1" in texts  # augmented.png: the NN group
