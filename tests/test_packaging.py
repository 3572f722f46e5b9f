"""The package as a user gets it: the sdist and the wheel of ``python -m build`` carry every
file of ``src/torch_isda`` (``py.typed`` included), the version comes from one place, the
``test`` extra does not pull the BigGAN package, CI installs the built wheel, and no file
of the repository carries a merge's conflict markers."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import torch_isda

tomllib = pytest.importorskip("tomllib")
pytest.importorskip("build")

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "torch_isda"


def _package_files() -> list[str]:
    """Every file of the package as a path relative to ``src`` (no caches)."""
    return sorted(p.relative_to(PACKAGE.parent).as_posix() for p in PACKAGE.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out),
                           str(ROOT)], capture_output=True, text=True, cwd=out)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def test_wheel_carries_every_package_file_and_the_entry_point(dist):
    version = torch_isda.__version__
    (wheel,) = dist.glob(f"torch_isda-{version}-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = zf.read(f"torch_isda-{version}.dist-info/entry_points.txt").decode()
        metadata = zf.read(f"torch_isda-{version}.dist-info/METADATA").decode()
    wanted = _package_files()
    assert "torch_isda/py.typed" in wanted
    assert [name for name in wanted if name not in names] == []
    assert re.search(r"^isda = torch_isda\.cli:main$", entry_points, re.M)
    assert f"\nVersion: {version}\n" in metadata
    assert "Provides-Extra: train" in metadata and "Provides-Extra: biggan" in metadata


def test_sdist_carries_every_package_file(dist):
    version = torch_isda.__version__
    (sdist,) = dist.glob(f"torch_isda-{version}.tar.gz")
    with tarfile.open(sdist) as tf:
        names = {name.split("/", 1)[1] for name in tf.getnames() if "/" in name}
    assert [name for name in _package_files() if f"src/{name}" not in names] == []
    assert {"pyproject.toml", "README.md"} <= names


def test_the_version_comes_from_one_place():
    project = _pyproject()
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "torch_isda.__version__"}
    assigned = [str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")
                if re.search(r"^__version__\s*=", p.read_text(), re.M)]
    assert assigned == ["src/torch_isda/__init__.py"]
    assert importlib.metadata.version("torch-isda") == torch_isda.__version__


def test_test_extra_does_not_pull_biggan_and_test_tools_are_in_it():
    extras = _pyproject()["project"]["optional-dependencies"]
    test = " ".join(extras["test"])
    assert "biggan" not in test and "pytorch-pretrained-biggan" not in test
    assert extras["biggan"] == ["pytorch-pretrained-biggan>=0.1.1"]
    assert "hypothesis" in test and "build" in test


def test_ci_installs_the_built_wheel_and_runs_the_smoke_job_from_it():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash tools/wheel_check.sh" in ci
    script = (ROOT / "tools" / "wheel_check.sh").read_text()
    assert "-m build" in script
    install = [line for line in script.splitlines() if "pip\" install" in line and "torch_isda" in line
               or "$wheel[train]" in line]
    assert install and all("-e " not in line for line in install)
    for step in ("isda\" --version", "isda\" compare --seeds 1 --epochs 1", "py.typed"):
        assert step in script, step


def test_readme_documents_installing_the_wheel_with_the_train_extra():
    readme = (ROOT / "README.md").read_text()
    assert "python -m build" in readme
    assert 'pip install "$(ls dist/torch_isda-*.whl)[train]"' in readme


def test_biggan_tests_skip_cleanly_without_the_package(tmp_path):
    """``pip install -e .[test]`` without the ``biggan`` extra: the BigGAN tests skip, the
    others in the file (image-folder neighbours, option checks) still run and pass."""
    code = ("import sys, pytest; sys.modules['pytorch_pretrained_biggan'] = None; "
            "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '-k', 'not end_to_end "
            "and not needs_an_imagefolder_run', "
            f"{str(ROOT / 'tests' / 'test_biggan.py')!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:]
    summary = done.stdout.strip().splitlines()[-1]
    assert re.search(r"\b[1-9]\d* passed", summary) and re.search(r"\b[1-9]\d* skipped", summary)
    assert "pytorch-pretrained-biggan" in done.stdout or "biggan" in done.stdout


CONFLICT_MARKER = re.compile(r"^(?:<{7}(?: |$)|={7}$|>{7}(?: |$)|\|{7}(?: |$))", re.M)


def test_no_file_carries_conflict_markers():
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    found = []
    for name in files.stdout.decode().split("\0"):
        path = ROOT / name
        if not name or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data[:8000]:
            continue  # binary (images)
        for match in CONFLICT_MARKER.finditer(data.decode("utf-8", "replace")):
            line = data[:match.start()].count(b"\n") + 1
            found.append(f"{name}:{line}: {match.group(0)!r}")
    assert found == []


def test_the_conflict_marker_check_finds_markers():
    text = "a\n" + "<" * 7 + " HEAD\nb\n" + "=" * 7 + "\nc\n" + ">" * 7 + " main\n" + "=" * 12 + "\n"
    assert [m.group(0) for m in CONFLICT_MARKER.finditer(text)] == ["<" * 7 + " ", "=" * 7,
                                                                    ">" * 7 + " "]
