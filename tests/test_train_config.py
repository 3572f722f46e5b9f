"""TrainConfig, presets (Table 9) and command-line override resolution."""

from __future__ import annotations

import argparse
import json
import math
import warnings

import pytest

from torch_isda.train.command_train import add_parser, build_config
from torch_isda.train.config import PRESET_FIELDS, TrainConfig
from torch_isda.train.presets import (
    DEFAULT_LAMBDA0,
    LAMBDA0_GRID_CIFAR,
    LAMBDA0_GRID_IMAGENET,
    model_family,
)
from torch_isda.train.resolve import resolve_config

# Table 9 of the TPAMI paper, written out independently of presets.py:
# (epochs, batch, weight decay, lr, schedule, milestones, gamma)
TABLE9 = {
    "resnet32": (160, 128, 1e-4, 0.1, "step", [80, 120], 0.1),
    "resnet110": (160, 128, 1e-4, 0.1, "step", [80, 120], 0.1),
    "se_resnet110": (200, 128, 1e-4, 0.1, "step", [80, 120, 160], 0.1),
    "wrn28_10": (240, 128, 5e-4, 0.1, "step", [60, 120, 160, 200], 0.2),
    "wrn16_8": (240, 128, 5e-4, 0.1, "step", [60, 120, 160, 200], 0.2),
    "densenet_bc_100_12": (300, 64, 1e-4, 0.1, "step", [150, 200, 250], 0.1),
    "resnext29_8x64d": (350, 128, 5e-4, 0.05, "step", [150, 225, 300], 0.1),
    "shake_shake_26_2x32d": (1800, 64, 1e-4, 0.1, "cosine", None, None),
}


def _parse(argv):
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["train", *argv])


@pytest.mark.parametrize("model", sorted(TABLE9))
def test_each_family_gets_its_table9_preset(model):
    cfg = resolve_config(TrainConfig(dataset="cifar10", model=model))
    epochs, batch, wd, lr, schedule, milestones, gamma = TABLE9[model]
    assert (cfg.epochs, cfg.batch_size, cfg.weight_decay, cfg.lr) == (epochs, batch, wd, lr)
    assert (cfg.momentum, cfg.nesterov) == (0.9, True)
    assert cfg.lr_schedule == schedule
    if schedule == "step":
        assert cfg.milestones == milestones and cfg.gamma == gamma
    assert cfg.preset == model_family(model)
    assert cfg.lambda0 == DEFAULT_LAMBDA0 == 0.5 and cfg.kind == "full"


def test_small_cnn_preset_and_lambda_grids():
    cfg = resolve_config(TrainConfig())
    assert cfg.preset == "small_cnn" and cfg.lr_schedule == "cosine"
    assert cfg.epochs <= 50 and cfg.nesterov
    assert LAMBDA0_GRID_CIFAR == (0.1, 0.25, 0.5, 0.75, 1.0)
    assert LAMBDA0_GRID_IMAGENET == (1.0, 2.5, 5.0, 7.5, 10.0)


def test_command_line_overrides_win_over_the_preset():
    args = _parse(["--model", "resnet110", "--dataset", "cifar100", "--epochs", "5", "--lr",
                   "0.2", "--milestones", "2,4", "--no-nesterov", "--gamma", "0.5",
                   "--model-kwargs", "dropout=0.3", "--lambda0", "0.75", "--constant-lambda"])
    cfg = resolve_config(build_config(args))
    assert (cfg.epochs, cfg.lr, cfg.milestones, cfg.nesterov, cfg.gamma) == (5, 0.2, [2, 4], False, 0.5)
    assert cfg.batch_size == 128 and cfg.weight_decay == 1e-4  # still from the preset
    assert cfg.model_kwargs == {"dropout": 0.3}
    assert cfg.lambda0 == 0.75 and cfg.constant_lambda is True
    # only the options typed appear: defaults are not "overrides"
    assert "batch_size" not in vars(args) and "seed" not in vars(args)


def test_explicit_preset_and_every_field_has_an_option():
    cfg = resolve_config(TrainConfig(model="resnet32", preset="wide_resnet"))
    assert cfg.weight_decay == 5e-4 and cfg.gamma == 0.2
    parser = argparse.ArgumentParser()
    sub = add_parser(parser.add_subparsers())
    flags = {a for action in sub._actions for a in action.option_strings}
    for name in TrainConfig.__dataclass_fields__:
        assert "--" + name.replace("_", "-") in flags


def test_json_round_trip_and_errors(tmp_path):
    cfg = resolve_config(TrainConfig(model="wrn16_8", model_kwargs={"dropout": 0.3}, amp="bf16"))
    again = TrainConfig.from_json(cfg.to_json())
    assert again == cfg
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"config": cfg.to_dict(), "torch_isda_version": "x"}))
    assert TrainConfig.load(path) == cfg
    with pytest.raises(ValueError, match="unknown TrainConfig field.*epocs"):
        TrainConfig.from_dict({"epocs": 3})
    with pytest.raises(ValueError, match="amp must be one of"):
        resolve_config(TrainConfig(amp="fp8"))
    assert all(getattr(TrainConfig(), f) is None for f in PRESET_FIELDS)


