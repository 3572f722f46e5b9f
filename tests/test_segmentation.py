"""ISDA for semantic segmentation: per-pixel loss, label resizing, estimator, memory, mIoU,
models, Cityscapes loader and the synthetic dataset."""

from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torch_isda import ISDALoss
from torch_isda.data import create_dataset, list_datasets
from torch_isda.data.cityscapes import (
    CITYSCAPES_CLASSES,
    ID_TO_TRAINID,
    CityscapesSegmentation,
    SegmentationTrainTransform,
    create_cityscapes_loaders,
    label_ids_to_train_ids,
)
from torch_isda.data.synthetic_segmentation import generate_shapes
from torch_isda.models import ISDANet, create_model, list_models
from torch_isda.models.segmentation import SegmentationNet
from torch_isda.segmentation import SegmentationISDALoss, classifier_weight, resize_labels
from torch_isda.train.tasks.segmentation.metrics import ConfusionMatrix, evaluate_segmentation, predict_probs

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))
from _measure import peak_memory_mb  # noqa: E402

KINDS = ["diagonal", "full"]


def _batch(B, A, C, h, w, H, W, ignore=0.2, dtype=torch.float64, gen=None, dominant=None):
    f = torch.randn(B, A, h, w, dtype=dtype, generator=gen)
    t = torch.randint(0, C, (B, H, W), generator=gen)
    if dominant is not None:
        t[torch.rand(t.shape, generator=gen) < dominant] = 0
    t[torch.rand(t.shape, generator=gen) < ignore] = 255
    return f, t


# --------------------------------------------------------------------------- the loss


