"""Fuzzing with Hypothesis (bounded to about a minute; the number of cases run is printed at
the end of the module):

* the core: random ``N``, ``C``, ``A``, every kind, float64 / float32 / bf16 autocast,
  ``ignore_index`` patterns (none, some, all ignored), single-class batches, reductions,
  the validated and the static path, a few steps in a row: the loss and the gradients equal
  the float64 brute force of :mod:`reference` (Eq. 7 over every sample seen so far), or, for
  bad input (labels out of range, NaN / Inf features), a ``ValueError`` naming the problem
  is raised and the statistics are unchanged;
* the command line: random combinations of options with at least one odd value, and each
  odd value alone: exit status 2, one line on stderr, no traceback, nothing written.

The cases are derandomized (the same every run, so CI is reproducible);
``TORCH_ISDA_FUZZ_EXAMPLES`` scales their number (default 1: 250 + 100 core cases, 100 +
about 60 command lines, well under a minute on an idle 2-core machine).
"""

from __future__ import annotations

import os
import time
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

import reference

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from torch_isda import ISDALoss  # noqa: E402
from torch_isda.layouts import KINDS  # noqa: E402

SCALE = float(os.environ.get("TORCH_ISDA_FUZZ_EXAMPLES", "1"))
CASES: Counter = Counter()


def fuzz_settings(examples: int):
    return settings(max_examples=max(1, int(examples * SCALE)), deadline=None, derandomize=True,
                    database=None, suppress_health_check=[HealthCheck.too_slow,
                                                          HealthCheck.function_scoped_fixture])


_SPAN: list[float] = []  # perf_counter() at the first case and after the last one


def elapsed() -> float:
    """Seconds from the first fuzzing case to the end of the last one (for the summary line
    of tests/conftest.py; the module's tests run one after the other)."""
    return _SPAN[-1] - _SPAN[0] if _SPAN else 0.0


def count(name: str) -> None:
    if not _SPAN:
        _SPAN.append(time.perf_counter())
    CASES[name] += 1


@pytest.fixture(autouse=True)
def _time_cases():
    yield
    if _SPAN:
        del _SPAN[1:]
        _SPAN.append(time.perf_counter())


# --------------------------------------------------------------------------- the core

PRECISIONS = ("float64", "float32", "bf16-autocast")
TOLERANCE = {"float64": dict(rtol=1e-9, atol=1e-10), "float32": dict(rtol=2e-4, atol=2e-4),
             "bf16-autocast": dict(rtol=6e-2, atol=6e-2)}


@st.composite
def core_cases(draw):
    kind = draw(st.sampled_from(KINDS))
    precision = draw(st.sampled_from(PRECISIONS))
    N, C, A = draw(st.integers(1, 10)), draw(st.integers(2, 6)), draw(st.integers(1, 5))
    steps = draw(st.integers(1, 3))
    ignore_index = draw(st.sampled_from([-100, -1, C + 3]))
    batches = []
    for _ in range(steps):
        pattern = draw(st.sampled_from(["random", "single-class", "some-ignored", "all-ignored"]))
        if pattern == "single-class":
            labels = [draw(st.integers(0, C - 1))] * N
        else:
            labels = draw(st.lists(st.integers(0, C - 1), min_size=N, max_size=N))
        if pattern == "some-ignored":
            mask = draw(st.lists(st.booleans(), min_size=N, max_size=N))
            labels = [ignore_index if m else y for y, m in zip(labels, mask)]
        elif pattern == "all-ignored":
            labels = [ignore_index] * N
        batches.append(labels)
    return dict(
        kind=kind, precision=precision, N=N, C=C, A=A, batches=batches,
        ignore_index=ignore_index, seed=draw(st.integers(0, 2**16)),
        ratio=draw(st.sampled_from([0.0, 0.3, 1.0, 2.5])),
        reduction=draw(st.sampled_from(["mean", "sum", "none"])),
        validate=draw(st.booleans()) if precision != "bf16-autocast" else True,
    )


def _reference_loss(logits, weight, target, covariance, ratio, kind, reduction, ignore_index):
    valid = target != ignore_index
    per_sample = logits.sum(1) * 0.0  # ignored samples: 0, with a (zero) gradient
    if bool(valid.any()):
        bound = reference.isda_bound(logits[valid], weight, target[valid], covariance, ratio, kind)
        per_sample = per_sample.index_put((valid.nonzero().squeeze(1),), bound)
    if reduction == "none":
        return per_sample
    if reduction == "sum":
        return per_sample.sum()
    return per_sample.sum() / valid.sum()  # nan when every sample is ignored, as F.cross_entropy