def test_unknown_names_are_clear():
    with pytest.raises(ValueError, match="Unknown dataset 'cifar11'.*Available datasets"):
        resolve_config(TrainConfig(dataset="cifar11"))
    with pytest.raises(ValueError, match="Unknown model 'resnet33'.*Available models"):
        resolve_config(TrainConfig(model="resnet33"))
    with pytest.raises(ValueError, match="Unknown criterion 'isdaa'.*Did you mean 'isda'.*ce"):
        resolve_config(TrainConfig(loss="isdaa"))
    with pytest.raises(ValueError, match="Unknown preset"):
        resolve_config(TrainConfig(preset="nope"))


# ----------------------------------------------------------------------------- LR timing


def _official_cifar_lrs(lr, epochs, milestones, gamma, cosine):
    """The lr of each 0-based epoch in the official ISDA CIFAR train.py, re-enacted:
    ``adjust_learning_rate(optimizer, epoch + 1)`` before training epoch ``epoch``."""
    lrs, current = [], lr
    for epoch in range(epochs):
        e = epoch + 1
        if cosine:
            current = 0.5 * lr * (1 + math.cos(math.pi * e / epochs))
        elif e in milestones:
            current *= gamma
        lrs.append(current)
    return lrs


def _trained_lrs(cfg):
    from torch_isda.train import Trainer

    trainer = Trainer(resolve_config(cfg), quiet=True)
    trainer.build()
    lrs = []
    with warnings.catch_warnings():  # stepping the schedule without optimizer steps
        warnings.filterwarnings("ignore", "Detected call of")
        for _ in range(cfg.epochs):
            lrs.append(trainer.optimizer.param_groups[0]["lr"])
            trainer.scheduler.step()
    return lrs


@pytest.mark.parametrize("preset", ["resnet", "wide_resnet", "densenet", "shake_shake"])
def test_cifar_presets_use_the_official_lr_timing(preset, tmp_path):
    cfg = resolve_config(TrainConfig(dataset="cifar10", model="resnet110", preset=preset))
    assert cfg.lr_offset == 1
    # the whole schedule of the preset (milestones, cosine), on digits to build quickly
    run = TrainConfig(preset=preset, out=str(tmp_path), threads=1)
    resolved = resolve_config(run)
    expected = _official_cifar_lrs(resolved.lr, resolved.epochs, resolved.milestones,
                                   resolved.gamma, resolved.lr_schedule == "cosine")
    assert _trained_lrs(resolved) == pytest.approx(expected, rel=1e-12, abs=1e-15)
    if resolved.lr_schedule == "step":  # decays before 0-based epoch m - 1
        m = resolved.milestones[0]
        assert expected[m - 2] == resolved.lr and expected[m - 1] == resolved.lr * resolved.gamma
    else:  # the cosine ends at exactly 0
        assert expected[-1] == pytest.approx(0.0, abs=1e-15)


def test_resnet_milestones_80_120_decay_before_epochs_79_and_119(tmp_path):
    lrs = _trained_lrs(resolve_config(TrainConfig(preset="resnet", out=str(tmp_path))))
    assert lrs[78] == 0.1 and lrs[79] == pytest.approx(0.01) and lrs[118] == pytest.approx(0.01)
    assert lrs[119] == pytest.approx(0.001) and len(lrs) == 160


def test_lr_offset_zero_elsewhere_and_overridable(tmp_path):
    # None (= 0) for small_cnn and ImageNet: configs of earlier runs stay equal (reused)
    assert resolve_config(TrainConfig()).lr_offset is None  # small_cnn: digits results unchanged
    assert resolve_config(TrainConfig(model="resnet50")).lr_offset is None  # imagenet_DDP.py
    explicit = dict(epochs=4, batch_size=64, lr=0.1, momentum=0.9, nesterov=True,
                    weight_decay=0.0, lr_schedule="step", milestones=[2], gamma=0.1)
    cfg = TrainConfig(model="digits_cnn", out=str(tmp_path), **explicit)
    assert _trained_lrs(resolve_config(cfg)) == pytest.approx([0.1, 0.1, 0.01, 0.01])
    cfg = cfg.replace(lr_offset=1)  # explicit value wins
    assert _trained_lrs(resolve_config(cfg)) == pytest.approx([0.1, 0.01, 0.01, 0.01])
    with pytest.raises(ValueError, match="lr_offset must be 0 or 1"):
        resolve_config(cfg.replace(lr_offset=2))


def test_configs_saved_before_lr_offset_still_match(tmp_path):
    from torch_isda.train.rundir import config_differences

    current = resolve_config(TrainConfig(out=str(tmp_path)))
    saved = current.to_dict()
    del saved["lr_offset"]  # a config.json written before the field existed
    assert config_differences(TrainConfig.from_dict(saved), current) == {}
    # a CIFAR preset's run of that time had the other timing: it is not reused
    cifar = resolve_config(TrainConfig(dataset="cifar10", model="resnet32", out=str(tmp_path)))
    old = {k: v for k, v in cifar.to_dict().items() if k != "lr_offset"}
    assert config_differences(TrainConfig.from_dict(old), cifar) == {"lr_offset": (None, 1)}
