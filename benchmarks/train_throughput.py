"""Training throughput: images/second of a full training step, CE vs ISDA.

One step is exactly the classification task's (``torch_isda.train.tasks.classification.task``): ``forward_features``,
the classifier, the criterion (``ce`` or ``isda`` with the full covariance, estimator
update included), backward and an SGD step (Nesterov momentum 0.9, weight decay 1e-4,
lr 0.01 so that repeating one batch cannot diverge).
Shapes are the paper's CIFAR setting: batch 128 of 3x32x32 images, 10 and 100 classes
(Table 3 of the paper reports the same overhead on a V100).

CE and ISDA share one model, optimizer and batch and are measured in the same run with
interleaved repetitions (the order alternates every repetition); times are medians, the
overhead is the median of the per-repetition ISDA/CE ratios, so load drifts hit both. On
a busy shared CPU use ``--threads 1``: oversubscribed intra-op threads make step times
swing several-fold. The last two columns isolate the part ISDA adds: the extra time of the
ISDA loss over cross-entropy (forward + backward into the features and the classifier
weight, estimator update included) on its own, and its share of a CE step; it is the
stable estimate when machine noise exceeds the overhead.

Run: ``python benchmarks/train_throughput.py`` (``--device cuda --amp bf16
--channels-last`` on a GPU). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _measure import markdown_table, sync  # noqa: E402

from torch_isda.models import create_model  # noqa: E402
from torch_isda.train import TrainConfig  # noqa: E402
from torch_isda.train.criteria import create_criterion  # noqa: E402


def make_steps(model_name: str, num_classes: int, batch: int, device: torch.device, amp: str,
               channels_last: bool) -> tuple[dict, dict]:
    """One training step per criterion (``ce``, ``isda``) sharing one model, optimizer and
    batch, so that the two differ only in the criterion; plus the last loss of each."""
    model = create_model(model_name, num_classes).to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    # lr 0.01: the same batch is seen over and over; at 0.1 ResNet-110 can diverge, and
    # NaN/denormal arithmetic would distort the CPU timings
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                                weight_decay=1e-4)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, device=device, generator=gen)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (batch,), device=device, generator=gen)
    dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    model.train()
    classifier = model.get_classifier()

    def make(loss: str):
        criterion = create_criterion(loss, model.num_features, num_classes,
                                     TrainConfig(lambda0=0.5, kind="full")).to(device)
        criterion.set_progress(0.5)

        def step() -> None:
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                features = criterion.transform_features(model.forward_features(x))
                logits = classifier(features)
            out = criterion(features.float(), logits.float(), criterion.transform_target(y), model)
            optimizer.zero_grad(set_to_none=True)
            out.backward()
            optimizer.step()
            last_loss[loss] = out.detach()

        return step

    last_loss: dict[str, torch.Tensor] = {}
    return {loss: make(loss) for loss in ("ce", "isda")}, last_loss


def measure(model_name: str, num_classes: int, args: argparse.Namespace,
            device: torch.device) -> dict[str, float]:
    """Median seconds per step of each criterion, and the median of the per-repetition
    ISDA/CE time ratios (adjacent measurements: robust to slow load drifts)."""
    steps, last_loss = make_steps(model_name, num_classes, args.batch_size, device, args.amp,
                                  args.channels_last)
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    sync(device)
    times: dict[str, list[float]] = {"ce": [], "isda": []}
    order = ["ce", "isda"]
    for rep in range(args.repeats):
        for loss in (order if rep % 2 == 0 else order[::-1]):
            t0 = time.perf_counter()
            for _ in range(args.steps):
                steps[loss]()
            sync(device)
            times[loss].append((time.perf_counter() - t0) / args.steps)
    bad = {k: float(v) for k, v in last_loss.items() if not torch.isfinite(v)}
    if bad:
        raise RuntimeError(f"{model_name}: training diverged during the benchmark ({bad})")
    ratio = statistics.median(i / c for i, c in zip(times["isda"], times["ce"]))
    return {"ce": statistics.median(times["ce"]), "isda": statistics.median(times["isda"]),
            "ratio": ratio}


def loss_only_ms(num_features: int, num_classes: int, batch: int, device: torch.device,
                 repeats: int = 50) -> float:
    """Extra milliseconds of the ISDA loss over cross-entropy alone (forward + backward
    into the features and the classifier weight, estimator update included): the part of
    the step ISDA adds, measured without the backbone's noise."""
    import torch.nn.functional as F

    from torch_isda import ISDALoss

    gen = torch.Generator(device=device).manual_seed(0)
    feats = torch.randn(batch, num_features, device=device, generator=gen).requires_grad_()
    weight = (0.1 * torch.randn(num_classes, num_features, device=device, generator=gen)
              ).requires_grad_()
    y = torch.randint(0, num_classes, (batch,), device=device, generator=gen)
    isda = ISDALoss(num_features, num_classes, 0.5, "full").to(device)
    isda.set_progress(0.5)

    def run(use_isda: bool) -> None:
        logits = feats @ weight.T
        out = isda(feats, logits, y, weight) if use_isda else F.cross_entropy(logits, y)
        out.backward()

    result = {}
    for use_isda in (False, True):
        for _ in range(5):
            run(use_isda)
        ts = []
        for _ in range(repeats):
            sync(device)
            t0 = time.perf_counter()
            run(use_isda)
            sync(device)
            ts.append(time.perf_counter() - t0)
        result[use_isda] = statistics.median(ts)
    return (result[True] - result[False]) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", default="resnet32,resnet110")
    parser.add_argument("--classes", default="10,100")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repetitions")
    parser.add_argument("--steps", type=int, default=1, help="steps per timed repetition")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    rows = []
    for model_name in args.models.split(","):
        for num_classes in (int(c) for c in args.classes.split(",")):
            t = measure(model_name, num_classes, args, device)
            extra = loss_only_ms(create_model(model_name, num_classes).num_features,
                                 num_classes, args.batch_size, device)
            ce, isda = args.batch_size / t["ce"], args.batch_size / t["isda"]
            rows.append([model_name, num_classes, f"{ce:,.0f}", f"{isda:,.0f}",
                         f"{t['ce'] * 1e3:.1f}", f"{t['isda'] * 1e3:.1f}",
                         f"{(t['ratio'] - 1) * 100:+.1f}%", f"{extra:.2f}",
                         f"{extra / (t['ce'] * 1e3) * 100:.2f}%"])
            print(f"# {model_name} C={num_classes}: ce {t['ce'] * 1e3:.1f} ms, "
                  f"isda {t['isda'] * 1e3:.1f} ms", file=sys.stderr, flush=True)
    where = f"{device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
                           f" ({torch.get_num_threads()} threads)")
    print(f"Training throughput, batch {args.batch_size} x 3x32x32, {where}, amp {args.amp}, "
          f"median of {args.repeats} interleaved repetitions of {args.steps} step(s); overhead = "
          f"median of the paired ISDA/CE time ratios\n")
    print(markdown_table(
        ["Model", "Classes", "CE (img/s)", "ISDA (img/s)", "CE (ms/step)", "ISDA (ms/step)",
         "ISDA overhead (step)", "ISDA loss extra (ms)", "loss extra / CE step"], rows))


if __name__ == "__main__":
    main()
