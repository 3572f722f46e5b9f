"""``isda tune``: several workers on one SQLite study lose and duplicate no trial, a killed
worker's trial is failed and retried from its checkpoint, the study resumes, and one clear
message per bad input (docs/scale.md)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from optuna.trial import TrialState  # noqa: E402

from torch_isda.cli import main  # noqa: E402
from torch_isda.train.config import TrainConfig  # noqa: E402
from torch_isda.train.tune.storage import default_storage  # noqa: E402
from torch_isda.train.tune.study import TuneSpec, load_study, run_worker  # noqa: E402

#: digits, one epoch per trial, 300 of the training images held out
TUNE = ["tune", "--epochs", "1", "--val-size", "300", "--threads", "1"]


def _study(out: Path, name: str = "isda-tune"):
    return optuna.load_study(study_name=name, storage=default_storage(out))


def test_two_workers_on_one_sqlite_study_lose_and_duplicate_no_trial(tmp_path, capsys):
    out = tmp_path / "tune"
    assert main([*TUNE, "--param", "lambda0=log:0.05:10", "--trials", "6", "--jobs", "2",
                 "--pruner", "none", "--out", str(out)]) == 0
    trials = _study(out).get_trials()
    # a worker stops once 6 trials are complete or running: at most one extra per other worker
    assert 6 <= len(trials) <= 7
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    run_dirs = [t.user_attrs["run_dir"] for t in trials]
    assert len(set(run_dirs)) == len(trials)
    for trial in trials:  # every trial is a normal run, evaluated on the validation split
        run = Path(trial.user_attrs["run_dir"])
        assert (run / "result.json").is_file()
        config = TrainConfig.load(run / "config.json")
        assert config.dataset_kwargs["val_size"] == 300
        assert config.lambda0 == pytest.approx(trial.params["lambda0"])
    rows = (out / "trials.csv").read_text().splitlines()
    assert rows[0] == "trial,state,lambda0,val_error,epochs,run_dir" and len(rows) == len(trials) + 1
    best = min(trials, key=lambda t: t.value)
    printed = capsys.readouterr().out
    assert f"best: trial {best.number}," in printed
    assert (out / "tune.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the final comparison on the full training set with the chosen value
    cmp_out = tmp_path / "cmp"
    assert main(["compare", "--tuned", str(out), "--losses", "isda", "--seeds", "1",
                 "--epochs", "1", "--out", str(cmp_out), "--quiet"]) == 0
    config = TrainConfig.load(cmp_out / "isda" / "seed0" / "config.json")
    assert config.lambda0 == pytest.approx(best.params["lambda0"])
    assert "val_size" not in config.dataset_kwargs


def test_the_study_resumes_and_a_changed_search_space_is_refused(tmp_path, capsys):
    out = tmp_path / "grid"
    grid = ["--sampler", "grid", "--param", "lambda0=0.25,1,4", "--out", str(out)]
    assert main([*TUNE, *grid, "--trials", "2"]) == 0
    first = [(t.number, t.params, t.value) for t in _study(out).get_trials()]
    assert len(first) == 2
    assert main([*TUNE, *grid, "--trials", "3"]) == 0  # continues: one more trial
    trials = _study(out).get_trials()
    assert [(t.number, t.params, t.value) for t in trials[:2]] == first
    assert sorted(t.params["lambda0"] for t in trials) == [0.25, 1.0, 4.0]
    capsys.readouterr()
    assert main([*TUNE, "--param", "lambda0=0.5,1", "--sampler", "grid", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "was created with the search space --param lambda0=0.25,1.0,4.0" in err
    assert main([*TUNE, *grid, "--lr", "0.3"]) == 2
    assert "other training options (lr:" in capsys.readouterr().err


def test_a_killed_workers_trial_is_failed_and_retried_from_its_checkpoint(tmp_path):
    out = tmp_path / "killed"
    spec = TuneSpec(base=TrainConfig(epochs=6, threads=1), params=["lambda0=0.5,1"],
                    out=str(out), storage=default_storage(out), trials=1, sampler="grid",
                    pruner="none", val_size=300, heartbeat=1, grace=2)
    load_study(spec)
    (out / "tune.json").write_text(__import__("json").dumps(spec.to_dict()))
    worker = subprocess.Popen([sys.executable, "-m", "torch_isda.train.tune.worker",
                               str(out / "tune.json")], env={**os.environ, "OMP_NUM_THREADS": "1"})
    checkpoint = out / "trials" / "trial0" / "checkpoint.pt"
    deadline = time.monotonic() + 240
    while not checkpoint.is_file() and worker.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert worker.poll() is None and checkpoint.is_file()
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert [t.state for t in _study(out).get_trials()] == [TrialState.RUNNING]
    time.sleep(3)  # past the grace period
    study = run_worker(replace(spec))
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].params == trials[0].params
    assert trials[1].user_attrs["run_dir"] == str(out / "trials" / "trial0")  # resumed there
    assert not any(t.state == TrialState.RUNNING for t in trials)


def test_bad_tune_inputs_get_one_clear_message(tmp_path, capsys):
    out = ["--out", str(tmp_path / "t")]
    assert main([*TUNE, "--param", "lamda0=log:0.05:10", *out]) == 2
    assert "unknown --param 'lamda0': not an option of isda train" in capsys.readouterr().err
    assert main([*TUNE, "--param", "lambda0=log:0.05:10", "--storage",
                 "postgresql://u@localhost/db", *out]) == 2
    assert "database driver 'psycopg2' is not installed; pip install psycopg2-binary" in (
        capsys.readouterr().err)
    assert main([*TUNE, "--param", "lambda0=log:0.05:10", "--sampler", "grid", *out]) == 2
    assert "--sampler grid needs lists of values, not ranges, for lambda0" in capsys.readouterr().err
    assert main(["tune", "--param", "lambda0=1,2", *out]) == 2
    assert "isda tune needs --val-size M" in capsys.readouterr().err
    assert main([*TUNE, "--param", "lambda0=1,2", "--jobs", "0", *out]) == 2
    assert "--jobs must be a positive number" in capsys.readouterr().err
    assert main(["compare", "--tuned", str(tmp_path / "none"), "--quiet"]) == 2
    assert "--tuned: no best.json" in capsys.readouterr().err


def test_the_search_never_reads_the_test_set(tmp_path, monkeypatch, capsys):
    """Fashion-MNIST files whose test images are garbage: reading them would fail, so a
    search that finishes never read them (chmod cannot hide a file from root)."""
    import torch_isda.data.mnist as mnist_mod
    from data_fixtures import MNIST_FILE_NAMES, make_mnist_files

    monkeypatch.setattr(mnist_mod, "SYSTEM_ROOTS", ())
    folder = tmp_path / "data" / "fashion_mnist"
    make_mnist_files(folder, n_train=120, n_test=20)
    for key in ("test_images", "test_labels"):
        (folder / MNIST_FILE_NAMES[key]).write_bytes(b"unreadable: not an IDX file")
    common = ["--dataset", "fashion_mnist", "--data-dir", str(tmp_path / "data"), "--model",
              "resnet8", "--model-kwargs", "in_channels=1", "--epochs", "1", "--threads", "1",
              "--batch-size", "20"]
    out = tmp_path / "tune"
    assert main(["tune", *common, "--val-size", "30", "--param", "lambda0=0.5,1", "--sampler",
                 "grid", "--trials", "2", "--out", str(out)]) == 0
    trials = _study(out).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    # the same data with the test set: the reading fails, as it would have in the search
    capsys.readouterr()
    assert main(["train", *common, "--out", str(tmp_path / "train"), "--quiet"]) == 2
    assert "t10k-images-idx3-ubyte.gz" in capsys.readouterr().err


def test_a_journal_file_study_and_its_stale_trials(tmp_path):
    """``--storage journal:PATH`` (no database): a study runs on it, and a running trial
    whose heartbeat stopped is failed and its parameters enqueued again."""
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    from torch_isda.train.tune.storage import HEARTBEAT_ATTR, fail_stale_journal_trials

    out = tmp_path / "journal"
    journal = f"journal:{out / 'journal.log'}"
    assert main([*TUNE, "--param", "lambda0=0.5,1", "--sampler", "grid", "--trials", "1",
                 "--storage", journal, "--out", str(out)]) == 0
    storage = JournalStorage(JournalFileBackend(str(out / "journal.log")))
    study = optuna.load_study(study_name="isda-tune", storage=storage)
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE]
    dead = study.ask({"lambda0": optuna.distributions.CategoricalDistribution([0.5, 1.0])})
    dead.set_user_attr(HEARTBEAT_ATTR, time.time() - 60)
    alive = study.ask({"lambda0": optuna.distributions.CategoricalDistribution([0.5, 1.0])})
    alive.set_user_attr(HEARTBEAT_ATTR, time.time())
    assert fail_stale_journal_trials(study, storage, grace=30) == [dead.number]
    states = {t.number: t.state for t in study.get_trials()}
    assert states[dead.number] == TrialState.FAIL and states[alive.number] == TrialState.RUNNING
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].user_attrs["retry_of"] == dead.number
    assert waiting[0].system_attrs["fixed_params"] == {"lambda0": dead.params["lambda0"]}


def test_workers_as_submitit_jobs(tmp_path):
    """``--executor debug --jobs 2``: two worker jobs (run in turn here) share the study."""
    out = tmp_path / "jobs"
    assert main([*TUNE, "--param", "lambda0=0.5,1", "--sampler", "grid", "--trials", "2",
                 "--executor", "debug", "--jobs", "2", "--out", str(out)]) == 0
    assert [t.state for t in _study(out).get_trials()] == [TrialState.COMPLETE] * 2
    assert len(list((out / "submitit").glob("*_log.out"))) == 2
