"""ImageNet presets: TPAMI Appendix A (``imagenet``) and NeurIPS Appendix B (``imagenet_120``),
with the per-family / per-model ISDA defaults (lambda_0, diagonal covariance)."""

from __future__ import annotations

import argparse

import pytest

from torch_isda.train import TrainConfig, resolve_config
from torch_isda.train.command_train import add_parser, build_config
from torch_isda.train.criteria import create_criterion
from torch_isda.train.presets import (
    DEFAULT_KIND,
    DEFAULT_LAMBDA0,
    PRESETS,
    Preset,
    get_preset,
    isda_defaults,
    list_presets,
    model_family,
)

#: TPAMI Appendix A: "lambda_0 = 1 for DenseNets and lambda_0 = 7.5 for ResNets and
#: ResNeXts, except for using lambda_0 = 5 for ResNet-101" (diagonal covariance).
IMAGENET_LAMBDA0 = {
    "resnet50": 7.5,
    "resnet101": 5.0,
    "resnet152": 7.5,
    "densenet121": 1.0,
    "densenet265": 1.0,
    "resnext50_32x4d": 7.5,
    "resnext101_32x8d": 7.5,
}


def _parse(argv):
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["train", *argv])


def _resolve(model, **kwargs):
    return resolve_config(TrainConfig(dataset="digits", model=model, **kwargs))


@pytest.mark.parametrize("model", sorted(IMAGENET_LAMBDA0))
def test_imagenet_models_get_the_appendix_a_preset(model):
    assert model_family(model).endswith("_imagenet")
    cfg = _resolve(model)
    assert cfg.preset == "imagenet"
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.lr_schedule) == (300, 512, 0.2, "cosine")
    # official imagenet_DDP.py: SGD with momentum, no Nesterov; cosine at the 0-based epoch
    assert (cfg.weight_decay, cfg.momentum, cfg.nesterov, cfg.lr_offset) == (1e-4, 0.9, False, None)
    assert cfg.lambda0 == IMAGENET_LAMBDA0[model]
    assert cfg.kind == "diagonal"
    assert isda_defaults(model) == {"lambda0": IMAGENET_LAMBDA0[model], "kind": "diagonal"}


@pytest.mark.parametrize("model", sorted(IMAGENET_LAMBDA0))
def test_imagenet_120_step_schedule(model):
    cfg = _resolve(model, preset="imagenet_120")
    assert cfg.preset == "imagenet_120"
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.weight_decay) == (120, 256, 0.1, 1e-4)
    assert (cfg.lr_schedule, cfg.milestones, cfg.gamma) == ("step", [30, 60, 90], 0.1)
    assert (cfg.momentum, cfg.nesterov, cfg.lr_offset) == (0.9, False, None)
    assert (cfg.lambda0, cfg.kind) == (IMAGENET_LAMBDA0[model], "diagonal")


def test_presets_are_listed_and_described():
    assert {"imagenet", "imagenet_120"} <= set(list_presets())
    assert get_preset("imagenet_120").describe_schedule() == "x0.1 at 30, 60, 90"
    assert get_preset("imagenet").describe_schedule() == "cosine"
    assert "Appendix A" in get_preset("imagenet").source
    assert "Appendix B" in get_preset("imagenet_120").source


def test_cifar_models_keep_the_cifar_isda_defaults():
    for model in ("resnet110", "digits_cnn"):
        cfg = _resolve(model)
        assert (cfg.lambda0, cfg.kind) == (DEFAULT_LAMBDA0, DEFAULT_KIND) == (0.5, "full")


def test_command_line_overrides_win():
    args = _parse(["--model", "resnet101", "--preset", "imagenet_120", "--lambda0", "2.5",
                   "--kind", "full", "--epochs", "3", "--batch-size", "8"])
    cfg = resolve_config(build_config(args))
    assert (cfg.lambda0, cfg.kind, cfg.epochs, cfg.batch_size) == (2.5, "full", 3, 8)
    assert (cfg.lr, cfg.milestones) == (0.1, [30, 60, 90])  # the rest from the preset
    # an explicit value equal to the CIFAR default is kept, not replaced by 7.5
    cfg = resolve_config(build_config(_parse(["--model", "resnet50", "--lambda0", "0.5"])))
    assert (cfg.lambda0, cfg.kind) == (0.5, "diagonal")
    # only what was typed is an override
    assert "lambda0" not in vars(_parse(["--model", "resnet50"]))


def test_explicit_preset_decides_the_isda_defaults():
    # a CIFAR preset forced on an ImageNet model: the CIFAR ISDA setting
    cfg = _resolve("resnet50", preset="resnet")
    assert (cfg.epochs, cfg.lambda0, cfg.kind) == (160, 0.5, "full")
    # every optimization field explicit: no preset recorded, ISDA defaults still per model
    explicit = dict(epochs=1, batch_size=4, lr=0.1, momentum=0.9, nesterov=True,
                    weight_decay=1e-4, lr_schedule="cosine", milestones=[], gamma=0.1)
    cfg = _resolve("densenet121", **explicit)
    assert cfg.preset is None and (cfg.lambda0, cfg.kind) == (1.0, "diagonal")


def test_resolved_config_builds_the_diagonal_criterion():
    cfg = _resolve("resnet101")
    crit = create_criterion("isda", 2048, 10, cfg)
    assert (crit.isda.lambda0, crit.isda.kind) == (5.0, "diagonal")
    crit = create_criterion("isda(lambda0=10)", 2048, 10, cfg)  # the loss spec wins
    assert (crit.isda.lambda0, crit.isda.kind) == (10.0, "diagonal")
    # an unresolved config falls back to the CIFAR defaults
    crit = create_criterion("isda", 8, 3, TrainConfig())
    assert (crit.isda.lambda0, crit.isda.kind) == (0.5, "full")


def test_saved_configs_round_trip():
    cfg = _resolve("resnext50_32x4d")
    again = TrainConfig.from_json(cfg.to_json())
    assert again == cfg and resolve_config(again) == cfg
    # a config saved before lambda0/kind became preset fields (explicit 0.5/full) is kept
    old = TrainConfig.from_dict({**cfg.to_dict(), "lambda0": 0.5, "kind": "full"})
    assert (resolve_config(old).lambda0, resolve_config(old).kind) == (0.5, "full")


def test_preset_overrides_are_checked_and_immutable():
    with pytest.raises(ValueError, match="may only set lambda0, kind"):
        Preset("bad", 1, 1, 0.1, 0.0, "cosine", isda_overrides={"resnet50": {"lr": 1.0}})
    preset = PRESETS["imagenet"]
    with pytest.raises(TypeError):
        preset.isda_overrides["resnet50"] = {"lambda0": 1.0}  # type: ignore[index]
    assert preset.isda_defaults("resnet101", "resnet_imagenet")["lambda0"] == 5.0
    assert preset.isda_defaults("densenet121", "densenet_imagenet")["lambda0"] == 1.0
    assert preset.isda_defaults(None, None) == {"lambda0": 7.5, "kind": "diagonal"}
    hash(preset)  # still hashable (frozen)
