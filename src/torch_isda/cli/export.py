"""``isda export``: a run's ResNet backbone as a torchvision / timm ``state_dict``.

See :mod:`torch_isda.cli.export_backbone` and docs/reproduce/table11-12-detection.md (Tables 11-12).
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "describe", "run"]

EPILOG = """\
Examples:

  isda export runs/imagenet-resnet50-isda --format torchvision --out resnet50_isda.pth
  isda export runs/imagenet-resnet50-isda --format timm --out resnet50_isda_timm.pth
  isda export official_resnet50_state_dict.pth --no-classifier --out resnet50_backbone.pth

RUN is a run directory of `isda train` (its checkpoint.pt) or a file saved with torch.save
holding a state dict (an official checkpoint's checkpoint['state_dict'], `module.` prefixes
are removed). The file loads with torchvision.models.resnet50(num_classes=C), with
timm.create_model("resnet50", num_classes=C) and as MMDetection's
init_cfg=dict(type="Pretrained", checkpoint=FILE).
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from .export_backbone import EXPORT_FORMATS

    parser = subparsers.add_parser(
        "export", help="write a run's ResNet backbone with torchvision / timm key names",
        description="Export the weights of an ImageNet ResNet / ResNeXt run (or of an official "
                    "ISDA checkpoint's state dict) as a state_dict with the key names of "
                    "torchvision's and timm's ResNets, for detection and instance segmentation "
                    "(Tables 11-12 of the paper).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", metavar="RUN", help="run directory or weights file")
    parser.add_argument("--format", choices=EXPORT_FORMATS, default="torchvision",
                        help="library whose key names the file has (default: torchvision)")
    parser.add_argument("--out", required=True, metavar="FILE", help="the file to write")
    parser.add_argument("--no-classifier", dest="classifier", action="store_false",
                        help="drop fc (the backbone alone)")
    return parser


def describe(info: dict[str, Any]) -> str:
    """One line about an export: architecture, classifier, number of tensors."""
    arch = info["name"] or (f"{info['block']} ResNet {'-'.join(map(str, info['layers']))}, "
                            f"groups {info['groups']}, width {info['width_per_group']}")
    classes = info["num_classes"]
    head = "no classifier" if classes is None else f"fc: {classes} classes"
    return f"{arch} ({head}, {info['keys']} tensors)"


def run(args: argparse.Namespace) -> int:
    from .export_backbone import export_backbone

    info = export_backbone(args.run, args.out, args.format, classifier=args.classifier)
    loader = {"torchvision": f"torchvision.models.{info['name'] or 'resnet50'}",
              "timm": f"timm.create_model('{info['name'] or 'resnet50'}', ...)"}[args.format]
    print(f"wrote {args.out}: {describe(info)}, {args.format} key names ({loader})")
    return 0
