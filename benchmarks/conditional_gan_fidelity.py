"""Do the class-conditional generators of Table 5 make images of the asked class?

For every generator directory (``isda gan train --kind wgan-per-class|cgan|acgan|infogan``)
draw ``--per-class`` images of each class and let a trained classifier (an ``isda train``
run on the same dataset) label them; print, per generator, the share of images given the
class they were generated for, the classifier's mean confidence, and the same numbers for
the real test images as a reference. Also times the generation of one ``gan_augment``
mini-batch share (26 images, a batch of 128 at 1/6).

    python benchmarks/conditional_gan_fidelity.py --classifier runs/table5-digits/isda/seed0 \\
        runs/gan-wgan-per-class runs/gan-cgan runs/gan-acgan runs/gan-infogan
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("generators", nargs="+", help="generator directories (gan.pt)")
    parser.add_argument("--classifier", required=True, help="an `isda train` run directory")
    parser.add_argument("--per-class", type=int, default=100, help="images per class (100)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from torch_isda.data import normalize
    from torch_isda.cli.visualize import load_classifier
    from torch_isda.visualize.conditional_gan import load_conditional_generator

    model, config, data, _ = load_classifier(Path(args.classifier), torch.device("cpu"))

    def judge(images01: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
        with torch.no_grad():
            probs = model(normalize(images01, data.mean, data.std)).softmax(1)
        return (100.0 * float((probs.argmax(1) == labels).float().mean()),
                100.0 * float(probs.max(1).values.mean()))

    acc, conf = judge(data.test_images.float() / 255.0, data.test_labels)
    rows = [("real test images", "-", acc, conf, float("nan"))]
    for path in args.generators:
        G = load_conditional_generator(path)
        labels = torch.arange(G.num_classes).repeat_interleave(args.per_class)
        rng = torch.Generator().manual_seed(args.seed)
        images = G.sample(labels, rng).add(1).mul(0.5).clamp(0, 1)
        acc, conf = judge(images, labels)
        t0 = time.perf_counter()
        for _ in range(20):
            G.sample(torch.randint(0, G.num_classes, (26,)), rng)
        ms = (time.perf_counter() - t0) / 20 * 1e3
        rows.append((Path(path).name, G.kind, acc, conf, ms))
    print(f"classifier: {config.model} ({config.loss}) from {args.classifier}; "
          f"{args.per_class} images per class, seed {args.seed}, {args.threads} thread(s)\n")
    print("| images | kind | classified as the asked class (%) | mean confidence (%) | 26 images (ms) |")
    print("|---|---|---|---|---|")
    for name, kind, acc, conf, ms in rows:
        print(f"| {name} | {kind} | {acc:.1f} | {conf:.1f} | {'-' if ms != ms else f'{ms:.2f}'} |")


if __name__ == "__main__":
    main()
