"""Per-pixel ISDA for segmentation: torch_isda vs the official dense formulation.

Shape: Cityscapes training as in the paper's setup (``speedinghzl/pytorch-segmentation-toolbox``):
2 images (per GPU) of 769 x 769 crops, output stride 8 -> 97 x 97 feature maps, A = 512 deep
features, C = 19 classes, labels at 769 x 769 (resized to 97 x 97 by nearest neighbour) with
Cityscapes-like class frequencies and ~10% void (255) pixels.

One "step" = estimator update + loss forward + backward into the logits and the ``1 x 1``
classifier weight (the classifier's own product is not counted: logits are a leaf):

* ``ours``: :class:`torch_isda.segmentation.SegmentationISDALoss` (memory linear in
  pixels x (C + A));
* ``dense``: the official ``train_isda.py`` approach: flatten to ``N = B h w`` pixels, map
  void to an extra class, one-hot ``N x (C+1) x A`` estimator update and ``N x C x A``
  gathered weights for the augmentation (diagonal kind; the full kind would gather ``N``
  ``A x A`` covariances, ``N A^2`` floats = ~20 GB here, and is skipped);
* ``CE only``: plain cross-entropy of the same logits (the cost without ISDA).

Run: ``python benchmarks/segmentation_loss.py`` (``--device cuda`` on a GPU). Prints a
markdown table; the dense variant is skipped (with its estimated size) above ``--max-dense-gb``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from _measure import markdown_table, peak_memory_mb, time_ms  # noqa: E402

from torch_isda.segmentation import SegmentationISDALoss  # noqa: E402

# approximate Cityscapes train-id pixel frequencies (road, sidewalk, building, ...)
FREQ = [36.9, 6.1, 22.8, 0.65, 0.87, 1.23, 0.21, 0.55, 15.9, 1.16, 4.0, 1.21, 0.13, 7.0, 0.27, 0.23,
        0.23, 0.1, 0.41]


class DenseSegISDA:
    """The official segmentation ISDA (``train_isda.py``: EstimatorCV + ISDALoss), diagonal kind."""

    def __init__(self, A, C, device, ignore_index=255):
        self.C, self.ignore = C, ignore_index
        self.cov = torch.zeros(C + 1, A, device=device)  # void pixels go to an extra class
        self.ave = torch.zeros(C + 1, A, device=device)
        self.amount = torch.zeros(C + 1, device=device)

    @torch.no_grad()
    def update(self, features, labels):
        N, A = features.shape
        C = self.C + 1
        labels = torch.where(labels == self.ignore, torch.full_like(labels, C - 1), labels)
        onehot = torch.zeros(N, C, device=features.device).scatter_(1, labels.view(-1, 1), 1)
        onehot_nca = onehot.view(N, C, 1).expand(N, C, A)
        by_sort = features.view(N, 1, A).expand(N, C, A).mul(onehot_nca)  # N x C x A
        amount = onehot_nca.sum(0)
        amount[amount == 0] = 1
        ave = by_sort.sum(0) / amount
        var = (by_sort - ave.expand(N, C, A).mul(onehot_nca)).pow(2).sum(0).div(amount)
        sum_w = onehot.sum(0).view(C, 1).expand(C, A)
        weight = sum_w.div(sum_w + self.amount.view(C, 1).expand(C, A))
        weight[weight != weight] = 0
        extra = weight.mul(1 - weight).mul((self.ave - ave).pow(2))
        self.cov = self.cov.mul(1 - weight) + var.mul(weight) + extra
        self.ave = self.ave.mul(1 - weight) + ave.mul(weight)
        self.amount += onehot.sum(0)

    def loss(self, features, logits, weight, target, ratio):
        B, A, h, w = features.shape
        C = self.C
        target = F.interpolate(target[:, None].float(), size=(h, w), mode="nearest")[:, 0].long()
        feats = features.permute(0, 2, 3, 1).contiguous().view(-1, A)
        labels = target.reshape(-1)
        y = logits.permute(0, 2, 3, 1).contiguous().view(-1, C)
        self.update(feats.detach(), labels)
        N = feats.shape[0]
        mask = (labels == self.ignore).long()
        lab = (1 - mask) * labels
        W = weight.squeeze()
        W_kj = torch.gather(W.expand(N, C, A), 1, lab.view(N, 1, 1).expand(N, C, A))
        cv = self.cov[lab]
        sigma2 = ratio * (W - W_kj).pow(2).mul(cv.view(N, 1, A).expand(N, C, A)).sum(2)
        aug = y + 0.5 * sigma2.mul((1 - mask).view(N, 1).expand(N, C))
        return F.cross_entropy(aug, labels, ignore_index=self.ignore)


def dense_bytes(N, C, A, kind):
    """Rough peak of the dense step (the N x C x A tensors it keeps alive at once)."""
    per = N * (C + 1) * A * 4
    if kind == "full":  # plus N gathered A x A covariances
        return 6 * per + N * A * A * 4
    return 6 * per


def run(device, repeats, max_dense_gb, B=2, crop=769, A=512, C=19, lambda0=7.5):
    h = w = math.ceil(crop / 8)
    g = torch.Generator().manual_seed(0)
    probs = torch.tensor(FREQ) / sum(FREQ)
    labels = torch.multinomial(probs, B * crop * crop, replacement=True, generator=g).view(B, crop, crop)
    labels[torch.rand(labels.shape, generator=g) < 0.1] = 255
    feats = torch.randn(B, A, h, w, generator=g).relu().to(device)
    weight = (torch.randn(C, A, 1, 1, generator=g) / math.sqrt(A)).to(device).requires_grad_()
    bias = torch.zeros(C, device=device)
    labels = labels.to(device)
    logits = F.conv2d(feats, weight.detach(), bias).requires_grad_()
    N = B * h * w
    rows = []

    small = F.interpolate(labels[:, None].float(), size=(h, w), mode="nearest")[:, 0].long()

    def step_ce():
        loss = F.cross_entropy(logits, small, ignore_index=255)
        loss.backward()
        logits.grad = None

    t_ce = time_ms(step_ce, device, repeats)
    m_ce = peak_memory_mb(step_ce, device)
    for kind in ("diagonal", "full"):
        ours = SegmentationISDALoss(A, C, lambda0=lambda0, kind=kind, constant_lambda=True).to(device)

        def step_ours():
            loss = ours(feats, logits, labels, weight)
            loss.backward()
            weight.grad = logits.grad = None

        step_ours()
        t_ours = time_ms(step_ours, device, repeats)
        m_ours = peak_memory_mb(step_ours, device)
        need_gb = dense_bytes(N, C, A, kind) / 2**30
        if kind == "diagonal" and need_gb <= max_dense_gb:
            dense = DenseSegISDA(A, C, device)

            def step_dense():
                loss = dense.loss(feats, logits, weight, labels, lambda0)
                loss.backward()
                weight.grad = logits.grad = None

            step_dense()
            t_dense = time_ms(step_dense, device, max(2, repeats // 3), warmup=1)
            m_dense = peak_memory_mb(step_dense, device)
            dense_cells = [f"{t_dense:.1f}", f"{t_dense / t_ours:.1f}x", f"{m_dense:.0f}",
                           f"{m_dense / m_ours:.0f}x"]
        else:
            why = "not written" if kind == "full" and need_gb <= max_dense_gb else f"needs ~{need_gb:.0f} GB"
            dense_cells = [f"skipped ({why})", "-", "-", "-"]
        rows.append([kind, f"{B}x{A}x{h}x{w}, C={C}", f"{t_ours:.1f}", f"{m_ours:.1f}", *dense_cells,
                     f"{t_ce:.1f}", f"{m_ce:.1f}"])
        print(f"done {kind}", file=sys.stderr, flush=True)
    headers = ["kind", "features", "ours ms", "ours peak MB", "dense ms", "dense/ours time",
               "dense peak MB", "dense/ours memory", "CE only ms", "CE only peak MB"]
    unit = N * C * A * 4 / 2**20
    note = (f"\nN = {N} pixels; one N x C x A float32 tensor of the dense formulation = {unit:.0f} MB; "
            f"features + logits = {(feats.numel() + logits.numel()) * 4 / 2**20:.1f} MB.")
    return markdown_table(headers, rows) + note


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--max-dense-gb", type=float, default=8.0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")
    print("step = estimator update + loss forward + backward (logits and 1x1 classifier weight); "
          "medians in ms; peak = extra memory of one step.\n")
    print(run(device, args.repeats, args.max_dense_gb))


if __name__ == "__main__":
    main()