@pytest.mark.parametrize("kind", KINDS)
def test_loss_equals_isda_loss_on_flattened_pixels(kind):
    B, A, C, h, w = 2, 6, 5, 5, 7
    seg = SegmentationISDALoss(A, C, lambda0=2.0, kind=kind, constant_lambda=True, dtype=torch.float64)
    ref = ISDALoss(A, C, lambda0=2.0, kind=kind, constant_lambda=True, ignore_index=255, dtype=torch.float64)
    conv = nn.Conv2d(A, C, 1).double()
    for step in range(4):
        # labels at a higher, non-integer-multiple resolution (resized by nearest neighbour)
        f, t = _batch(B, A, C, h, w, 2 * h + 1, 3 * w - 2, dominant=0.6 if step == 2 else None)
        f.requires_grad_(True)
        z = conv(f)
        loss = seg(f, z, t, conv.weight)
        g_w, g_f = torch.autograd.grad(loss, [conv.weight, f])

        t_small = F.interpolate(t[:, None].float(), size=(h, w), mode="nearest")[:, 0].long()
        flat_f = f.permute(0, 2, 3, 1).reshape(-1, A)
        flat_z = conv(f).permute(0, 2, 3, 1).reshape(-1, C)
        expected = ref(flat_f, flat_z, t_small.reshape(-1), conv.weight.flatten(1))
        e_w, e_f = torch.autograd.grad(expected, [conv.weight, f])
        torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(g_w, e_w, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(g_f, e_f, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(seg.estimator.covariance, ref.estimator.covariance, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(seg.estimator.mean, ref.estimator.mean, rtol=1e-10, atol=1e-12)
        assert torch.equal(seg.estimator.count, ref.estimator.count)


def test_reductions_and_all_ignored_batch():
    B, A, C, h, w = 2, 4, 3, 4, 4
    seg = SegmentationISDALoss(A, C, kind="diagonal", constant_lambda=True, dtype=torch.float64)
    f, t = _batch(B, A, C, h, w, h, w)
    W = torch.randn(C, A, dtype=torch.float64)
    z = torch.randn(B, C, h, w, dtype=torch.float64)
    seg(f, z, t, W)  # populate the estimator
    seg.eval()
    mean = seg(f, z, t, W)
    seg.reduction = "none"
    per_pixel = seg(f, z, t, W)
    assert per_pixel.shape == (B, h, w)
    assert torch.all(per_pixel[t == 255] == 0)
    torch.testing.assert_close(per_pixel.sum() / (t != 255).sum(), mean)
    seg.reduction = "sum"
    torch.testing.assert_close(seg(f, z, t, W), per_pixel.sum())

    seg.train()
    seg.reduction = "mean"
    before = seg.estimator.count.clone()
    z.requires_grad_(True)
    loss = seg(f, z, torch.full_like(t, 255), W)
    assert loss.item() == 0.0 and loss.requires_grad
    assert torch.equal(seg.estimator.count, before)


def test_ratio_schedule_eval_mode_and_augmented_logits():
    B, A, C, h, w = 2, 5, 4, 3, 5
    seg = SegmentationISDALoss(A, C, lambda0=4.0, kind="full", dtype=torch.float64)
    assert seg.kind == "full" and seg.ignore_index == 255 and seg.ratio == 0.0
    seg.set_progress(0.25)
    assert seg.ratio == pytest.approx(1.0)
    f, t = _batch(B, A, C, h, w, h, w)
    W = torch.randn(C, A, 1, 1, dtype=torch.float64)
    z = torch.randn(B, C, h, w, dtype=torch.float64)
    aug = seg.augmented_logits(f, z, t, W)
    assert aug.shape == (B, C, h, w)
    assert torch.equal(aug.permute(0, 2, 3, 1)[t == 255], z.permute(0, 2, 3, 1)[t == 255])
    Wm = W.flatten(1)
    for b, y, x in (t != 255).nonzero().tolist()[:10]:
        c = t[b, y, x]
        V = Wm - Wm[c]
        sigma2 = torch.einsum("ja,ab,jb->j", V, seg.estimator.covariance[c], V)
        torch.testing.assert_close(aug[b, :, y, x], z[b, :, y, x] + 0.5 * sigma2)
    count = seg.estimator.count.clone()
    seg.eval()
    seg(f, z, t, W)
    assert torch.equal(seg.estimator.count, count)


def test_classifier_weight_forms_and_errors():
    conv = nn.Conv2d(6, 3, 1)
    assert torch.equal(classifier_weight(conv), conv.weight.flatten(1))
    assert torch.equal(classifier_weight(conv.weight), conv.weight.flatten(1))
    with pytest.raises(ValueError, match="1x1"):
        classifier_weight(torch.zeros(3, 6, 3, 3))
    seg = SegmentationISDALoss(6, 3)
    f, t = _batch(1, 6, 3, 4, 4, 4, 4, dtype=torch.float32)
    with pytest.raises(ValueError, match="C x A"):
        seg(f, torch.zeros(1, 3, 4, 4), t, torch.zeros(3, 5))
    with pytest.raises(ValueError, match="features"):
        seg(f[:, :, :3], torch.zeros(1, 3, 4, 4), t, conv)


@pytest.mark.parametrize("kind", KINDS)
def test_out_of_range_labels_raise_and_leave_statistics(kind):
    seg = SegmentationISDALoss(4, 3, kind=kind)
    f, t = _batch(2, 4, 3, 6, 6, 6, 6, dtype=torch.float32, dominant=0.8)
    seg(f, torch.zeros(2, 3, 6, 6), t, torch.zeros(3, 4))
    state = {k: v.clone() for k, v in seg.estimator.state_dict().items()}
    t[0, 0, 0] = 7
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        seg(f, torch.zeros(2, 3, 6, 6), t, torch.zeros(3, 4))
    for k, v in seg.estimator.state_dict().items():
        assert torch.equal(v, state[k]), k


@pytest.mark.parametrize(
    "src,dst", [((9, 13), (5, 7)), ((5, 7), (9, 13)), ((16, 16), (8, 8)), ((8, 8), (16, 16)), ((97, 100), (13, 13))]
)
def test_resize_labels_matches_nearest_interpolate(src, dst):
    t = torch.randint(0, 256, (2, *src))
    expected = F.interpolate(t[:, None].float(), size=dst, mode="nearest")[:, 0].long()
    assert torch.equal(resize_labels(t, dst), expected)
    H, W = src
    rows = [min(math.floor(i * H / dst[0]), H - 1) for i in range(dst[0])]
    cols = [min(math.floor(j * W / dst[1]), W - 1) for j in range(dst[1])]
    assert torch.equal(resize_labels(t, dst), t[:, rows][:, :, cols])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dominant", [None, 0.85])
def test_estimator_equals_per_class_covariance_of_valid_pixels(kind, dominant):
    B, A, C, h, w = 2, 5, 4, 6, 8
    seg = SegmentationISDALoss(A, C, kind=kind, dtype=torch.float64)
    calls = []
    update = seg.estimator.update_scanned  # every fold goes through it, update() included
    seg.estimator.update_scanned = lambda x, y, *a, **kw: (calls.append(len(y)), update(x, y, *a, **kw))[1]
    feats, labels = [], []
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        f, t = _batch(B, A, C, h, w, 2 * h, 2 * w, gen=gen, dominant=dominant)
        seg(f, torch.zeros(B, C, h, w, dtype=torch.float64), t, torch.zeros(C, A, dtype=torch.float64))
        ts = resize_labels(t, (h, w)).reshape(-1)
        fs = f.permute(0, 2, 3, 1).reshape(-1, A)
        feats.append(fs[ts != 255])
        labels.append(ts[ts != 255])
    x, y = torch.cat(feats), torch.cat(labels)
    for c in range(C):
        xc = x[y == c]
        cov = torch.cov(xc.T, correction=0)
        expected = cov if kind == "full" else cov.diagonal()
        torch.testing.assert_close(seg.estimator.covariance[c], expected, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(seg.estimator.mean[c], xc.mean(0), rtol=1e-9, atol=1e-12)
        assert int(seg.estimator.count[c]) == xc.shape[0]
    # a batch dominated by one class is folded in several groups of classes for the full kind
    per_batch = len(calls) / 3
    assert (per_batch > 1) if (kind == "full" and dominant) else (per_batch == 1)


def test_peak_memory_linear_in_pixels():
    B, A, h, w, C = 2, 256, 64, 128, 19
    g = torch.Generator().manual_seed(0)
    f = torch.randn(B, A, h, w, generator=g)
    W = (torch.randn(C, A, 1, 1, generator=g) / 16).requires_grad_()
    z = torch.randn(B, C, h, w, generator=g).requires_grad_()
    t = torch.randint(0, C, (B, 8 * h, 8 * w), generator=g)  # full-resolution labels
    t[torch.rand(t.shape, generator=g) < 0.4] = 0  # a dominant class, like road
    t[torch.rand(t.shape, generator=g) < 0.1] = 255
    inputs_mb = (f.numel() + z.numel()) * 4 / 2**20
    pixels = B * h * w
    dense_mb = pixels * C * A * 4 / 2**20  # ONE pixels x C x A float32 tensor of the dense code
    for kind in KINDS:
        crit = SegmentationISDALoss(A, C, kind=kind, constant_lambda=True)

        def step():
            loss = crit(f, z, t, W)
            loss.backward()
            W.grad = z.grad = None

        step()  # statistics exist, as after the first training step
        peak = peak_memory_mb(step, torch.device("cpu"))
        assert peak < 8 * inputs_mb, f"{kind}: peak {peak:.1f} MB vs features+logits {inputs_mb:.1f} MB"
        assert dense_mb > 15 * inputs_mb > 15 * peak / 8  # the dense formulation: >= 304 MB per tensor
    assert dense_mb == pytest.approx(304.0)


# --------------------------------------------------------------------------- metrics


def test_confusion_matrix_miou_by_hand():
    # 3 classes; ground truth / prediction pairs (255 ignored, whatever is predicted there):
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 2]])
    # confusion M[t, p]: t=0 -> p=0,1 ; t=1 -> p=1,1 ; t=2 -> p=2,0
    #   M = [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # IoU_0 = 1 / (2 + 2 - 1) = 1/3 ; IoU_1 = 2 / (2 + 3 - 2) = 2/3 ; IoU_2 = 1 / (2 + 1 - 1) = 1/2
    cm = ConfusionMatrix(3, ignore_index=255)
    cm.update(pred[:1], target[:1])
    cm.update(pred[1:], target[1:])
    assert cm.matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    res = cm.compute()
    assert res["iou"] == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert res["miou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert res["pixel_acc"] == pytest.approx(4 / 6)
    assert res["mean_acc"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert res["pixels"] == 6
    # scores (B x C x H x W) are arg-maxed; a class absent everywhere is nan and left out
    cm4 = ConfusionMatrix(4)
    cm4.update(F.one_hot(pred, 4).permute(2, 0, 1)[None].float(), target[None])
    r4 = cm4.compute()
    assert math.isnan(r4["iou"][3]) and r4["miou"] == pytest.approx(res["miou"])
    with pytest.raises(ValueError):
        cm.update(torch.tensor([0]), torch.tensor([3]))


def test_predict_probs_and_evaluate():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 1)  # per-pixel model: flip-equivariant, probabilities at input size
    x = torch.randn(2, 3, 12, 16)
    single = predict_probs(conv, x)
    torch.testing.assert_close(single, conv(x).softmax(1))
    torch.testing.assert_close(predict_probs(conv, x, flip=True), single)
    multi = predict_probs(conv, x, scales=(0.75, 1.0, 1.25), flip=True, output_size=(24, 32))
    assert multi.shape == (2, 4, 24, 32)
    torch.testing.assert_close(multi.sum(1), torch.ones(2, 24, 32))

    class Oracle(nn.Module):  # stride-4 "logits" that encode the label
        def __init__(self, label):
            super().__init__()
            self.label = label

        def forward(self, images):
            onehot = F.one_hot(self.label.clamp(max=3), 4).permute(0, 3, 1, 2).float() * 20
            return F.avg_pool2d(onehot, 1)

    label = torch.randint(0, 4, (2, 12, 16))
    label[:, :2] = 255
    res = evaluate_segmentation(Oracle(label), [(x, label)], 4)
    assert res["miou"] == pytest.approx(1.0) and res["pixels"] == 2 * 10 * 16


# --------------------------------------------------------------------------- models


TINY = dict(depth=10, width=4, head_channels=12, aux_channels=8)


@pytest.mark.parametrize("name", ["deeplabv3_resnet", "pspnet_resnet"])
def test_segmentation_models_shapes_gradients_and_isda(name):
    assert name in list_models()
    model = create_model(name, num_classes=5, **TINY)
    assert isinstance(model, ISDANet) and isinstance(model, SegmentationNet)
    assert model.family == "segmentation" and model.output_stride == 8
    cls = model.get_classifier()
    assert isinstance(cls, nn.Conv2d) and cls.kernel_size == (1, 1)
    assert tuple(cls.weight.shape) == (5, model.num_features, 1, 1) and model.num_features == 12
    x = torch.randn(2, 3, 41, 30)
    out = model.forward_all(x)
    assert out.features.shape == (2, 12, 6, 4)  # ceil(41 / 8), ceil(30 / 8)
    assert out.logits.shape == (2, 5, 6, 4) and out.aux_logits.shape == (2, 5, 6, 4)
    assert out.aux_features.shape == (2, model.aux_num_features, 6, 4)
    model.eval()
    torch.testing.assert_close(model(x), cls(model.forward_features(x)))
    torch.testing.assert_close(model.forward_aux(x), model.forward_all(x).aux_logits)
    model.train()

    labels = torch.randint(0, 5, (2, 41, 30))
    labels[:, :3] = 255
    main = SegmentationISDALoss(model.num_features, 5, kind="diagonal", constant_lambda=True)
    aux = SegmentationISDALoss(model.aux_num_features, 5, kind="full", constant_lambda=True)
    out = model.forward_all(x)
    loss = main(out.features, out.logits, labels, cls.weight) + 0.4 * aux(
        out.aux_features, out.aux_logits, labels, model.get_aux_classifier().weight
    )
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    assert int(main.estimator.count.sum()) == int((resize_labels(labels, (6, 4)) != 255).sum())


def test_model_without_aux_head_and_output_stride_769():
    model = create_model("pspnet_resnet", num_classes=3, aux=False, **TINY)
    assert not model.has_aux and model.get_aux_classifier() is None
    out = model.forward_all(torch.randn(2, 3, 97, 97))
    assert out.aux_logits is None and out.logits.shape[-2:] == (13, 13)
    with pytest.raises(ValueError):
        model.forward_aux(torch.randn(2, 3, 16, 16))
    backbone = create_model("deeplabv3_resnet", num_classes=3, **TINY).backbone
    with torch.no_grad():
        assert backbone(torch.randn(1, 3, 769, 769))[1].shape[-2:] == (97, 97)


# --------------------------------------------------------------------------- Cityscapes


def _write_cityscapes(root, split="train", cities=("aachen", "bochum"), size=(24, 40)):
    from PIL import Image

    rng = np.random.default_rng(0)
    ids = {}
    for k, city in enumerate(cities):
        (root / "leftImg8bit" / split / city).mkdir(parents=True)
        (root / "gtFine" / split / city).mkdir(parents=True)
        stem = f"{city}_00000{k}_000019"
        rgb = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        lab = (np.arange(size[0] * size[1]) % 34).reshape(size).astype(np.uint8)  # every label id
        Image.fromarray(rgb).save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
        Image.fromarray(lab).save(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")
        ids[stem] = lab
    return ids


def test_cityscapes_train_ids_and_layout(tmp_path):
    ids = _write_cityscapes(tmp_path, "val")
    ds = CityscapesSegmentation(tmp_path, "val")
    assert len(ds) == 2 and ds.num_classes == 19 == len(CITYSCAPES_CLASSES)
    for i, (stem, lab) in enumerate(sorted(ids.items())):
        assert os.path.basename(ds.samples[i][0]) == f"{stem}_leftImg8bit.png"
        image, label = ds[i]
        assert image.shape == (3, 24, 40) and image.dtype == torch.float32
        assert label.dtype == torch.int64 and label.shape == (24, 40)
        expected = np.vectorize(lambda v: ID_TO_TRAINID.get(int(v), 255))(lab)
        assert torch.equal(label, torch.from_numpy(expected).long())
    # the standard table: 19 ids -> 0..18 in order, everything else 255
    table = label_ids_to_train_ids(np.arange(34)).tolist()
    assert [table[i] for i in (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)] == list(range(19))
    assert all(table[i] == 255 for i in (0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30))


def test_cityscapes_train_transform_and_loaders(tmp_path):
    _write_cityscapes(tmp_path, "train")
    _write_cityscapes(tmp_path, "val")
    ds = CityscapesSegmentation(tmp_path, "train", SegmentationTrainTransform((32, 32), (0.5, 2.0)))
    torch.manual_seed(0)
    for _ in range(4):
        image, label = ds[0]
        assert image.shape == (3, 32, 32) and label.shape == (32, 32)
        assert set(label.unique().tolist()) <= set(range(19)) | {255}
    loaders = create_cityscapes_loaders(tmp_path, batch_size=2, workers=1, crop_size=16, seed=0)
    images, labels = next(iter(loaders.train))
    assert images.shape == (2, 3, 16, 16) and labels.shape == (2, 16, 16)
    images, labels = next(iter(loaders.val))
    assert images.shape == (1, 3, 24, 40) and labels.shape == (1, 24, 40)
    assert "cityscapes" in list_datasets()


def test_cityscapes_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="leftImg8bit"):
        CityscapesSegmentation(tmp_path / "nowhere", "train")
    _write_cityscapes(tmp_path, "train")
    os.rename(tmp_path / "gtFine", tmp_path / "gt")
    with pytest.raises(FileNotFoundError) as info:
        create_dataset("cityscapes", root=str(tmp_path), split="train")
    assert str(tmp_path / "gtFine" / "train") in str(info.value)


# --------------------------------------------------------------------------- synthetic data


def test_synthetic_segmentation_deterministic_and_in_range():
    kw = dict(num_train=12, num_test=4, image_size=32)
    a = create_dataset("synthetic_segmentation", seed=3, **kw)
    b = create_dataset("synthetic_segmentation", seed=3, **kw)
    c = create_dataset("synthetic_segmentation", seed=4, **kw)
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.test_masks, b.test_masks)
    assert not torch.equal(a.train_images, c.train_images)
    assert a.train_images.dtype == torch.uint8 and a.train_images.shape == (12, 3, 32, 32)
    assert a.train_masks.dtype == torch.int64 and a.train_masks.shape == (12, 32, 32)
    assert a.num_classes == 4 and a.ignore_index == 255
    values = set(torch.cat([a.train_masks.unique(), a.test_masks.unique()]).tolist())
    assert values <= {0, 1, 2, 3, 255} and {0, 255} <= values and len(values & {1, 2, 3}) >= 2
    _, m = generate_shapes(4, 32, ignore_border=0, generator=torch.Generator().manual_seed(0))
    assert 255 not in m.unique().tolist()
    batches = list(a.batches("train", 5, shuffle=True, flip=True, generator=torch.Generator().manual_seed(0)))
    assert [x.shape[0] for x, _ in batches] == [5, 5, 2]
    assert batches[0][0].dtype == torch.float32 and batches[0][1].shape == (5, 32, 32)
    image, mask = a.split("test")[1]
    assert image.shape == (3, 32, 32) and torch.equal(mask, a.test_masks[1])


# --------------------------------------------------------------------------- distributed


def _dist_data(rank):
    g = torch.Generator().manual_seed(rank)
    out = []
    for s in range(3):
        f = torch.randn(1, 4, 5, 6, generator=g, dtype=torch.float64)
        t = torch.randint(0, 5, (1, 5, 6), generator=g)
        t[torch.rand(t.shape, generator=g) < 0.7] = 0  # dominant class
        if rank == 1 and s == 1:
            t[:] = 255  # a rank without any valid pixel still joins every collective
        out.append((f, t))
    return out


def _dist_worker(rank, port, outdir):
    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        res = {}
        zeros = dict(logits=torch.zeros(1, 5, 5, 6, dtype=torch.float64), weight=torch.zeros(5, 4, dtype=torch.float64))
        for kind in KINDS:
            crit = SegmentationISDALoss(4, 5, kind=kind, dtype=torch.float64)
            for f, t in _dist_data(rank):
                crit(f, zeros["logits"], t, zeros["weight"])
            res[kind] = crit.estimator.state_dict()
        crit = SegmentationISDALoss(4, 5, kind="full", dtype=torch.float64)
        f, t = _dist_data(rank)[0]
        if rank == 1:
            t = t.clone()
            t[0, 0, 0] = 9
        try:
            crit(f, zeros["logits"], t, zeros["weight"])
            res["raised"] = ""
        except ValueError as err:
            res["raised"] = str(err)
        torch.save(res, os.path.join(outdir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_statistics_match_single_process(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_dist_worker, args=(port, str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for kind in KINDS:
        single = SegmentationISDALoss(4, 5, kind=kind, dtype=torch.float64, sync=False)
        for (f0, t0), (f1, t1) in zip(_dist_data(0), _dist_data(1)):
            single.update_statistics(torch.cat([f0, f1]), torch.cat([t0, t1]))
        for key, value in single.estimator.state_dict().items():
            torch.testing.assert_close(r0[kind][key], value)
            assert torch.equal(r0[kind][key], r1[kind][key])
    assert "[0, 5)" in r1["raised"] and "rank(s) [1]" in r0["raised"]