def _criterion(case):
    dtype = torch.float64 if case["precision"] == "float64" else torch.float32
    return ISDALoss(case["A"], case["C"], lambda0=case["ratio"], kind=case["kind"],
                    constant_lambda=True, reduction=case["reduction"],
                    ignore_index=case["ignore_index"], dtype=dtype, rank=case["A"],
                    validate=case["validate"])


def _leaves(case, generator):
    dtype = torch.float64 if case["precision"] == "float64" else torch.float32
    features = torch.randn(case["N"], case["A"], generator=generator, dtype=dtype)
    weight = torch.randn(case["C"], case["A"], generator=generator, dtype=dtype)
    bias = torch.randn(case["C"], generator=generator, dtype=dtype)
    return [t.requires_grad_() for t in (features, weight, bias)]


def _step(criterion, case, features, weight, bias, target):
    if case["precision"] == "bf16-autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = F.linear(features, weight, bias)
            loss = criterion(features, logits, target, weight)
        return loss, logits
    logits = F.linear(features, weight, bias)
    return criterion(features, logits, target, weight), logits


@fuzz_settings(250)
@given(case=core_cases())
def test_core_loss_and_gradients_equal_the_float64_brute_force(case):
    count("core")
    kind = "full" if case["kind"] == "lowrank" else case["kind"]  # rank = A: exactly full
    generator = torch.Generator().manual_seed(case["seed"])
    criterion = _criterion(case)
    seen_x, seen_y = [], []
    for labels in case["batches"]:
        target = torch.tensor(labels)
        features, weight, bias = _leaves(case, generator)
        loss, logits = _step(criterion, case, features, weight, bias, target)
        valid = target != case["ignore_index"]
        seen_x.append(features.detach().double()[valid])  # as given, also under autocast
        seen_y.append(target[valid])
        covariance = reference.class_covariance(kind, torch.cat(seen_x), torch.cat(seen_y),
                                                case["C"])
        x64, w64, b64 = (t.detach().double().requires_grad_() for t in (features, weight, bias))
        want = _reference_loss(F.linear(x64, w64, b64), w64, target, covariance, case["ratio"],
                               kind, case["reduction"], case["ignore_index"])
        tol = TOLERANCE[case["precision"]]
        torch.testing.assert_close(loss.double(), want, equal_nan=True, **tol)
        assert logits.requires_grad
        if not bool(torch.isfinite(want).all()):
            continue  # every sample ignored with reduction="mean": nan, no gradient to compare
        got = torch.autograd.grad(loss.sum(), (features, weight, bias))
        expected = torch.autograd.grad(want.sum(), (x64, w64, b64))
        for g, e in zip(got, expected):
            torch.testing.assert_close(g.double(), e, **tol)
        assert int(criterion.estimator.count.sum()) == sum(len(y) for y in seen_y)


@st.composite
def bad_core_cases(draw):
    case = draw(core_cases())
    case["precision"] = draw(st.sampled_from(["float64", "float32"]))
    case["validate"] = True
    problem = draw(st.sampled_from(["label-too-large", "negative-label", "nan", "inf"]))
    return case, problem, draw(st.integers(0, case["N"] - 1))


@fuzz_settings(100)
@given(bad=bad_core_cases())
def test_core_bad_input_raises_a_clear_error_and_keeps_the_statistics(bad):
    count("core-errors")
    case, problem, where = bad
    generator = torch.Generator().manual_seed(case["seed"])
    criterion = _criterion(case)
    features, weight, bias = _leaves(case, generator)  # one good step first
    _step(criterion, case, features, weight, bias, torch.tensor(case["batches"][0]))
    before = {k: v.clone() for k, v in criterion.state_dict().items()}
    features, weight, bias = _leaves(case, generator)
    target = torch.randint(0, case["C"], (case["N"],), generator=generator)
    if problem == "label-too-large":
        target[where], match = case["C"], r"labels must lie in \[0, \d+\)"
    elif problem == "negative-label":
        target[where] = -2 if case["ignore_index"] != -2 else -3
        match = r"labels must lie in \[0, \d+\)"
    else:
        with torch.no_grad():
            features[where, 0] = float(problem)
        match = "NaN or Inf"
    with pytest.raises(ValueError, match=match) as info:
        _step(criterion, case, features, weight, bias, target)
    assert "\n" not in str(info.value)
    after = criterion.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key


# --------------------------------------------------------------------------- the command line

