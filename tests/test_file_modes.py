"""Outputs respect the umask as ``open()`` would (``0o666 & ~umask``): a run's checkpoint,
metrics, tables and curves, an exported backbone, downloaded files; and the CPU benchmark
script runs the project's virtualenv when there is one."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from data_fixtures import serve_directory
from torch_isda.utils.file_mode import new_file_mode
from torch_isda.train.checkpoint import atomic_write_json, save_checkpoint

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_atomic_writes_get_the_mode_open_gives(tmp_path, mask):
    with umask(mask):
        assert new_file_mode() == 0o666 & ~mask
        with open(tmp_path / "plain", "w"):
            pass
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        save_checkpoint({"w": 1}, tmp_path / "checkpoint.pt")
    assert mode(tmp_path / "a.json") == mode(tmp_path / "plain") == 0o666 & ~mask
    assert mode(tmp_path / "checkpoint.pt") == 0o666 & ~mask


def test_exported_backbone_is_readable_by_others(tmp_path):
    from torch_isda.cli.export_backbone import export_backbone
    from torch_isda.models.resnet_imagenet import ImageNetResNet

    with umask(0o022):
        export_backbone(ImageNetResNet((1, 1, 1, 1), 5), tmp_path / "backbone.pth", "torchvision")
    assert mode(tmp_path / "backbone.pth") == 0o644


def test_a_comparisons_files_are_readable_by_others(tmp_path, monkeypatch):
    from torch_isda.cli import main

    monkeypatch.chdir(tmp_path)
    with umask(0o022):
        assert main(["compare", "--losses", "ce,isda", "--seeds", "1", "--epochs", "1",
                     "--model-kwargs", "width=4", "--quiet", "--out", "cmp"]) == 0
    out = tmp_path / "cmp"
    names = ["table.md", "table.csv", "curves.png", "isda/seed0/checkpoint.pt",
             "isda/seed0/metrics.json", "isda/seed0/metrics.csv", "isda/seed0/config.json",
             "isda/seed0/result.json"]
    assert {name: oct(mode(out / name)) for name in names} == {name: "0o644" for name in names}


def test_downloaded_files_respect_the_umask(tmp_path):
    from torch_isda.data.download import download_file

    (tmp_path / "server").mkdir()
    (tmp_path / "server" / "f.bin").write_bytes(b"abc")
    with serve_directory(tmp_path / "server") as (url, _), umask(0o022):
        download_file(f"{url}/f.bin", tmp_path / "got" / "f.bin", progress=False)
    assert mode(tmp_path / "got" / "f.bin") == 0o644


def test_cpu_benchmark_script_defaults_to_the_projects_virtualenv(tmp_path):
    (tmp_path / "benchmarks").mkdir()
    shutil.copy(ROOT / "benchmarks" / "fashion_mnist_cpu.sh", tmp_path / "benchmarks")
    fake = tmp_path / ".venv" / "bin" / "python"
    fake.parent.mkdir(parents=True)
    fake.write_text(f'#!/bin/sh\necho "$@" >> "{tmp_path}/calls"\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    env.update(SEEDS="0", JOBS="1", EPOCHS="1", OUT=str(tmp_path / "out"))
    done = subprocess.run(["bash", "benchmarks/fashion_mnist_cpu.sh"], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert [c.split()[:3] for c in calls[:2]] == [["-m", "torch_isda.cli", "train"]] * 2
    assert calls[2].split()[:3] == ["-m", "torch_isda.cli", "compare"]
