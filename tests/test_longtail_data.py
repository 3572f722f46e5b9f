"""Long-tailed subsets (issue 23 item 1): counts from the papers' formulas, seeded draws,
balanced held-out set carved before the tail, balanced test set."""

import math

import pytest
import torch

from torch_isda.data import ImageDataset, create_dataset, register_dataset
from torch_isda.data.longtail import (
    long_tail_counts, long_tail_split, shot_group_errors, shot_groups)


def _labels(per_class=50, num_classes=10, seed=0):
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    return labels[torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(seed))]


def test_exponential_counts_follow_cao_et_al():
    # n_c = floor(n_max * rho^(-c/(C-1))), written out from the formula in float64
    counts = long_tail_counts(6000, 10, 100)
    expected = [math.floor(6000 * 100.0 ** (-c / 9.0)) for c in range(10)]
    assert list(counts) == expected
    assert counts[0] == 6000 and counts[-1] == 60
    # the MetaSAug code's CIFAR-10-LT counts for rho = 100 (n_max = 4990 after the meta set)
    assert long_tail_counts(4990, 10, 100)[-1] == 49


def test_step_profile_and_identity():
    assert long_tail_counts(100, 10, 10, "step") == (100,) * 5 + (10,) * 5
    assert long_tail_counts(100, 5, 10, "step") == (100,) * 2 + (10,) * 3
    assert long_tail_counts(37, 4, 1) == (37,) * 4


@pytest.mark.parametrize("kwargs, match", [
    ({"imbalance": 0.5}, "imbalance must be"),
    ({"imbalance": float("inf")}, "imbalance must be"),
    ({"imbalance": 10, "profile": "linear"}, "profile must be"),
    ({"imbalance": 1000}, "without training images"),
])
def test_bad_counts_raise_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match):
        long_tail_counts(100, 10, **kwargs)


def test_split_counts_seed_and_disjointness():
    labels = _labels(50)
    split = long_tail_split(labels, 10, 10, val_per_class=5, seed=3)
    assert split.counts == long_tail_counts(45, 10, 10)  # n_max = 50 - 5 held out
    assert torch.equal(torch.bincount(labels[split.train], minlength=10),
                       torch.tensor(split.counts))
    assert torch.equal(torch.bincount(labels[split.held_out], minlength=10),
                       torch.full((10,), 5))
    assert not set(split.train.tolist()) & set(split.held_out.tolist())
    again = long_tail_split(labels, 10, 10, val_per_class=5, seed=3)
    assert torch.equal(again.train, split.train) and torch.equal(again.held_out, split.held_out)
    other = long_tail_split(labels, 10, 10, val_per_class=5, seed=4)
    assert not torch.equal(other.train, split.train)


def test_held_out_set_is_carved_before_the_tail_and_draws_nest():
    labels = _labels(50)
    with_meta = long_tail_split(labels, 10, 10, val_per_class=5, n_max=40, seed=1)
    more_meta = long_tail_split(labels, 10, 10, val_per_class=8, n_max=40, seed=1)
    # the first 5 held-out images of each class are those of the larger held-out set
    assert set(with_meta.held_out.tolist()) <= set(more_meta.held_out.tolist())
    steeper = long_tail_split(labels, 10, 20, val_per_class=5, n_max=40, seed=1)
    assert set(steeper.train.tolist()) <= set(with_meta.train.tolist())


def test_split_names_the_short_class():
    labels = torch.cat([_labels(50, 9), torch.full((3,), 9)])
    with pytest.raises(ValueError, match="class 9"):
        long_tail_split(labels, 10, 10, val_per_class=5)
    with pytest.raises(ValueError, match="class 9"):
        long_tail_split(labels, 10, 2, n_max=50)


def test_shot_groups_thresholds():
    assert shot_groups([101, 100, 20, 19]) == ("many", "medium", "medium", "few")
    assert shot_groups([6, 5, 4], many=5, few=5) == ("many", "medium", "few")
    with pytest.raises(ValueError, match="thresholds"):
        shot_groups([1], many=10, few=20)


def test_shot_group_errors_pool_the_classes_and_mark_empty_groups():
    groups = shot_groups([500, 150, 60, 25])  # many, many, medium, medium: no few-shot class
    errors = shot_group_errors([10, 30, 5, 45], [100, 100, 100, 100], groups)
    assert errors == {"many": 20.0, "medium": 25.0, "few": None}
    with pytest.raises(ValueError, match="differ in length"):
        shot_group_errors([1], [1, 2], groups)


@register_dataset("longtail_toy")
def _toy(root="data", download=False):
    g = torch.Generator().manual_seed(0)
    labels = _labels(30, 4)
    test_labels = torch.arange(4).repeat_interleave(7)
    return ImageDataset(
        "longtail_toy", torch.randint(0, 256, (120, 1, 4, 4), dtype=torch.uint8, generator=g),
        labels, torch.randint(0, 256, (28, 1, 4, 4), dtype=torch.uint8, generator=g),
        test_labels, 4, (0.5,), (0.25,), (1, 4, 4))


def test_create_dataset_long_tail_keeps_the_test_set_and_holds_out_meta():
    full = create_dataset("longtail_toy")
    data = create_dataset("longtail_toy", imbalance=10, val_per_class=2, subset_seed=5)
    counts = long_tail_counts(28, 4, 10)
    assert torch.equal(torch.bincount(data.train_labels, minlength=4), torch.tensor(counts))
    assert torch.equal(data.test_labels, full.test_labels)
    assert torch.equal(data.test_images, full.test_images)
    assert torch.equal(torch.bincount(data.meta_labels, minlength=4), torch.full((4,), 2))
    assert data.to("cpu").meta_images.shape == (8, 1, 4, 4)
    assert full.meta_images is None


@pytest.mark.parametrize("kwargs, match", [
    ({"profile": "step"}, "need imbalance"),
    ({"imbalance": 10, "train_size": 40}, "cannot be combined"),
])
def test_create_dataset_rejects_inconsistent_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_dataset("longtail_toy", **kwargs)
