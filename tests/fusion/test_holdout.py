"""Held-out splits: partitions of the image ids, seeded, order-independent; mean ± spread by hand."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusion.holdout import holdout_split, kfold_splits, spread


@settings(max_examples=60, deadline=None)
@given(
    ids=st.sets(
        st.one_of(st.integers(-1000, 10**6), st.text(min_size=1, max_size=6)), min_size=5, max_size=200
    ),
    k=st.integers(2, 5),
    seed=st.integers(0, 99),
)
def test_kfold_held_out_parts_are_disjoint_cover_every_image_and_ignore_input_order(ids, k, seed):
    ids = list(ids)
    folds = kfold_splits(ids, k, seed)
    assert len(folds) == k
    held = [set(f.held_out) for f in folds]
    assert set().union(*held) == set(ids)
    assert sum(len(h) for h in held) == len(ids)  # disjoint
    assert max(map(len, held)) - min(map(len, held)) <= 1
    for fold in folds:
        assert set(fold.fit).isdisjoint(fold.held_out)
        assert set(fold.fit) | set(fold.held_out) == set(ids)
    assert kfold_splits(list(reversed(ids)), k, seed) == folds


def test_kfold_depends_on_the_seed_and_rejects_bad_arguments():
    ids = list(range(100))
    assert kfold_splits(ids, 5, 0) != kfold_splits(ids, 5, 1)
    with pytest.raises(ValueError, match="at least 5 images, got 3"):
        kfold_splits([1, 2, 3], 5)
    with pytest.raises(ValueError, match="k >= 2"):
        kfold_splits(ids, 1)
    with pytest.raises(ValueError, match="image id 7 appears more than once"):
        kfold_splits([7, 1, 7, 2, 3], 2)


def test_holdout_split_sizes():
    fold = holdout_split(range(10), 0.25, seed=3)
    assert len(fold.held_out) == 2 and len(fold.fit) == 8  # round(2.5) = 2 (banker's rounding)
    assert set(fold.fit) | set(fold.held_out) == set(range(10))
    assert len(holdout_split([1, 2], 0.01).held_out) == 1  # at least one on each side
    assert len(holdout_split([1, 2], 0.99).fit) == 1
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        holdout_split(range(10), 1.0)


def test_spread_is_mean_and_sample_std():
    s = spread([0.5, 0.7, 0.6])
    assert s.mean == pytest.approx(0.6)
    assert s.std == pytest.approx(0.1)  # sqrt(((-.1)^2 + .1^2 + 0) / 2)
    assert str(s) == "0.6000 ± 0.1000"
    assert spread([0.3]).std == 0.0
