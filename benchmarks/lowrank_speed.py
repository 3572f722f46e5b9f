"""Low-rank + diagonal covariance (``kind="lowrank"``) vs the diagonal and full kinds.

At the ImageNet shape of Table 1 (N=256 samples, C=1000 classes, A=2048 features) the full
kind's state alone is ``C x A x A`` float32 = 16.8 GB, so it is reported as skipped there;
``--shapes`` adds smaller shapes where all three kinds fit. For each kind it times:

* ``update``: :meth:`CovarianceEstimator.update` alone (Eqs. 1-3; for lowrank the streaming
  rank-k truncation);
* ``loss``: the augmented cross-entropy forward + backward into the logits and the
  classifier weight, with the statistics fixed (the ``sigma2`` work: ``O(U C A k)`` for lowrank);
* ``step``: one :class:`torch_isda.ISDALoss` call (update + loss) + backward, and its peak
  memory beyond the inputs and the state;

plus the size of the estimator's state and the multiply-accumulates of the ``sigma2``
forward (``U C A`` diagonal, ``U C A k`` lowrank, ``U C A^2`` full; the backward into the
weight costs about the same again). The estimator is warmed with ``4 N`` samples first.

Run: ``python benchmarks/lowrank_speed.py`` (``--device cuda`` on a GPU). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _measure import markdown_table, peak_memory_mb, time_ms  # noqa: E402

from torch_isda import ISDALoss  # noqa: E402
from torch_isda import functional as isda_f  # noqa: E402


def state_bytes(kind: str, C: int, A: int, k: int, itemsize: int = 4) -> int:
    """Bytes of the estimator's buffers (mean, covariance, count and the low-rank factors)."""
    cov = {"full": C * A * A, "diagonal": C * A, "lowrank": C * A}[kind]
    extra = C * A * k + C * k + C * A if kind == "lowrank" else 0
    return (C * A + cov + extra) * itemsize + C * 8


def run(device, shapes, rank, repeats, max_state_gb):
    rows = []
    for N, C, A in shapes:
        g = torch.Generator(device="cpu").manual_seed(0)
        feats = torch.randn(N, A, generator=g).to(device)
        labels = torch.randint(0, C, (N,), generator=g).to(device)
        weight = (torch.randn(C, A, generator=g) / math.sqrt(A)).to(device).requires_grad_()
        bias = torch.randn(C, generator=g).to(device)
        warm_x = torch.randn(4 * N, A, generator=g).to(device)
        warm_y = torch.randint(0, C, (4 * N,), generator=g).to(device)
        U = int(labels.unique().numel())
        logits = (feats @ weight.detach().T + bias).requires_grad_()  # the classifier is not ISDA work
        for kind in ("diagonal", "lowrank", "full"):
            k = min(rank, A) if kind == "lowrank" else None
            label = f"lowrank k={k}" if kind == "lowrank" else kind
            need = state_bytes(kind, C, A, k or 0)
            macs = U * C * A * {"diagonal": 1, "lowrank": k or 1, "full": A}[kind]
            if need / 2**30 > max_state_gb:
                rows.append([f"({N}, {C}, {A})", label, U, f"{macs / 1e9:.3g}",
                             f"{need / 1e9:.1f} GB: skipped", "-", "-", "-", "-"])
                print(f"skipped {kind} at {(N, C, A)}: its state needs {need / 1e9:.1f} GB", file=sys.stderr)
                continue
            crit = ISDALoss(A, C, 0.5, kind, constant_lambda=True, rank=rank).to(device)
            crit.estimator.update(warm_x, warm_y)
            cov = crit.estimator.functional_covariance()

            def update():
                crit.estimator.update(feats, labels)

            def loss_only():
                loss = isda_f.isda_cross_entropy(logits, weight, labels, cov, 0.5, kind)
                loss.backward()
                weight.grad = logits.grad = None

            def step():
                loss = crit(feats, logits, labels, weight)
                loss.backward()
                weight.grad = logits.grad = None

            t_update = time_ms(update, device, repeats)
            t_loss = time_ms(loss_only, device, repeats)
            t_step = time_ms(step, device, repeats)
            m_step = peak_memory_mb(step, device)
            state_mb = sum(b.numel() * b.element_size() for b in crit.estimator.buffers()) / 2**20
            rows.append([f"({N}, {C}, {A})", label, U, f"{macs / 1e9:.3g}", f"{state_mb:.1f} MB", f"{t_update:.2f}",
                         f"{t_loss:.2f}", f"{t_step:.2f}", f"{m_step:.1f}"])
            print(f"done {kind} at {(N, C, A)}", file=sys.stderr, flush=True)
            del crit, cov
    headers = ["(N, C, A)", "kind", "U present", "sigma2 GMAC", "state", "update ms", "loss fwd+bwd ms",
               "step ms", "step peak MB"]
    return markdown_table(headers, rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--max-state-gb", type=float, default=8.0,
                        help="skip a kind whose estimator state would need more memory than this")
    parser.add_argument("--shapes", nargs="*", default=["256,1000,2048"],
                        help="N,C,A triples (default: the ImageNet shape 256,1000,2048)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes]
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")
    print("Times are medians in ms; state = the estimator's buffers (float32).\n")
    print(run(device, shapes, args.rank, args.repeats, args.max_state_gb))


if __name__ == "__main__":
    main()
