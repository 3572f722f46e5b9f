"""Multi-process training (torch_isda.train.parallel) on the CPU with gloo.

One spawned 2-rank session runs every multi-process scenario (process start-up
dominates the cost): a 2-epoch classification run with --sync-bn interrupted after epoch
1 and resumed, a run with --isda-sync off, an imagefolder run, a batch size the world size
does not divide, a semi-supervised run (temporal ensembling + ISDA) and a segmentation
run. The parent compares with 1-process runs of the same global batches. A torchrun
launch whose rank 1 fails (a raising callback, tests/ddp_fail_worker.py) checks that a
failing rank ends the run.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from torch_isda import CovarianceEstimator
from torch_isda.cli import main
from torch_isda.train import TrainConfig, train, train_distributed
from torch_isda.train.checkpoint import load_checkpoint
from torch_isda.train.parallel import (
    GlobalBatchShards,
    check_distributed_config,
    choose_backend,
    shard_bounds,
)

WORLD = 2
#: digits_cnn with synchronized BatchNorm (the BN statistics of the global batch, as in one
#: process; without --sync-bn each rank normalizes its half-batch and equality is lost), no
#: dropout: the 2-rank run equals the 1-process run up to float rounding. The last batch of
#: an epoch (1257 % 128 = 105) splits 53/52, exercising the uneven-shard loss weights. Not
#: every trajectory is well conditioned: with batch 64 and seed 1, a 1e-6 relative change
#: of the loss alone (in one process) grows to 1e-3 in the parameters within 2 epochs.
BASE = dict(dataset="digits", model="digits_cnn", loss="isda", epochs=2, seed=1, batch_size=128,
            threads=1, sync_bn=True, dist_timeout=120.0)


def SEMI_CFG(tmp, name: str) -> TrainConfig:
    """Temporal ensembling + ISDA, 1 epoch of 5 steps of 32 labeled + 256 unlabeled digits."""
    return TrainConfig(semi="temporal-ensembling", labels=100, labeled_batch_size=32,
                       unlabeled_batch_size=256, epochs=1, seed=1, threads=1, sync_bn=True,
                       dist_timeout=120.0, out=os.path.join(tmp, name), data_dir=str(tmp))


def SEG_CFG(tmp, name: str) -> TrainConfig:
    """Tiny synthetic segmentation: 2 steps of 8 images of 32 x 32 (both heads' ISDA); no
    dropout (each rank draws its own masks) and SyncBatchNorm: one process up to rounding."""
    return TrainConfig(dataset="synthetic_segmentation", batch_size=8, eval_batch_size=8,
                       model_kwargs={"dropout": 0.0},
                       epochs=1, seed=1, threads=1, sync_bn=True, dist_timeout=120.0,
                       dataset_kwargs=dict(num_train=16, num_test=8, image_size=32),
                       out=os.path.join(tmp, name), data_dir=str(tmp))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, tmp: str) -> None:
    """One rank: every multi-process scenario; results saved to ``tmp/rank<r>.pt``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    inputs, estimators, owners = [], [], []

    def recording(original):  # what the harness feeds the estimator (valid labels only)
        def record(self, features, labels, *args, **kwargs):
            keep = (labels >= 0) & (labels < self.num_classes)
            inputs.append((features.detach()[keep].clone(), labels[keep].clone()))
            if not any(e is self for e in estimators):
                estimators.append(self)
            owners.append(next(i for i, e in enumerate(estimators) if e is self))
            return original(self, features, labels, *args, **kwargs)
        return record

    for name in ("update", "update_scanned"):
        setattr(CovarianceEstimator, name, recording(getattr(CovarianceEstimator, name)))
    out: dict = {}
    cfg = TrainConfig(**BASE, out=os.path.join(tmp, "ddp"), data_dir=tmp)
    first = train_distributed(cfg, stop_after=1, quiet=True)
    resumed = train_distributed(cfg, resume=True, quiet=True)
    out.update(first=first["status"], resumed=resumed, inputs=inputs[:],
               estimator=estimators[-1].state_dict())
    inputs.clear()
    estimators.clear()
    off = TrainConfig(**{**BASE, "epochs": 1, "loss": "isda+center"}, isda_sync="off",
                      out=os.path.join(tmp, "off"), data_dir=tmp)
    train_distributed(off, quiet=True)
    out.update(off_inputs=inputs[:], off_estimator=estimators[-1].state_dict())
    folder = TrainConfig(dataset="imagefolder", data_dir=os.path.join(tmp, "folder"),
                         dataset_kwargs={"image_size": 16}, model="digits_cnn", preset="small_cnn",
                         epochs=1, batch_size=4, workers=0, threads=1, loss="ce",
                         out=os.path.join(tmp, "folder-run"))
    out["folder"] = train_distributed(folder, quiet=True)
    try:
        train_distributed(cfg.replace(batch_size=63, out=os.path.join(tmp, "bad")), quiet=True)
        out["bad_batch"] = ""
    except ValueError as err:
        out["bad_batch"] = str(err)
    inputs.clear()
    estimators.clear()
    out["semi"] = train_distributed(SEMI_CFG(tmp, "semi-ddp"), quiet=True)
    out.update(semi_inputs=inputs[:], semi_estimator=estimators[-1].state_dict(),
               semi_state=load_checkpoint(os.path.join(tmp, "semi-ddp", "checkpoint.pt")))
    inputs.clear()
    estimators.clear()
    owners.clear()
    out["seg"] = train_distributed(SEG_CFG(tmp, "seg-ddp"), quiet=True)
    out.update(seg_inputs=inputs[:], seg_owners=owners[:],
               seg_estimators=[e.state_dict() for e in estimators])
    torch.save(out, os.path.join(tmp, f"rank{rank}.pt"))
    dist.destroy_process_group()
    os._exit(0)  # skip the interpreter teardown (seconds with torch loaded); results are saved


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """The spawned 2-rank session and a 1-process run of the same configuration."""
    from data_fixtures import make_imagefolder

    tmp = tmp_path_factory.mktemp("ddp")
    make_imagefolder(tmp / "folder", n_train=4)  # 12 training, 6 validation images
    mp.start_processes(_worker, args=(_free_port(), str(tmp)), nprocs=WORLD, join=True,
                       start_method="spawn")
    ranks = [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    single = train(TrainConfig(**BASE, out=str(tmp / "single"), data_dir=str(tmp)), quiet=True)
    train(SEMI_CFG(tmp, "semi-single"), quiet=True)
    train(SEG_CFG(tmp, "seg-single"), quiet=True)
    return tmp, ranks, single


def test_covariance_statistics_are_global_on_every_rank(session):
    tmp, ranks, _ = session
    r0, r1 = ranks
    assert len(r0["inputs"]) == len(r1["inputs"]) == 2 * 10  # 2 epochs x 10 global batches
    # both ranks hold identical statistics ...
    for key, value in r0["estimator"].items():
        assert torch.equal(value, r1["estimator"][key]), key
    # ... equal to one estimator fed the concatenated global batches, step after step,
    # across the interruption (the resumed run restored the checkpointed statistics)
    reference = CovarianceEstimator(64, 10)
    for (x0, y0), (x1, y1) in zip(r0["inputs"], r1["inputs"]):
        assert abs(x0.shape[0] - x1.shape[0]) <= 1  # 64/64, and 53/52 for the last batch
        reference.update(torch.cat([x0, x1]), torch.cat([y0, y1]))
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(r0["estimator"][key], value, rtol=1e-6, atol=1e-6)
    assert int(r0["estimator"]["count"].sum()) == 2 * 1257  # every training sample, twice
    # and to the 1-process harness run that saw the same global batches
    single = load_checkpoint(tmp / "single" / "checkpoint.pt")["criterion"]
    for key in ("mean", "covariance", "count"):
        torch.testing.assert_close(r0["estimator"][key], single[f"isda.estimator.{key}"],
                                   rtol=1e-4, atol=1e-5)


def test_two_ranks_equal_one_process_and_resume(session):
    tmp, ranks, single = session
    assert ranks[0]["first"] == "stopped"
    resumed = ranks[0]["resumed"]
    assert resumed["status"] == "trained" and resumed["world_size"] == WORLD
    ddp = load_checkpoint(tmp / "ddp" / "checkpoint.pt")
    one = load_checkpoint(tmp / "single" / "checkpoint.pt")
    assert ddp["world_size"] == WORLD and len(ddp["rank_states"]) == WORLD
    # the parameters (and the SyncBatchNorm running statistics) of the 2-rank run,
    # interrupted and resumed, equal those of the uninterrupted 1-process run
    assert ddp["model"].keys() == one["model"].keys()
    for key, value in one["model"].items():
        torch.testing.assert_close(ddp["model"][key], value, rtol=0, atol=1e-5, msg=key)
    # global metrics, written once by rank 0
    for a, b in zip(ddp["metrics"], one["metrics"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
        assert a["test_loss"] == pytest.approx(b["test_loss"], abs=1e-5)
        assert a["test_error"] == pytest.approx(b["test_error"], abs=0.2)
    assert resumed["final_error"] == pytest.approx(single["final_error"], abs=0.2)
    assert sorted(p.name for p in (tmp / "ddp").iterdir()) == [
        "checkpoint.prev.pt", "checkpoint.pt", "config.json", "metrics.csv", "metrics.json",
        "result.json"]


def test_resume_needs_the_same_world_size(session):
    tmp, _, _ = session
    copy = tmp / "ddp_copy"
    shutil.copytree(tmp / "ddp", copy)
    (copy / "result.json").unlink()
    with pytest.raises(ValueError, match="written by a run with 2 process"):
        train(TrainConfig(**{**BASE, "epochs": 3}, out=str(copy), data_dir=str(tmp)),
              resume=True, quiet=True)


def test_isda_sync_off_keeps_per_rank_statistics(session):
    tmp, ranks, _ = session
    for rank in ranks:  # each rank folded only its own shards
        own = sum(int(y.shape[0]) for _, y in rank["off_inputs"])
        assert int(rank["off_estimator"]["count"].sum()) == own
    assert sum(int(r["off_estimator"]["count"].sum()) for r in ranks) == 1257
    assert not torch.equal(ranks[0]["off_estimator"]["mean"], ranks[1]["off_estimator"]["mean"])
    ckpt = load_checkpoint(tmp / "off" / "checkpoint.pt")
    states = [s["criterion"] for s in ckpt["rank_states"]]
    for rank, state in zip(ranks, states):  # every rank's statistics are checkpointed
        assert torch.equal(state["main.isda.estimator.count"], rank["off_estimator"]["count"])
    # the center loss's centers (a criterion parameter outside the DDP module) got the
    # averaged gradient: identical on both ranks, and trained
    centers = [state["modifiers.0.center.centers"] for state in states]
    assert torch.equal(centers[0], centers[1]) and centers[0].abs().sum() > 0


def test_imagefolder_uses_per_rank_loaders(session):
    tmp, ranks, _ = session
    result = ranks[0]["folder"]
    assert result["status"] == "trained" and result["world_size"] == WORLD
    wrong = result["last_error"] * 6 / 100  # the 6 validation images, sharded 3 + 3
    assert abs(wrong - round(wrong)) < 1e-9
    assert (tmp / "folder-run" / "metrics.json").is_file()


def test_world_size_must_divide_the_global_batch(session, capsys):
    _, ranks, _ = session
    for rank in ranks:
        assert "world size 2 does not divide the batch size 63" in rank["bad_batch"]
    with pytest.raises(ValueError, match="use a multiple of 4, e.g. 96, 100"):
        check_distributed_config(TrainConfig(batch_size=98), 4)
    # the launcher checks before starting any process
    assert main(["train", "--nproc", "2", "--batch-size", "63", "--quiet"]) == 2
    assert "does not divide the batch size 63" in capsys.readouterr().err


def test_sharding_helpers_and_backend_errors():
    assert [shard_bounds(10, r, 4) for r in range(4)] == [(0, 3), (3, 6), (6, 8), (8, 10)]
    from torch_isda.data import DeviceBatchIterator

    x, y = torch.arange(11.0).view(11, 1, 1, 1), torch.arange(11)
    shards = [GlobalBatchShards(DeviceBatchIterator(x, y, 4, shuffle=False), r, 2) for r in (0, 1)]
    got = [[b[1].tolist() for b in s] for s in shards]
    assert got == [[[0, 1], [4, 5], [8, 9]], [[2, 3], [6, 7], [10]]]
    tail = [GlobalBatchShards(DeviceBatchIterator(x, y, 5, shuffle=False), r, 2) for r in (0, 1)]
    assert len(tail[0]) == 2 and [len(list(s)) for s in tail] == [2, 2]  # 1-sample tail skipped
    expected = ("nccl backend needs CUDA" if dist.is_nccl_available()
                else "nccl backend is not available")
    with pytest.raises(ValueError, match=expected):
        choose_backend("nccl", torch.device("cpu"))
    assert choose_backend("auto", torch.device("cpu")) == "gloo"


def _global_references(ranks, key, states, owners=None):
    """Both ranks hold identical statistics; returns one estimator per criterion estimator
    fed the ranks' batches concatenated (rank 0's part first), as one process would."""
    r0, r1 = ranks
    for a, b in zip(r0[states], r1[states]):
        for name, value in a.items():
            assert torch.equal(value, b[name]), name
    assert len(r0[key]) == len(r1[key]) > 0
    tags = r0[owners] if owners else [0] * len(r0[key])
    references = [CovarianceEstimator(s["mean"].shape[1], s["mean"].shape[0],
                                      kind="full" if s["covariance"].dim() == 3 else "diagonal")
                  for s in r0[states]]
    for tag, (x0, y0), (x1, y1) in zip(tags, r0[key], r1[key]):
        references[tag].update(torch.cat([x0, x1]), torch.cat([y0, y1]))
    return references


def test_semi_supervised_statistics_are_global_and_equal_one_process(session):
    tmp, ranks, _ = session
    r0 = ranks[0]
    assert r0["semi"]["status"] == "trained" and r0["semi"]["world_size"] == WORLD
    # each rank folded its half of every labeled batch (16 of 32), all-gathered
    assert all(x.shape[0] == 16 for x, _ in r0["semi_inputs"])
    (reference,) = _global_references(
        [{**r, "states": [r["semi_estimator"]]} for r in ranks], "semi_inputs", "states")
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(r0["semi_estimator"][name], value, rtol=1e-6, atol=1e-6)
    # ... and equal those of the 1-process run of the same global batches
    single = load_checkpoint(tmp / "semi-single" / "checkpoint.pt")
    ddp = r0["semi_state"]
    assert torch.equal(ddp["criterion"]["isda.estimator.count"],
                       single["criterion"]["isda.estimator.count"])
    assert ddp["semi"]["labeled_seen"] == single["semi"]["labeled_seen"] == 5 * 32
    torch.testing.assert_close(ddp["criterion"]["isda.estimator.mean"],
                               single["criterion"]["isda.estimator.mean"], rtol=1e-4, atol=1e-5)
    # the temporal ensemble recorded the whole global batch on every rank
    method, one = ddp["semi"]["method"], single["semi"]["method"]
    assert torch.equal(method["count"], one["count"]) and int(method["count"].sum()) == 1257
    torch.testing.assert_close(method["ensemble"], one["ensemble"], rtol=1e-4, atol=1e-5)


def test_segmentation_statistics_are_global_and_equal_one_process(session):
    tmp, ranks, _ = session
    r0, r1 = ranks
    assert r0["seg"]["status"] == "trained" and r0["seg"]["world_size"] == WORLD
    assert r1["seg"]["miou_single"] == r0["seg"]["miou_single"]
    references = _global_references(ranks, "seg_inputs", "seg_estimators", "seg_owners")
    assert len(references) == 2  # the main and the auxiliary head
    for state, reference in zip(r0["seg_estimators"], references):
        for name, value in reference.state_dict().items():
            torch.testing.assert_close(state[name], value, rtol=1e-6, atol=1e-6)
    single = load_checkpoint(tmp / "seg-single" / "checkpoint.pt")["criterion"]
    ddp = load_checkpoint(tmp / "seg-ddp" / "checkpoint.pt")["criterion"]
    assert ddp.keys() == single.keys()
    for key, value in single.items():
        if key.endswith("count"):
            assert torch.equal(ddp[key], value), key
        elif key.endswith("mean"):
            torch.testing.assert_close(ddp[key], value, rtol=1e-4, atol=1e-5)


def test_failing_rank_ends_the_launch(tmp_path):
    """A torchrun launch whose rank 1 fails at its first step (a callback that raises)
    exits non-zero promptly: torchrun stops rank 0, which is blocked in a collective. (The
    torchrun subprocess is bounded so that a hang fails the test instead of blocking it.)"""
    from torch_isda.train.launch import torchrun_command

    cmd = torchrun_command(2, ["--help"])
    assert cmd[1:9] == ["-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                        "--nproc-per-node", "2", "-m"]
    out = tmp_path / "run"
    cfg = tmp_path / "config.json"
    cfg.write_text(TrainConfig(epochs=1, threads=1, dist_timeout=60.0, data_dir=str(tmp_path),
                               out=str(out)).to_json())
    worker = Path(__file__).with_name("ddp_fail_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*cmd[:8], str(worker), str(cfg)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:  # a hang: end the launch's process group, then fail
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the launch did not end after a rank failed")
    assert proc.returncode != 0, output
    assert "deliberate failure of rank 1 at step 0" in output
    assert not (out / "result.json").exists() and not (out / "checkpoint.pt").exists()
