"""The harness's SyncBatchNorm folds the global batch into its running statistics on the
device: no host read per step (issue 24 item 13), the same statistics as BatchNorm over the
concatenated batch. Two identical ranks are emulated by an all-reduce that doubles."""

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import torch_isda.train.sync_batchnorm as sbn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _syncs import count_syncs  # noqa: E402


def converted(momentum):
    module = sbn.convert_sync_batchnorm(nn.BatchNorm2d(3, momentum=momentum))
    assert isinstance(module, sbn.SyncBatchNorm)
    module.process_group = object()  # a group of the emulated world
    return module


@pytest.fixture
def two_identical_ranks(monkeypatch):
    monkeypatch.setattr(sbn.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(sbn.dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(sbn.dist, "all_reduce", lambda t, group=None: t.mul_(2))


@pytest.mark.parametrize("momentum", [0.1, None])
def test_running_statistics_on_the_device_equal_batchnorm_of_the_global_batch(two_identical_ranks, momentum):
    torch.manual_seed(0)
    ref = nn.BatchNorm2d(3, momentum=momentum)
    sync = converted(momentum)
    for _ in range(3):
        x = torch.randn(4, 3, 5, 5, dtype=torch.float64).float()
        out = sync(x)
        expected = ref(torch.cat([x, x]))  # the global batch of two identical ranks
        torch.testing.assert_close(out, expected[:4], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sync.running_mean, ref.running_mean, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(sync.running_var, ref.running_var, rtol=1e-6, atol=1e-7)
    assert int(sync.num_batches_tracked) == 3


def test_a_training_step_reads_nothing_back(two_identical_ranks):
    sync = converted(None)
    x = torch.randn(4, 3, 5, 5)
    assert count_syncs(lambda: sync(x)).total == 0
