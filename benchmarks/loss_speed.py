"""ISDA loss speed: torch_isda vs a straightforward dense implementation vs the hardware floor.

For each of the paper's shapes (N, C, A) it times one training-step's worth of ISDA work
(estimator update + loss forward + backward into logits and the classifier weight):

* ``ours``: :class:`torch_isda.ISDALoss` (gradients into the logits and the weight; the
  classifier's own ``N x A x C`` product is not counted, it is not ISDA work);
* ``dense``: the paper's formulas written with dense tensors, as in the official code
  (one-hot ``N x C x A`` update, ``N`` gathered ``A x A`` covariances, ``N x C x C``
  quadratic forms, autograd backward);
* ``floor``: the irreducible product, timed in the same run: for the full kind one batched
  matmul of the ``U`` present classes' covariances with ``W`` (``U x [C x A] @ [A x A]``);
  for the diagonal kind one ``[U x A] @ [A x C]`` product;
* ``syncs/step``: host synchronizations of one ``ours`` step (``benchmarks/_syncs.py``:
  ``bool()``, ``.item()``, ``.tolist()``, ``torch.unique``, boolean masks, ...);
* ``ops/step``: operators dispatched by one step, views excluded (``benchmarks/_ops.py``):
  the kernel launches of an eager step on an accelerator, for ours (the default's CPU route,
  present classes; the default's accelerator route, ``static_shapes=True`` with the checks on
  the device; ``validate=False, static_shapes=True``) and the dense formulation;
* ``compiled ms``: ``ours`` with the loss module wrapped in ``torch.compile`` (default
  options; ``--backend``, ``--no-compile`` to skip), timed after its compilation;
* ``accel. route ms``: ``ours`` on the default's accelerator route forced on this device
  (``static_shapes=True``, validation on, checked on the device: no host synchronization,
  ``C/U`` times the flops of ``sigma2`` and about ``C`` times those of the update for the
  full kind), eager; ``accel. syncs`` its host synchronizations per step.

Run: ``python benchmarks/loss_speed.py`` (``--device cuda`` on a GPU). Prints a markdown table.
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
from _ops import count_ops  # noqa: E402
from _syncs import count_syncs  # noqa: E402

from torch_isda import ISDALoss  # noqa: E402

SHAPES = [
    ("ResNet / CIFAR-10", 128, 10, 64, "full"),
    ("ResNet / CIFAR-100", 128, 100, 64, "full"),
    ("WRN-28-10 / CIFAR-10", 128, 10, 640, "full"),
    ("WRN-28-10 / CIFAR-100", 128, 100, 640, "full"),
    ("DenseNet-BC / CIFAR-100", 64, 100, 342, "full"),
    ("ResNet-50 / ImageNet", 256, 1000, 2048, "diagonal"),
]


class DenseISDA:
    """The paper's Eqs. (1)-(3) and (7) with dense tensors (the official code's approach)."""

    def __init__(self, A, C, kind, device):
        self.kind = kind
        self.mean = torch.zeros(C, A, device=device)
        self.cov = torch.zeros((C, A, A) if kind == "full" else (C, A), device=device)
        self.amount = torch.zeros(C, device=device)

    @torch.no_grad()
    def update(self, feats, labels):
        N, A = feats.shape
        C = self.mean.shape[0]
        onehot = torch.zeros(N, C, device=feats.device).scatter_(1, labels.view(-1, 1), 1)
        by_class = feats.view(N, 1, A) * onehot.view(N, C, 1)  # N x C x A
        amount = onehot.sum(0).view(C, 1).clamp_min(1)
        ave = by_class.sum(0) / amount
        centred = by_class - ave.view(1, C, A) * onehot.view(N, C, 1)
        if self.kind == "full":
            var = torch.bmm(centred.permute(1, 2, 0), centred.permute(1, 0, 2)) / amount.view(C, 1, 1)
        else:
            var = (centred * centred).sum(0) / amount
        m = onehot.sum(0)
        w = m / (m + self.amount)
        w[w != w] = 0
        d = self.mean - ave
        if self.kind == "full":
            extra = (w * (1 - w)).view(C, 1, 1) * torch.bmm(d.view(C, A, 1), d.view(C, 1, A))
            wv = w.view(C, 1, 1)
        else:
            extra = (w * (1 - w)).view(C, 1) * d * d
            wv = w.view(C, 1)
        self.cov = self.cov * (1 - wv) + var * wv + extra
        self.mean = self.mean * (1 - w.view(C, 1)) + ave * w.view(C, 1)
        self.amount += m

    def loss(self, logits, weight, labels, ratio):
        N, C = logits.shape
        A = weight.shape[1]
        W = weight.expand(N, C, A)
        Wy = torch.gather(W, 1, labels.view(N, 1, 1).expand(N, C, A))
        V = W - Wy  # N x C x A
        if self.kind == "full":
            sigma2 = torch.bmm(torch.bmm(V, self.cov[labels]), V.transpose(1, 2))  # N x C x C
            sigma2 = torch.diagonal(sigma2, dim1=1, dim2=2)
        else:
            sigma2 = (V * V * self.cov[labels].unsqueeze(1)).sum(2)
        return F.cross_entropy(logits + 0.5 * ratio * sigma2, labels)


def dense_bytes(N, C, A, kind):
    per = N * C * A * 4
    if kind == "full":
        return 6 * per + N * A * A * 4 + 2 * N * C * C * 4 + 2 * C * A * A * 4
    return 8 * per


def run(device, repeats, max_dense_gb, only=None, backend="inductor"):
    torch.manual_seed(0)
    rows = []
    for name, N, C, A, kind in SHAPES:
        if only and only not in name:
            continue
        g = torch.Generator(device="cpu").manual_seed(0)
        feats = torch.randn(N, A, generator=g).to(device)
        labels = torch.randint(0, C, (N,), generator=g).to(device)
        weight = (torch.randn(C, A, generator=g) / math.sqrt(A)).to(device).requires_grad_()
        bias = torch.randn(C, generator=g).to(device)
        ours = ISDALoss(A, C, lambda0=0.5, kind=kind, constant_lambda=True).to(device)
        warm = torch.randn(4 * N, A, generator=g).to(device)
        ours.estimator.update(warm, torch.randint(0, C, (4 * N,), generator=g).to(device))
        U = int(labels.unique().numel())

        # the classifier's own product is not ISDA work: logits are a leaf here
        logits = (feats @ weight.detach().T + bias).requires_grad_()

        def step_ours():
            loss = ours(feats, logits, labels, weight)
            loss.backward()
            weight.grad = logits.grad = None

        dense = DenseISDA(A, C, kind, device)

        def step_dense():
            dense.update(feats, labels)
            loss = dense.loss(logits, weight, labels, 0.5)
            loss.backward()
            weight.grad = logits.grad = None

        classes = labels.unique()
        if kind == "full":
            cov_u = ours.estimator.covariance.index_select(0, classes).contiguous()
            w_u = weight.detach().expand(U, C, A).contiguous()

            def floor():
                torch.bmm(w_u, cov_u)
        else:
            d_u = ours.estimator.covariance.index_select(0, classes).contiguous()
            wt = weight.detach().T.contiguous()

            def floor():
                torch.mm(d_u, wt)

        t_ours = time_ms(step_ours, device, repeats)
        t_floor = time_ms(floor, device, repeats)
        syncs = count_syncs(step_ours).total
        static = ISDALoss(A, C, lambda0=0.5, kind=kind, constant_lambda=True, static_shapes=True).to(device)
        static.load_state_dict(ours.state_dict())
        unchecked = ISDALoss(A, C, lambda0=0.5, kind=kind, constant_lambda=True, validate=False,
                             static_shapes=True).to(device)
        unchecked.load_state_dict(ours.state_dict())

        def step_unchecked():
            loss = unchecked(feats, logits, labels, weight)
            loss.backward()
            weight.grad = logits.grad = None


        def step_static():
            loss = static(feats, logits, labels, weight)
            loss.backward()
            weight.grad = logits.grad = None

        t_static = time_ms(step_static, device, repeats)
        static_syncs = count_syncs(step_static).total
        ops = f"{count_ops(step_ours).total} / {count_ops(step_static).total} / {count_ops(step_unchecked).total}"
        compiled_cell = "-"
        if backend:
            compiled = torch.compile(ours, backend=backend)

            def step_compiled():
                loss = compiled(feats, logits, labels, weight)
                loss.backward()
                weight.grad = logits.grad = None

            try:
                step_compiled()  # compilation
                compiled_cell = f"{time_ms(step_compiled, device, repeats):.3f}"
            except Exception as err:  # report, keep going
                compiled_cell = f"error: {type(err).__name__}"
        m_ours = peak_memory_mb(step_ours, device)
        need_gb = dense_bytes(N, C, A, kind) / 2**30
        if need_gb <= max_dense_gb:
            dense.update(warm, torch.randint(0, C, (4 * N,), generator=g).to(device))
            t_dense = time_ms(step_dense, device, max(3, repeats // 3), warmup=1)
            m_dense = peak_memory_mb(step_dense, device)
            dense_cells = [f"{t_dense:.2f}", f"{t_dense / t_ours:.1f}x", f"{m_dense:.1f}"]
            ops += f" / {count_ops(step_dense).total}"
        else:
            dense_cells = [f"skipped (~{need_gb:.0f} GB)", "-", "-"]
            ops += " / -"
        rows.append([name, f"({N}, {C}, {A})", kind, U, f"{t_ours:.3f}", f"{t_floor:.3f}",
                     f"{t_ours / t_floor:.2f}", syncs, ops, compiled_cell, f"{t_static:.3f}", static_syncs,
                     f"{m_ours:.1f}", *dense_cells])
        print(f"done {name}", file=sys.stderr, flush=True)
    headers = ["shape", "(N, C, A)", "kind", "U present", "ours ms", "floor ms", "ours/floor", "syncs/step",
               "ops/step (ours / accel. route / unchecked static / dense)", "compiled ms", "accel. route ms",
               "accel. syncs", "ours peak MB", "dense ms", "dense/ours", "dense peak MB"]
    return markdown_table(headers, rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--max-dense-gb", type=float, default=8.0,
                        help="skip the dense reference where it would need more memory than this")
    parser.add_argument("--only", default=None, help="run shapes whose name contains this")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend of the compiled column")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled column")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")
    print("ISDA step = estimator update + loss forward + backward; times are medians in ms.\n")
    print(run(device, args.repeats, args.max_dense_gb, args.only, None if args.no_compile else args.backend))


if __name__ == "__main__":
    main()
