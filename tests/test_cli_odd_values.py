"""Odd values and silent no-ops on the command line: one clear line on stderr, exit status
2, nothing left behind; notes for options that have no effect; the analyses' help lists
only the options that apply."""

from __future__ import annotations

import os

import pytest

from torch_isda.cli import build_parser, main

TINY = ["--epochs", "1", "--model-kwargs", "width=4", "--device", "cpu", "--quiet"]


def _fails_in_one_line(argv, capsys, tmp_path, monkeypatch, *, left=()):
    monkeypatch.chdir(tmp_path)
    before = sorted(os.listdir(tmp_path))
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert sorted(os.listdir(tmp_path)) == sorted([*before, *left])
    return err[0]


@pytest.mark.parametrize("command", ["train", "compare"])
@pytest.mark.parametrize("option", ["--lambda0", "--lr"])
@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_non_finite_numbers_are_one_line_and_leave_nothing(command, option, value, capsys,
                                                           tmp_path, monkeypatch):
    line = _fails_in_one_line([command, f"{option}={value}", *TINY], capsys, tmp_path,
                              monkeypatch)
    assert f"{option[2:]} must be a finite number; got {value}" in line


@pytest.mark.parametrize("command", ["train", "compare"])
def test_out_naming_a_file_is_one_line(command, capsys, tmp_path, monkeypatch):
    (tmp_path / "taken").write_text("x")
    line = _fails_in_one_line([command, "--out", "taken", *TINY], capsys, tmp_path, monkeypatch)
    assert "--out 'taken' is a file, not a directory" in line
    line = _fails_in_one_line([command, "--out", "taken/run", *TINY], capsys, tmp_path,
                              monkeypatch)
    assert "is inside 'taken', which is a file" in line


def test_config_that_is_not_json_names_the_file(capsys, tmp_path, monkeypatch):
    (tmp_path / "notjson").write_text("notjson")
    line = _fails_in_one_line(["train", "--config", "notjson", *TINY], capsys, tmp_path,
                              monkeypatch)
    assert "'notjson' is not a JSON configuration: Expecting value: line 1 column 1" in line
    (tmp_path / "list.json").write_text("[1, 2]")
    line = _fails_in_one_line(["train", "--config", "list.json", *TINY], capsys, tmp_path,
                              monkeypatch)
    assert "'list.json' holds a JSON list, not a configuration object" in line


def test_resume_with_force_is_refused(capsys, tmp_path, monkeypatch):
    line = _fails_in_one_line(["train", "--resume", "--force", *TINY], capsys, tmp_path,
                              monkeypatch)
    assert "--resume and --force" in line


@pytest.mark.parametrize("argv, words", [
    (["train", "--stop-after", "0"], "--stop-after: must be a positive integer; got 0"),
    (["train", "--epochs", "abc"], "--epochs: invalid int value: 'abc'"),
    (["compare", "--kind", "bogus"], "--kind: invalid choice: 'bogus'"),
    (["train", "--no-such-option"], "unrecognized arguments: --no-such-option"),
])
def test_parse_errors_are_one_line_with_a_help_hint(argv, words, capsys, tmp_path, monkeypatch):
    line = _fails_in_one_line(argv, capsys, tmp_path, monkeypatch)
    assert line.startswith(f"isda {argv[0]}: error: ") and words in line
    assert f"isda {argv[0]} --help" in line


def test_isda_options_without_an_isda_criterion_get_a_note(capsys, tmp_path, monkeypatch):
    from torch_isda.train import TrainConfig
    from torch_isda.train.cli_checks import criterion_names, ignored_option_notes

    assert criterion_names("isda(lambda0=5, kind=diagonal)+center") == ["isda", "center"]
    notes = ignored_option_notes({"lambda0": 0.7, "kind": "diagonal"},
                                 TrainConfig(loss="ce", lambda0=0.7, kind="diagonal"))
    assert notes == ["note: --lambda0 and --kind have no effect with --loss ce (only isda, "
                     "explicit_sda, learned_cov use them)"]
    for loss in ("isda", "isda+center", "explicit_sda(m=2)", "learned_cov"):
        assert ignored_option_notes({"lambda0": 0.7}, TrainConfig(loss=loss, lambda0=0.7)) == []
    assert ignored_option_notes({}, TrainConfig(loss="ce")) == []
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--loss", "ce", "--lambda0", "0.7", "--kind", "diagonal", "--out",
                 "run", *TINY]) == 0
    err = capsys.readouterr().err
    assert "--lambda0 and --kind have no effect with --loss ce" in err


def test_fp16_autocast_on_the_cpu_gets_a_note():
    from torch_isda.train import TrainConfig
    from torch_isda.train.cli_checks import ignored_option_notes

    notes = ignored_option_notes({"amp": "fp16"}, TrainConfig(amp="fp16", device="cpu"))
    assert len(notes) == 1 and "--amp fp16 on the CPU" in notes[0] and "bf16" in notes[0]
    assert ignored_option_notes({"amp": "bf16"}, TrainConfig(amp="bf16", device="cpu")) == []


def test_a_bad_value_is_reported_alone_without_notes(capsys, tmp_path, monkeypatch):
    line = _fails_in_one_line(["train", "--loss", "ce", "--lambda0", "0.7", "--amp", "fp16",
                               "--lr", "nan", *TINY], capsys, tmp_path, monkeypatch)
    assert "lr must be a finite number" in line


def _help_options(argv):
    parser = build_parser()
    sub = parser
    for word in argv:
        actions = [a for a in sub._actions if a.__class__.__name__ == "_SubParsersAction"]
        sub = actions[0].choices[word]
    return {opt for action in sub._actions for opt in action.option_strings}


@pytest.mark.parametrize("analysis", ["tightness", "ablation"])
def test_analysis_help_lists_only_options_that_apply(analysis):
    options = _help_options(["analyze", analysis])
    for inapplicable in ("--semi", "--labels", "--labeled-batch-size", "--zca", "--crop-size",
                         "--eval-scales", "--seg-loss-at", "--aux-weight", "--task",
                         "--isda-sync", "--sync-bn", "--dist-backend", "--dist-timeout"):
        assert inapplicable not in options, inapplicable
    for applicable in ("--dataset", "--model", "--epochs", "--lr", "--seed" if analysis ==
                       "tightness" else "--seeds", "--device", "--amp", "--out"):
        assert applicable in options, applicable
