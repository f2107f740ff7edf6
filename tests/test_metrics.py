"""Retrieval recall against a per-query reference, with several captions per image."""

import torch

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
