"""The documentation site builds without warnings, and the commands it shows exist.

* ``mkdocs build --strict`` of ``mkdocs.yml`` (README as home page, the docs/ pages, the API
  reference generated from the docstrings by mkdocstrings): any warning (a broken link or
  anchor, a missing page, an object mkdocstrings cannot find) fails. Skipped, with the reason,
  when the ``docs`` extra (mkdocs, mkdocstrings[python]) is not installed.
* every ``isda ...`` / ``torchrun ... -m torch_isda.train ...`` command line in a code block
  of README.md or docs/ is parsed by the real ``isda`` argument parser, so the pages cannot
  show a subcommand or option that does not exist.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _missing_docs_tools() -> list[str]:
    missing = [name for name in ("mkdocs", "mkdocstrings", "pymdownx")
               if importlib.util.find_spec(name) is None]
    if importlib.util.find_spec("mkdocstrings_handlers") is None or \
            importlib.util.find_spec("mkdocstrings_handlers.python") is None:
        missing.append("mkdocstrings-python")
    return missing


def test_mkdocs_build_strict(tmp_path):
    missing = _missing_docs_tools()
    if missing:
        pytest.skip(f"documentation tools not installed ({', '.join(missing)}): "
                    f"pip install -e '.[docs]' to build the site")
    site = tmp_path / "site"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
         str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - t0
    log = proc.stdout + proc.stderr
    problems = [line for line in log.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert proc.returncode == 0, (
        "mkdocs build --strict failed:\n" + ("\n".join(problems) or log[-4000:]))
    # the home page is the README, with its docs/ links pointing at the site's pages
    home = (site / "index.html").read_text(encoding="utf-8")
    assert "Quick start: ISDA in an existing training loop" in home
    assert 'href="benchmarks/#loss-speed"' in home and 'href="docs/' not in home
    # the API reference was generated from the docstrings
    api = (site / "api" / "core" / "index.html").read_text(encoding="utf-8")
    assert "torch_isda.CovarianceEstimator" in api and "Online estimate" in api
    assert ":class:" not in api  # reST roles converted by tools/griffe_rst.py
    assert (site / "reproduce" / "table2-cifar" / "index.html").is_file()
    assert seconds < 120, f"the documentation build took {seconds:.0f} s"


def test_rst_to_markdown():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from griffe_rst import rst_to_markdown
    finally:
        sys.path.remove(str(ROOT / "tools"))
    text = """See :class:`~torch_isda.ISDALoss`, :func:`torch_isda.attach` and
:meth:`load <torch.nn.Module.load_state_dict>`. Usage::

    x = 1

=====  ======  ================
name   epochs  note
=====  ======  ================
a      10      first line
               continued
b      20      ``code``
=====  ======  ================
"""
    out = rst_to_markdown(text)
    assert "See `ISDALoss`, `torch_isda.attach` and\n`load`. Usage:\n\n    x = 1" in out
    assert "| name | epochs | note |\n|---|---|---|\n" in out
    assert "| a | 10 | first line continued |" in out and "| b | 20 | ``code`` |" in out


# ---------------------------------------------------------------------------- commands


def _code_blocks(text: str):
    fence, lines = None, []
    for line in text.splitlines():
        stripped = line.strip()
        if fence is None:
            match = re.match(r"^(```+|~~~+)", stripped)
            if match:
                fence, lines = match.group(1), []
        elif stripped.startswith(fence):
            yield lines
            fence = None
        else:
            lines.append(line)


def _commands(path: Path):
    """``(line number hint, argv for the isda parser)`` of every isda command line."""
    for block in _code_blocks(path.read_text(encoding="utf-8")):
        joined: list[str] = []
        for line in block:
            if joined and joined[-1].endswith("\\"):
                joined[-1] = joined[-1][:-1] + " " + line.strip()
            else:
                joined.append(line.strip())
        for line in joined:
            for segment in re.split(r"&&|;", line):
                try:
                    words = shlex.split(segment, comments=True)
                except ValueError:
                    continue
                if not words:
                    continue
                head = words[0]
                if head == "isda" or head.endswith("/isda"):
                    yield segment.strip(), words[1:]
                elif head == "torchrun" or words[:3] in (["python", "-m", "torch_isda.train"],
                                                         ["python3", "-m", "torch_isda.train"]):
                    if "torch_isda.train" in words:
                        rest = words[words.index("torch_isda.train") + 1:]
                        yield segment.strip(), ["train", *rest]


def _doc_commands():
    found = []
    for path in DOC_FILES:
        for text, argv in _commands(path):
            if "..." in argv or "…" in argv or any(a.startswith("[") for a in argv):
                continue  # an elided example (`isda train ...`) or a usage synopsis ([--opt])
            found.append(pytest.param(argv, id=f"{path.relative_to(ROOT)}: {text[:70]}"))
    return found


DOC_COMMANDS = _doc_commands()


def test_docs_show_commands():
    assert len(DOC_COMMANDS) >= 30  # the reproduction pages alone hold more


@pytest.mark.parametrize("argv", DOC_COMMANDS)
def test_documented_command_parses(argv, capsys):
    from torch_isda.cli import build_parser

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        if exc.code == 0:  # --help, --version
            return
        err = capsys.readouterr().err
        pytest.fail(f"`isda {' '.join(argv)}` is not a valid command line (exit {exc.code}):\n{err}")
    assert not argv or args.command == argv[0]


def test_table5_page_follows_appendix_c():
    """ResNet-110 / CIFAR-100 rows: DisturbLabel rate 0.1, "+ Dropout" rows with block
    dropout 0.3 in the model (not the feature-dropout modifier)."""
    page = ROOT / "docs" / "reproduce" / "table5-baselines.md"
    r110 = [argv for _, argv in _commands(page)
            if "resnet110" in argv and argv[argv.index("--dataset") + 1] == "cifar100"]
    assert len(r110) == 2
    losses = [argv[argv.index("--losses") + 1].split(",") for argv in r110]
    assert "ce+disturb_label(rate=0.1)" in losses[0]
    assert not any("dropout" in spec for specs in losses for spec in specs)
    dropout = r110[1]
    assert losses[1] == ["ce", "isda"]
    assert dropout[dropout.index("--model-kwargs") + 1] == "dropout=0.3"
    assert "--model-kwargs" not in r110[0]
