"""Property tests (hypothesis) of the pure functions, each against a plain restatement of what it must do."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llamafactory.clip_finetune.data.fewshot import sample_per_class
from llamafactory.clip_finetune.methods.abs import select_units, unit_angle
from llamafactory.clip_finetune.methods.feature_cache import shard
from llamafactory.clip_finetune.methods.tip.cache import _alpha_bounds
from llamafactory.clip_finetune.methods.tip.shared import allocate


PROFILE = settings(max_examples=60, deadline=None, derandomize=True)


@PROFILE
@given(total=st.integers(0, 500), world=st.integers(1, 17))
def test_shards_cover_every_item_once_in_rank_order(total, world):
    parts = [shard(total, rank, world) for rank in range(world)]
    assert [i for part in parts for i in part] == list(range(total))
    assert all(len(part) <= math.ceil(total / world) for part in parts)


@PROFILE
@given(counts=st.lists(st.integers(1, 1000), min_size=1, max_size=30), extra=st.integers(0, 200))
def test_shared_cache_allocation_fills_every_slot_fairly(counts, extra):
    size = len(counts) + extra
    slots = allocate(torch.tensor(counts, dtype=torch.float), size)
    assert int(slots.sum()) == size and int(slots.min()) >= 1
    share = torch.tensor(counts, dtype=torch.float) / sum(counts) * extra
    # largest remainders: every label gets its share's floor or ceiling, on top of its guaranteed slot
    assert torch.all(slots - 1 >= share.floor() - 1e-6) and torch.all(slots - 1 <= share.ceil() + 1e-6)


@PROFILE
@given(
    labels=st.lists(st.integers(0, 6), min_size=0, max_size=80),
    shots=st.integers(1, 9),
    seed=st.integers(0, 2**31 - 1),
)
def test_few_shot_sampling_takes_k_per_class_reproducibly_and_nested(labels, shots, seed):
    labels = torch.tensor(labels, dtype=torch.long)
    picked = sample_per_class(labels, shots, seed)
    assert len(set(picked.tolist())) == len(picked)
    for c in set(labels.tolist()):
        assert int((labels[picked] == c).sum()) == min(shots, int((labels == c).sum()))
    assert torch.equal(picked, sample_per_class(labels, shots, seed))
    assert set(picked.tolist()) <= set(sample_per_class(labels, shots + 1, seed).tolist())
    assert labels[picked].tolist() == sorted(labels[picked].tolist())  # classes in order


vectors = st.lists(st.floats(-10, 10, allow_nan=False, width=32), min_size=1, max_size=12)


@PROFILE
@given(start=vectors, now=vectors, scale=st.floats(0.01, 100))
def test_abs_unit_angle_is_the_angle_between_the_flattened_weights(start, now, scale):
    n = min(len(start), len(now))
    a, b = torch.tensor(start[:n]), torch.tensor(now[:n])
    angle = unit_angle([a[: n // 2], a[n // 2 :]], [b[: n // 2], b[n // 2 :]])  # a unit of weight + bias
    na, nb = a.double().norm().item(), b.double().norm().item()
    if na == 0 or nb == 0:
        assert angle == (0.0 if torch.equal(a, b) else math.pi / 2)
    else:
        cos = max(-1.0, min(1.0, float(a.double() @ b.double()) / (na * nb)))
        assert math.isclose(angle, math.acos(cos), abs_tol=1e-9)
        assert math.isclose(unit_angle([a], [a * scale]), 0.0, abs_tol=1e-6)  # a rescaled unit did not rotate


@PROFILE
@given(
    angles=st.lists(st.floats(0, math.pi), min_size=1, max_size=20),
    groups=st.lists(st.integers(0, 3), min_size=20, max_size=20),
    keep=st.integers(1, 6),
    top=st.booleans(),
)
def test_abs_selection_keeps_the_extreme_angles_of_each_group(angles, groups, keep, top):
    units = {f"unit{i}": angle for i, angle in enumerate(angles)}
    group_of = {unit: groups[i] for i, unit in enumerate(units)}
    kept = select_units(units, group_of, keep, top)
    for group in set(group_of.values()):
        members = [u for u in units if group_of[u] == group]
        mine = [u for u in members if u in kept]
        assert len(mine) == min(keep, len(members))
        rest = [units[u] for u in members if u not in kept]
        if rest:
            worst_kept = min(units[u] for u in mine) if top else max(units[u] for u in mine)
            assert worst_kept >= max(rest) if top else worst_kept <= min(rest)


@PROFILE
@given(
    d_logit=st.lists(st.floats(-5, 5, width=32), min_size=1, max_size=8),
    d_cache=st.lists(st.floats(-5, 5, width=32), min_size=8, max_size=8),
    alpha=st.floats(-20, 20),
)
def test_alpha_interval_is_where_the_true_entry_beats_every_other(d_logit, d_cache, alpha):
    """Inside (low, high) and ``flat`` exactly when d_logit + alpha * d_cache > 0 against every entry whose gap
    depends on alpha (entries that tie for every alpha are counted apart, in ``tied``)."""
    d_logit = torch.tensor(d_logit, dtype=torch.float64)
    d_cache = torch.tensor(d_cache[: len(d_logit)], dtype=torch.float64)
    others = torch.ones_like(d_logit, dtype=torch.bool)
    low, high, flat, tied = _alpha_bounds(d_logit, d_cache, others)
    gap = d_logit + alpha * d_cache
    level = d_cache == 0
    if bool(((gap - 0).abs() < 1e-9)[~level].any()):
        return  # a tie at this exact alpha: the interval is open there, either answer is fine
    ahead = bool((gap[~level] > 0).all()) and bool((d_logit[level] >= 0).all())
    assert bool(flat and low < alpha < high) == ahead
    assert int(tied) == int((level & (d_logit == 0)).sum())
