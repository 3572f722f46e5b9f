"""The online estimator equals the statistics of all data seen (Eqs. 1-3)."""

import pytest
import torch

import reference
from torch_isda import CovarianceEstimator

KINDS = ["full", "diagonal", "shared", "identity"]


def stream(N=300, C=7, A=6, seed=0, missing=(3,)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, A, generator=g, dtype=torch.float64) * 2 + 1
    y = torch.randint(0, C, (N,), generator=g)
    # random batch sizes, some batches without some classes
    sizes, left = [], N
    while left:
        s = min(left, int(torch.randint(1, 40, (1,), generator=g)))
        sizes.append(s)
        left -= s
    batches = list(zip(torch.split(x, sizes), torch.split(y, sizes)))
    out = []
    for k, (xb, yb) in enumerate(batches):
        if k % 2 == 0:
            keep = ~torch.isin(yb, torch.tensor(missing))
            xb, yb = xb[keep], yb[keep]
        out.append((xb, yb))
    xs = torch.cat([b[0] for b in out])
    ys = torch.cat([b[1] for b in out])
    return out, xs, ys


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_online_statistics_equal_all_data(kind, seed):
    C, A = 7, 6
    batches, xs, ys = stream(C=C, A=A, seed=seed)
    est = CovarianceEstimator(A, C, kind, dtype=torch.float64)
    for xb, yb in batches:
        est.update(xb, yb)
    torch.testing.assert_close(est.covariance, reference.class_covariance(kind, xs, ys, C))
    for c in range(C):
        if (ys == c).any():
            torch.testing.assert_close(est.mean[c], xs[ys == c].mean(0))
    assert est.count.tolist() == [int((ys == c).sum()) for c in range(C)]


def test_absent_classes_keep_statistics():
    est = CovarianceEstimator(3, 4, dtype=torch.float64)
    est.update(torch.randn(20, 3, dtype=torch.float64), torch.tensor([0, 1] * 10))
    before = est.covariance[:2].clone(), est.mean[:2].clone()
    est.update(torch.randn(5, 3, dtype=torch.float64), torch.full((5,), 3))
    assert torch.equal(est.covariance[:2], before[0]) and torch.equal(est.mean[:2], before[1])
    assert est.count.tolist() == [10, 10, 0, 5]


def test_float32_statistics_from_bf16_features():
    est = CovarianceEstimator(8, 3)
    x = torch.randn(30, 8).bfloat16()
    est.update(x, torch.randint(0, 3, (30,)))
    assert est.covariance.dtype == torch.float32 and est.mean.dtype == torch.float32


def test_float32_close_to_float64():
    batches, xs, ys = stream(C=5, A=16, seed=4)
    e32 = CovarianceEstimator(16, 5)
    for xb, yb in batches:
        e32.update(xb.float(), yb)
    torch.testing.assert_close(e32.covariance.double(), reference.class_covariance("full", xs, ys, 5),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_bad_input_leaves_state_unchanged(kind):
    est = CovarianceEstimator(4, 3, kind)
    est.update(torch.randn(10, 4), torch.randint(0, 3, (10,)))
    snapshot = {k: v.clone() for k, v in est.state_dict().items()}
    bad = [
        (torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0]), "labels must lie in \\[0, 3\\)"),
        (torch.randn(5, 4), torch.tensor([0, -1, 2, 1, 0]), "labels must lie"),
        (torch.randn(5, 5), torch.zeros(5, dtype=torch.long), "features must be N x A with A=4"),
        (torch.randn(5, 4), torch.zeros(4, dtype=torch.long), "labels must be a 1-D"),
        (torch.randn(5, 4), torch.zeros(5), "integer class indices"),
        (torch.tensor([[float("nan")] * 4] * 2), torch.zeros(2, dtype=torch.long), "NaN or Inf"),
        (torch.tensor([[float("inf")] * 4] * 2), torch.zeros(2, dtype=torch.long), "NaN or Inf"),
    ]
    for x, y, msg in bad:
        with pytest.raises(ValueError, match=msg):
            est.update(x, y)
        for k, v in est.state_dict().items():
            assert torch.equal(v, snapshot[k]), k


def test_state_dict_round_trip_and_shape_check():
    est = CovarianceEstimator(4, 3)
    est.update(torch.randn(10, 4), torch.randint(0, 3, (10,)))
    fresh = CovarianceEstimator(4, 3)
    fresh.load_state_dict(est.state_dict())
    for k, v in est.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k])
    with pytest.raises(ValueError, match="kind='diagonal'"):
        CovarianceEstimator(4, 3, "diagonal").load_state_dict(est.state_dict())


def test_update_does_not_track_gradients():
    x = torch.randn(6, 3, requires_grad=True)
    est = CovarianceEstimator(3, 2)
    est.update(x * 2, torch.tensor([0, 1, 0, 1, 0, 1]))
    assert not est.covariance.requires_grad


def test_reset_and_empty_batch():
    est = CovarianceEstimator(3, 2, "identity")
    est.update(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))
    assert torch.equal(est.covariance, torch.eye(3))
    est.update(torch.randn(0, 3), torch.zeros(0, dtype=torch.long))
    est.reset()
    assert est.count.sum() == 0 and torch.equal(est.covariance, torch.eye(3))


def test_constructor_errors():
    with pytest.raises(ValueError, match="unknown covariance kind"):
        CovarianceEstimator(3, 2, "lowrank?")
    with pytest.raises(ValueError, match="dtype"):
        CovarianceEstimator(3, 2, dtype=torch.float16)


def test_scan_problems_carry_their_category_and_set_the_matching_flag():
    import copy
    import pickle

    from torch_isda.batch import PROBLEM_CATEGORIES, Problem

    est = CovarianceEstimator(3, 4)
    cases = [
        (torch.zeros(2, 5), torch.zeros(2, dtype=torch.long), "shape", "features must be N x A"),
        (torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, dtype=torch.long), "shape", "features must be a floating"),
        (torch.zeros(2, 3), torch.zeros(3, dtype=torch.long), "labels", "labels must be a 1-D tensor"),
        (torch.zeros(2, 3), torch.zeros(2), "labels", "labels must hold integer"),
        (torch.zeros(2, 3), torch.tensor([0, 4]), "labels", "labels must lie in [0, 4)"),
        (torch.tensor([[0.0, float("nan"), 0.0], [0, 0, 0]]), torch.tensor([0, 1]), "values", "features contain NaN"),
    ]
    for feats, labels, category, text in cases:
        _, problems = est.scan(feats, labels)
        assert len(problems) == 1 and problems[0].startswith(text)
        assert isinstance(problems[0], Problem) and problems[0].category == category
        flags = est._flags(problems)
        assert flags.tolist() == [int(c == category) for c in PROBLEM_CATEGORIES]
        with pytest.raises(ValueError) as err:
            est.update(feats, labels)
        assert str(err.value) == f"{problems[0]} (statistics unchanged)"
        assert int(est.count.sum()) == 0
    # the category, not the text, decides the flag; the message stays a plain str
    odd = Problem("labels with NaN in the text", "shape")
    assert est._flags([odd]).tolist() == [1, 0, 0] and "; ".join([odd, odd]) == f"{odd}; {odd}"
    assert copy.copy(odd).category == "shape" and pickle.loads(pickle.dumps(odd)).category == "shape"
    with pytest.raises(ValueError, match="unknown problem category"):
        Problem("x", "other")