#: Odd values: each makes the command invalid on its own (``{file}``: an existing file,
#: ``{notjson}``: a file that is not JSON, ``{missing}``: a path that does not exist).
ODD = {
    "both": [
        ["--lambda0", "inf"], ["--lambda0", "nan"], ["--lambda0", "-1"], ["--lambda0", "x"],
        ["--lr", "nan"], ["--lr", "-0.1"], ["--lr", "inf"], ["--weight-decay", "nan"],
        ["--momentum", "-inf"], ["--epochs", "0"], ["--epochs", "-2"], ["--epochs", "1.5"],
        ["--batch-size", "0"], ["--kind", "bogus"], ["--dataset", "no_such_dataset"],
        ["--model", "no_such_model"], ["--data-dir", "{missing}", "--dataset", "fashion_mnist"],
        ["--dataset-kwargs", "train_size=-3"], ["--model-kwargs", "=3"], ["--gamma", "nan"],
        ["--preset", "no_such_preset"], ["--out", "{file}"], ["--amp", "fp8"],
    ],
    "train": [
        ["--loss", "isda(lambda0=-1)"], ["--loss", "isda("], ["--loss", "no_such_loss"],
        ["--stop-after", "0"], ["--stop-after", "-1"], ["--resume", "--force"],
        ["--config", "{notjson}"], ["--config", "{missing}"], ["--seed", "x"],
    ],
    "compare": [
        ["--losses", "ce,isda(lambda0=-1)"], ["--losses", ",,"], ["--losses", "ce,no_such_loss"],
        ["--seeds", "0"], ["--seeds", "-1"], ["--seeds", "x"],
    ],
}

#: Valid options mixed in (never the same option as an odd value of the case).
GOOD = [["--epochs", "1"], ["--kind", "diagonal"], ["--lambda0", "0.5"], ["--batch-size", "16"],
        ["--lr", "0.05"], ["--quiet"], ["--device", "cpu"], ["--model-kwargs", "width=4"],
        ["--constant-lambda"], ["--weight-decay", "0"], ["--threads", "1"]]


@st.composite
def odd_command_lines(draw):
    command = draw(st.sampled_from(["train", "compare"]))
    pool = ODD["both"] + ODD[command]
    odd = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=2, unique_by=tuple))
    taken = {word for option in odd for word in option if word.startswith("--")}
    good = [g for g in GOOD if g[0] not in taken]
    extra = draw(st.lists(st.sampled_from(good), max_size=3, unique_by=tuple)) if good else []
    if command == "train":
        extra = [g for g in extra if g != ["--epochs", "1"]] + [["--epochs", "1"]] * (
            "--epochs" not in taken)
    else:
        extra = extra + [["--seeds", "1"]] * ("--seeds" not in taken)
    groups = draw(st.permutations(odd + extra))
    return [command, *(word for group in groups for word in group)]


def _run_cli(argv):
    from torch_isda.cli import main

    try:
        return main(argv)
    except SystemExit as exc:  # argparse
        return exc.code


def _check_fails_in_one_line(argv, tmp_path_factory, capsys):
    files = tmp_path_factory.mktemp("inputs")
    (files / "file").write_text("x")
    (files / "notjson").write_text("notjson")
    values = {"{file}": str(files / "file"), "{notjson}": str(files / "notjson"),
              "{missing}": str(files / "missing")}
    argv = [values.get(word, word) for word in argv]
    work = tmp_path_factory.mktemp("cwd")
    here = os.getcwd()
    os.chdir(work)
    try:
        code = _run_cli(argv)
    finally:
        os.chdir(here)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, (argv, captured.err[-2000:])
    assert len(lines) == 1 and "Traceback" not in captured.err, (argv, captured.err[-2000:])
    assert lines[0].startswith(f"isda {argv[0]}: error: "), lines
    assert sorted(os.listdir(work)) == [], (argv, os.listdir(work))
    assert sorted(os.listdir(files)) == ["file", "notjson"]


@fuzz_settings(100)
@given(argv=odd_command_lines())
def test_odd_command_lines_fail_in_one_line_and_leave_nothing(argv, tmp_path_factory, capsys):
    count("command line")
    _check_fails_in_one_line(argv, tmp_path_factory, capsys)


@pytest.mark.parametrize("argv", [
    [command, *odd, *(["--seeds", "1"] if command == "compare" and "--seeds" not in odd else [])]
    for command in ("train", "compare") for odd in ODD["both"] + ODD[command]],
    ids=lambda argv: " ".join(argv))
def test_each_odd_value_alone_fails_in_one_line(argv, tmp_path_factory, capsys):
    """Every odd value at least once, with nothing else to stop the command first."""
    count("command line (each alone)")
    _check_fails_in_one_line([*argv, "--epochs", "1"] if "--epochs" not in argv else argv,
                             tmp_path_factory, capsys)

