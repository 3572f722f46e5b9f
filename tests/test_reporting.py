"""The reporting rules: the final-error window, the bold-best rule, plurals."""

import math

import pytest

from torch_isda.train.metrics import summarize
from torch_isda.train.reporting import clear_best, final_window, plural, window_text


@pytest.mark.parametrize("epochs, expected", [(1, 1), (9, 1), (10, 1), (30, 3), (100, 10),
                                              (300, 10)])
def test_default_window_is_paper_10_capped_at_a_tenth(epochs, expected):
    assert final_window(epochs) == expected


def test_explicit_window_and_its_errors():
    assert final_window(30, 10) == 10
    with pytest.raises(ValueError, match="at least 1"):
        final_window(30, 0)
    with pytest.raises(ValueError, match="exceeds the run's 5 epochs"):
        final_window(5, 6)


def test_short_run_final_error_is_not_the_whole_run():
    # the case: 10 epochs, a 58% first epoch; the final error must follow the curve end
    errors = [58.0, 20.0, 10.0, 6.0, 4.0, 3.0, 2.8, 2.5, 2.4, 2.3]
    rows = [{"epoch": i + 1, "test_error": e} for i, e in enumerate(errors)]
    s = summarize(rows, final_window(len(rows)))
    assert s["final_error"] == 2.3 and s["final_error_epochs"] == 1


def test_window_text_and_plural():
    assert window_text(1) == "last epoch" and window_text(3) == "last 3 epochs"
    assert plural(1, "seed") == "1 seed" and plural(2, "epoch") == "2 epochs"


def test_clear_best_marks_only_differences_beyond_one_std():
    assert clear_best([1.0, 2.0], [0.2, 0.3]) == 0
    assert clear_best([1.0, 1.2], [0.3, 0.1]) is None          # within one std
    assert clear_best([1.0, 2.0], [None, None]) is None        # a single seed: no spread
    assert clear_best([50.0, 60.0], [1.0, 1.0], lower_is_better=False) == 1
    assert clear_best([1.0, 3.0, 1.5], [0.1, 0.1, 0.1]) == 0
    assert clear_best([1.0, 3.0, 1.05], [0.1, 0.1, 0.1]) is None
    assert clear_best([1.0, math.nan], [0.1, 0.1]) is None
