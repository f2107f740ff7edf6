"""Retrieval recall and accuracy against per-query references, with several captions per image and with ties."""

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llamafactory.clip_finetune.tasks.classification import per_class_recall
from llamafactory.clip_finetune.tasks.ranking import topk_hits
from llamafactory.clip_finetune.tasks.retrieval import recall_at_k


def reference(sims, owner, k):
    i2t = []
    for i in range(sims.shape[0]):
        top = torch.argsort(sims[i], descending=True)[:k]
        i2t.append(bool((owner[top] == i).any()))
    t2i = []
    for j in range(sims.shape[1]):
        top = torch.argsort(sims[:, j], descending=True)[:k]
        t2i.append(bool((top == owner[j]).any()))
    return sum(i2t) / len(i2t), sum(t2i) / len(t2i)


def test_recall_matches_per_query_reference():
    torch.manual_seed(0)
    owner = torch.repeat_interleave(torch.arange(30), torch.randint(1, 5, (30,)))
    sims = torch.randn(30, len(owner))
    metrics = recall_at_k(sims, owner, chunk=7)
    for k in (1, 5, 10):
        i2t, t2i = reference(sims, owner, k)
        assert abs(metrics[f"i2t_r{k}"] - i2t) < 1e-6
        assert abs(metrics[f"t2i_r{k}"] - t2i) < 1e-6


def test_perfect_scores_give_recall_one_and_no_bonus_is_added():
    owner = torch.tensor([0, 0, 1, 2])
    sims = torch.full((3, 4), -1.0)
    sims[owner, torch.arange(4)] = 1.0
    assert recall_at_k(sims, owner)["i2t_r1"] == 1.0
    sims[0, 2] = 2.0  # image 0 prefers a caption of image 1
    metrics = recall_at_k(sims, owner)
    assert abs(metrics["i2t_r1"] - 2 / 3) < 1e-6 and metrics["t2i_r1"] == 3 / 4


# --- ties: a random order among tied entries, checked against every tie-breaking order ---------------------------


def averaged_over_orders(scores, hit):
    """Mean of ``hit(order)`` over every order of the entries that sorts by score (each permutation breaks ties)."""
    n = len(scores)
    total = 0.0
    perms = list(itertools.permutations(range(n)))
    for perm in perms:
        order = sorted(range(n), key=lambda i: (-scores[i], perm[i]))
        total += hit(order)
    return total / len(perms)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 2), min_size=2, max_size=6),
    st.data(),
)
def test_classification_ties_equal_the_average_over_tie_orders(levels, data):
    label = data.draw(st.integers(0, len(levels) - 1))
    logits = torch.tensor([levels], dtype=torch.float32)
    for k in (1, 2, 5):
        expected = averaged_over_orders(levels, lambda order, k=k: label in order[:k])
        got = topk_hits(logits, torch.tensor([label]), (k,))[k].item()
        assert abs(got - expected) < 1e-9


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 1), min_size=6, max_size=6), st.sampled_from([[0, 0, 1, 1, 2, 2], [0, 0, 0, 1, 2, 2]]))
def test_recall_ties_equal_the_average_over_tie_orders(levels, owner_list):
    """3 images, 6 captions, scores with many ties: each query's recall is its mean over every tie order."""
    owner = torch.tensor(owner_list)
    sims = torch.tensor([levels, levels[::-1], [levels[i] for i in (1, 3, 5, 0, 2, 4)]], dtype=torch.float32)
    metrics = recall_at_k(sims, owner, chunk=2)
    for k in (1, 5):
        i2t = (
            sum(
                averaged_over_orders(sims[i].tolist(), lambda o, i=i, k=k: any(owner_list[j] == i for j in o[:k]))
                for i in range(3)
            )
            / 3
        )
        t2i = (
            sum(
                averaged_over_orders(sims[:, j].tolist(), lambda o, j=j, k=k: owner_list[j] in o[:k]) for j in range(6)
            )
            / 6
        )
        assert abs(metrics[f"i2t_r{k}"] - i2t) < 1e-6, k
        assert abs(metrics[f"t2i_r{k}"] - t2i) < 1e-6, k


def test_a_constant_model_scores_chance_not_one():
    owner = torch.arange(20).repeat_interleave(2)  # 20 images, 2 captions each
    metrics = recall_at_k(torch.zeros(20, 40), owner)
    assert abs(metrics["t2i_r1"] - 1 / 20) < 1e-6 and abs(metrics["t2i_r5"] - 5 / 20) < 1e-6
    # i2t R@1: 2 of the 40 captions are the image's own -> 2/40
    assert abs(metrics["i2t_r1"] - 2 / 40) < 1e-6
    hits = topk_hits(torch.zeros(7, 10), torch.arange(7), (1, 5))
    assert torch.allclose(hits[1], torch.full((7,), 0.1, dtype=torch.float64))
    assert torch.allclose(hits[5], torch.full((7,), 0.5, dtype=torch.float64))


def test_nan_scores_never_count_as_hits():
    logits = torch.tensor([[float("nan"), 0.0, 0.0], [1.0, float("nan"), 0.0]])
    hits = topk_hits(logits, torch.tensor([0, 0]), (1,))[1]
    assert hits.tolist() == [0.0, 0.0]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from([0.0, 0.5, 1.0])), min_size=1, max_size=40))
def test_mean_per_class_recall_is_the_mean_of_the_present_classes_recalls(rows):
    """CLIP_benchmark's mean_per_class_recall: classes without images do not count; ties give fractional credit."""
    labels = torch.tensor([label for label, _ in rows])
    hits = torch.tensor([hit for _, hit in rows])
    by_class = {}
    for label, hit in rows:
        by_class.setdefault(label, []).append(hit)
    expected = sum(sum(v) / len(v) for v in by_class.values()) / len(by_class)
    assert per_class_recall(hits, labels, 6) == pytest.approx(expected)
