import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def pytest_terminal_summary(terminalreporter):
    """The number of cases the fuzzing suite (tests/test_fuzz.py) ran, when it ran."""
    fuzz = sys.modules.get("test_fuzz")
    if fuzz is not None and fuzz.CASES:
        cases = ", ".join(f"{name} {count}" for name, count in sorted(fuzz.CASES.items()))
        terminalreporter.write_line(f"fuzzing cases run: {cases} (total {sum(fuzz.CASES.values())}, "
                                    f"in {fuzz.elapsed():.1f} s)")
