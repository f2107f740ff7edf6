"""Tip-Adapter: the logits formula, the vectorized alpha/beta search, the cache's persistence and compatibility."""

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import base_args, read_json
from llamafactory.train.tuner import run_exp
from safetensors import safe_open
from transformers import TrainerCallback

from llamafactory.clip_finetune.methods.tip.cache import TipCache, search_alpha_beta, tip_search_grid
from llamafactory.clip_finetune.tasks import ClassificationTask, HeadScores


class _Model:
    """Just what ClassificationTask.logits reads: the family's pair scores (CLIP's: scale * cos) and a head."""

    def __init__(self, cache, scale):
        self.head, self._scale = cache, torch.tensor(scale)

    def logits(self, image, text):
        return self._scale * image @ text.t()


def test_logits_match_the_formula():
    torch.manual_seed(0)
    f = F.normalize(torch.randn(7, 16), dim=-1)
    w = F.normalize(torch.randn(5, 16), dim=-1)
    keys = F.normalize(torch.randn(12, 16), dim=-1)
    values = F.one_hot(torch.randint(0, 5, (12,)), 5).float()
    alpha, beta = 1.7, 5.5
    got = ClassificationTask.logits(_Model(TipCache(keys, values, alpha, beta, learnable=False), 100.0), f, w)
    expected = torch.zeros(7, 5)
    for i in range(7):
        for c in range(5):
            expected[i, c] = 100.0 * torch.dot(f[i], w[c])
            for n in range(12):
                expected[i, c] += alpha * torch.exp(-beta * (1 - torch.dot(f[i], keys[n]))) * values[n, c]
    assert torch.allclose(got, expected, atol=1e-5)


def search_classes(clip_logits, affinity, values, labels, betas, alphas):
    """The head search as classification poses it: columns are classes, each image's true column its label."""
    problem = HeadScores(clip_logits, values, torch.arange(len(labels)), labels)
    return search_alpha_beta(problem, affinity, betas, alphas, chunk=4)


def search_captions(image_text, affinity, value_text, caption_image, betas, alphas, budget=2**24):
    """The head search as image_to_text poses it: columns are captions, each image's true columns its captions."""
    problem = HeadScores(image_text, value_text, caption_image, torch.arange(len(caption_image)))
    return search_alpha_beta(problem, affinity, betas, alphas, chunk=4, budget=budget)


def best_cell(metric, betas, alphas):
    """(score, alpha, beta) of the best grid cell by ``metric(alpha, beta)``; ties go to the first beta, then alpha,
    as the search breaks them."""
    cells = ((metric(a, b), -i, -j, a.item(), b.item()) for i, b in enumerate(betas) for j, a in enumerate(alphas))
    score, _, _, alpha, beta = max(cells)
    return score, alpha, beta


def test_vectorized_search_equals_a_loop_over_the_grid():
    torch.manual_seed(1)
    f = F.normalize(torch.randn(60, 8), dim=-1)
    keys = F.normalize(torch.randn(20, 8), dim=-1)
    values = F.one_hot(torch.arange(20) % 4, 4).float()
    clip_logits = 10 * f @ F.normalize(torch.randn(4, 8), dim=-1).t()
    labels = torch.randint(0, 4, (60,))
    betas, alphas = tip_search_grid([7, 3], [13, 5])
    alpha, beta, accuracy = search_classes(clip_logits, f @ keys.t(), values, labels, betas, alphas)
    best = best_cell(
        lambda a, b: (
            ((clip_logits + a * torch.exp(-b * (1 - f @ keys.t())) @ values).argmax(-1) == labels)
            .float()
            .mean()
            .item()
        ),
        betas,
        alphas,
    )
    assert (accuracy, alpha, beta) == pytest.approx(best)


def tip_args(output_dir, **overrides):
    args = base_args(
        output_dir,
        finetuning_type="tip",
        tip_augment_epoch=2,
        val_dataset="fashion_mnist_val",
        tip_search_best=True,
        tip_search_step=[20, 10],
    )
    args.update(overrides)
    return args


def test_training_free_run_searches_on_validation_saves_and_reloads_the_cache(tmp_path):
    first = tmp_path / "first"
    run_exp(tip_args(first))
    results = read_json(first / "all_results.json")
    assert {"tip_alpha", "tip_beta", "tip_search_val_accuracy", "eval_accuracy"} <= set(results)
    with safe_open(first / "tip_cache.safetensors", framework="pt") as f:
        header = json.loads(f.metadata()["header"])
        keys = f.get_tensor("keys")
    assert header["num_shots"] == 2 and header["augment_epoch"] == 2 and len(header["classnames"]) == 10
    assert keys.shape == (20, 32) and torch.allclose(keys.norm(dim=-1), torch.ones(20), atol=1e-5)

    again = tmp_path / "again"
    run_exp(tip_args(again, tip_load_cache=True, tip_cache_dir=str(first)))
    assert read_json(again / "all_results.json")["eval_accuracy"] == results["eval_accuracy"]

    with pytest.raises(ValueError, match=r"num_shots: cache has 2, this run 4"):
        run_exp(tip_args(tmp_path / "other", num_shots=4, tip_load_cache=True, tip_cache_dir=str(first)))


def test_tip_f_learns_the_keys_only(tmp_path):
    run_exp(tip_args(tmp_path, tip_finetune=True, tip_search_best=False, num_train_epochs=2, learning_rate=1e-2))
    with safe_open(tmp_path / "tip_cache.safetensors", framework="pt") as f:
        keys, values = f.get_tensor("keys"), f.get_tensor("values")
        header = json.loads(f.metadata()["header"])
    assert header["finetuned"] is True
    assert not torch.allclose(keys.norm(dim=-1), torch.ones(len(keys)), atol=1e-6)  # moved off the unit sphere
    assert torch.equal(values.sum(-1), torch.ones(len(values)))  # still one-hot
    assert not (tmp_path / "model.safetensors").exists()  # the frozen CLIP is not written again


def test_tip_search_refuses_to_run_without_a_validation_split(tmp_path):
    with pytest.raises(ValueError, match="set val_dataset \\(never the test set\\)"):
        run_exp(base_args(tmp_path, finetuning_type="tip", tip_search_best=True))


class FirstStepKeys(TrainerCallback):
    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if not hasattr(self, "keys"):
            self.keys = model.head.keys.detach().clone()


def test_tip_f_checkpoints_carry_the_learned_keys_and_resume_restores_them(tmp_path):
    common = dict(
        tip_finetune=True,
        tip_search_best=False,
        learning_rate=1e-2,
        save_strategy="steps",
        save_steps=2,
        do_eval=False,
    )
    run_exp(tip_args(tmp_path, max_steps=2, **common))
    with safe_open(tmp_path / "checkpoint-2" / "tip_cache.safetensors", framework="pt") as f:
        saved = f.get_tensor("keys")
    with safe_open(tmp_path / "tip_cache.safetensors", framework="pt") as f:
        assert torch.equal(saved, f.get_tensor("keys"))  # the final cache is the step-2 one
    probe = FirstStepKeys()
    run_exp(tip_args(tmp_path, max_steps=4, **common), callbacks=[probe])  # resumes from checkpoint-2
    assert read_json(tmp_path / "trainer_state.json")["global_step"] == 4
    assert torch.equal(probe.keys.cpu(), saved)  # step 3 started from the learned keys, not from the built cache


def test_image_to_text_query_is_the_residual_text_space_feature():
    from llamafactory.clip_finetune.tasks import ImageToTextTask

    torch.manual_seed(2)
    f = F.normalize(torch.randn(6, 16), dim=-1)
    keys = F.normalize(torch.randn(9, 16), dim=-1)
    values = F.normalize(torch.randn(9, 16), dim=-1)  # caption features of the cached images
    alpha, beta = 0.7, 3.0
    got = ImageToTextTask.query(_Model(TipCache(keys, values, alpha, beta, learnable=False), 100.0), f)
    expected = F.normalize(f + alpha * torch.exp(-beta * (1 - f @ keys.t())) @ values, dim=-1)
    assert torch.allclose(got, expected, atol=1e-6)


def test_image_to_text_tip_caches_caption_features(tmp_path):
    from conftest import i2t_args

    run_exp(i2t_args(tmp_path, finetuning_type="tip", tip_augment_epoch=2))
    with safe_open(tmp_path / "tip_cache.safetensors", framework="pt") as f:
        keys, values = f.get_tensor("keys"), f.get_tensor("values")
    assert keys.shape == values.shape == (48, 32)  # max_samples images, projection dim
    assert torch.allclose(values.norm(dim=-1), torch.ones(48), atol=1e-5)
    assert {"eval_i2t_r1", "eval_t2i_r10"} <= set(read_json(tmp_path / "all_results.json"))


def clustered(classes, per_class, dim, seed):
    """Unit features around one random direction per class."""
    generator = torch.Generator().manual_seed(seed)
    centers = F.normalize(torch.randn(classes, dim, generator=generator), dim=-1)
    labels = torch.arange(classes).repeat_interleave(per_class)
    noise = 0.1 * torch.randn(len(labels), dim, generator=generator)
    return F.normalize(centers[labels] + noise, dim=-1), labels


def test_shared_fixed_cache_keeps_its_shapes_over_three_datasets_and_serves_each_its_own_classes(tmp_path):
    from llamafactory.clip_finetune.methods.tip.shared import SharedCache

    cache = SharedCache(size=30, dim=16)
    data = {name: clustered(5, 20, 16, seed) for seed, name in enumerate(("a", "b", "c"))}
    for name, (features, labels) in data.items():
        cache.add(name, [f"class{i}" for i in range(5)], features, labels)
        assert cache.keys.shape == (30, 16) and cache.labels.shape == (30,) and cache.counts.shape == (30,)
    assert len(cache.names) == 15 and cache.counts.sum().item() == 300  # every image is summarized once
    assert (cache.labels >= 0).all() and torch.allclose(cache.keys.norm(dim=-1), torch.ones(30), atol=1e-5)

    features, labels = data["a"]
    keys, values = cache.restricted("a", [f"class{i}" for i in range(5)])
    assert values.shape[1] == 5 and (values.sum(0) >= 1).all()  # every class of `a` keeps a slot
    scores = torch.exp(-5 * (1 - features @ keys.t())) @ values
    assert (scores.argmax(-1) == labels).float().mean() > 0.95  # `a` is still served after adding b and c

    cache.save(str(tmp_path), {"checkpoint": "x", "feature_dim": 16})
    again = SharedCache.load(str(tmp_path), 30, {"checkpoint": "x", "feature_dim": 16})
    assert again.names == cache.names and torch.equal(again.keys, cache.keys)
    with pytest.raises(ValueError, match="checkpoint: cache has 'x', this run 'y'"):
        SharedCache.load(str(tmp_path), 30, {"checkpoint": "y", "feature_dim": 16})
    with pytest.raises(ValueError, match="already holds dataset `a`"):
        cache.add("a", ["class0"], features[:1], labels[:1])
    with pytest.raises(ValueError, match="tip_cache_size 10 is smaller than the 15 classes"):
        small = SharedCache(size=10, dim=16)
        for name, (f, y) in data.items():
            small.add(name, [f"class{i}" for i in range(5)], f, y)


def test_fixed_cache_run_adds_the_dataset_then_reuses_the_shared_cache(tmp_path):
    shared = tmp_path / "shared"
    common = dict(tip_fixed_cache=True, tip_cache_size=25, tip_cache_dir=str(shared), tip_search_best=False)
    run_exp(tip_args(tmp_path / "add", tip_new_dataset=True, **common))
    first = read_json(tmp_path / "add" / "all_results.json")["eval_accuracy"]
    assert (shared / "tip_shared_cache.safetensors").is_file()
    run_exp(tip_args(tmp_path / "use", tip_new_dataset=False, **common))
    assert read_json(tmp_path / "use" / "all_results.json")["eval_accuracy"] == first


def test_affinity_powers_match_exp_for_even_and_uneven_betas():
    from llamafactory.clip_finetune.methods.tip.cache import affinity_powers

    affinity = torch.rand(50, 7) * 2 - 1
    for betas in (torch.arange(16) * 0.35 + 0.1, torch.tensor([0.1, 0.5, 3.0, 3.2])):
        for beta, got in zip(betas, affinity_powers(affinity, betas), strict=True):
            assert torch.allclose(got, torch.exp(-beta * (1 - affinity)), rtol=1e-5)


def test_image_to_text_search_equals_recall_at_1_over_the_grid():
    from llamafactory.clip_finetune.tasks.retrieval import recall_at_k

    g = torch.Generator().manual_seed(3)
    f = F.normalize(torch.randn(30, 8, generator=g), dim=-1)  # validation images
    caption_image = torch.cat([torch.arange(30).repeat(2), torch.arange(15)]).sort().values  # 2 or 3 captions each
    texts = F.normalize(f[caption_image] + 0.8 * torch.randn(75, 8, generator=g), dim=-1)
    cached = torch.randint(0, 30, (25,), generator=g)  # keys near some images, values near their captions
    keys = F.normalize(f[cached] + 0.5 * torch.randn(25, 8, generator=g), dim=-1)
    own = torch.zeros(30, 8).index_add_(0, caption_image, texts)
    values = F.normalize(own[cached] + 0.3 * torch.randn(25, 8, generator=g), dim=-1)
    betas, alphas = tip_search_grid([7, 3], [11, 7])
    alpha, beta, recall = search_captions(
        f @ texts.t(), f @ keys.t(), values @ texts.t(), caption_image, betas, alphas, budget=300
    )
    grid = []
    for i, b in enumerate(betas):
        for j, a in enumerate(alphas):
            query = ImageToTextQuery(keys, values, a.item(), b.item())(f)
            grid.append((recall_at_k(query @ texts.t(), caption_image)["i2t_r1"], -i, -j, a.item(), b.item()))
    best = max(grid)
    assert len({r for r, *_ in grid}) > 3  # the grid matters on this data
    assert recall == pytest.approx(best[0]) and alpha == pytest.approx(best[3]) and beta == pytest.approx(best[4])


def ImageToTextQuery(keys, values, alpha, beta):
    from llamafactory.clip_finetune.tasks import ImageToTextTask

    model = _Model(TipCache(keys, values, alpha, beta, learnable=False), 100.0)
    return lambda f: ImageToTextTask.query(model, f)


def test_image_to_text_search_on_validation_gives_the_recall_the_evaluation_measures(tmp_path):
    from conftest import i2t_args

    common = dict(dataset="emoji_captions_train_fit", max_samples=None, finetuning_type="tip", tip_augment_epoch=2)
    run_exp(i2t_args(tmp_path / "search", val_dataset="emoji_captions_val", tip_search_best=True, **common))
    results = read_json(tmp_path / "search" / "all_results.json")
    assert {"tip_alpha", "tip_beta", "tip_search_val_i2t_r1", "eval_i2t_r1"} <= set(results)
    chosen = dict(tip_alpha=results["tip_alpha"], tip_beta=results["tip_beta"])
    run_exp(i2t_args(tmp_path / "check", eval_dataset="emoji_captions_val", **chosen, **common))
    assert read_json(tmp_path / "check" / "all_results.json")["eval_i2t_r1"] == pytest.approx(
        results["tip_search_val_i2t_r1"]
    )


def test_tip_search_refuses_a_validation_split_that_overlaps_the_cache(tmp_path):
    from conftest import i2t_args

    with pytest.raises(ValueError, match=r"val_dataset `emoji_captions_val` shares 40 of its 40 images"):
        run_exp(
            i2t_args(
                tmp_path,
                max_samples=None,
                finetuning_type="tip",
                tip_augment_epoch=1,
                val_dataset="emoji_captions_val",
                tip_search_best=True,
            )
        )


def test_a_compatible_reloaded_cache_encodes_no_image(tmp_path, monkeypatch):
    from llamafactory.clip_finetune.methods import feature_cache

    run_exp(tip_args(tmp_path / "first", tip_search_best=False))

    def refuse(*args, **kwargs):
        raise AssertionError("an image was encoded although the cache was reloaded")

    monkeypatch.setattr(feature_cache, "compute_views", refuse)
    run_exp(
        tip_args(tmp_path / "again", tip_search_best=False, tip_load_cache=True, tip_cache_dir=str(tmp_path / "first"))
    )
    assert read_json(tmp_path / "again" / "all_results.json") == read_json(tmp_path / "first" / "all_results.json")
    with pytest.raises(AssertionError, match="an image was encoded"):  # without a saved cache it must encode
        run_exp(tip_args(tmp_path / "fresh", tip_search_best=False, tip_load_cache=True))


@pytest.mark.slow
def test_torchrun_ranks_encode_their_shards_and_hold_the_single_process_cache(tmp_path):
    """Deterministic views (no random transform), so the 2-process cache must equal the single-process one."""
    import re

    import yaml
    from conftest import run_cli

    settings = tip_args(
        tmp_path,
        tip_search_best=False,
        train_transforms=["normalize"],
        dataloader_num_workers=0,
        per_device_eval_batch_size=8,
    )
    for name, extra in (("free", {}), ("tip_f", {"tip_finetune": True, "num_train_epochs": 1})):
        config = tmp_path / f"{name}.yaml"
        config.write_text(yaml.safe_dump({**settings, **extra, "output_dir": str(tmp_path / name / "two")}))
        out = run_cli(
            ["train", str(config)], env={"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2", "OMP_NUM_THREADS": "1"}
        )
        log = out.stdout + out.stderr
        assert out.returncode == 0, log[-4000:]
        for rank in (0, 1):
            assert f"feature cache: rank {rank} encoded its 10 of 20 training images x 2 augmented views" in log
        digests = dict(re.findall(r"tip: rank (\d) holds 20 keys, digest (\w+)", log))
        assert set(digests) == {"0", "1"} and digests["0"] == digests["1"], log[-4000:]

    run_exp({**settings, "output_dir": str(tmp_path / "free" / "one")})
    with safe_open(tmp_path / "free" / "one" / "tip_cache.safetensors", framework="pt") as f:
        single = f.get_tensor("keys")
    with safe_open(tmp_path / "free" / "two" / "tip_cache.safetensors", framework="pt") as f:
        double = f.get_tensor("keys")
    assert single.shape == double.shape == (20, 32) and torch.allclose(single, double, atol=1e-5)


def test_benchmark_tip_shared_reports_dataset_one_against_its_own_cache():
    import subprocess
    import sys

    from conftest import ROOT

    out = subprocess.run(
        [sys.executable, str(ROOT / "evaluation" / "benchmark.py"), "--tip_shared", "--tip_cache_size", "30"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["tip_test_images"] == 80  # 4 classes x 20 test images
    assert result["tip_own_cache_shape"] == [160, 32]  # 4 classes x 40 training images
    assert result["tip_shared_cache_shapes"] == {"keys": [30, 32], "counts": [30]}
    assert result["tip_shared_cache_bytes"] == 30 * 32 * 4 + 30 * 4 + 30 * 8
    assert result["tip_shared_slots_for_first"] == 12  # 160 of 400 images: 1 + 2 slots for each of the 4 classes
    for key in ("tip_zero_shot_accuracy", "tip_own_cache_accuracy", "tip_shared_after_three_accuracy"):
        assert 0.25 < result[key] <= 1.0  # above chance on 4 classes


def test_search_counts_ties_as_the_evaluation_does():
    """Classes 2 and 3 share class 1's prompt and have no cache keys: they tie with class 1 for every alpha. The
    search's accuracy at each cell must be the evaluation's tie-aware accuracy (a third of a hit), not a full hit."""
    from llamafactory.clip_finetune.tasks.ranking import topk_hits

    torch.manual_seed(2)
    f = F.normalize(torch.randn(40, 8), dim=-1)
    prompts = F.normalize(torch.randn(2, 8), dim=-1)
    clip_logits = 10 * f @ prompts[[0, 1, 1, 1]].t()
    keys = F.normalize(torch.randn(12, 8), dim=-1)
    values = F.one_hot(torch.arange(12) % 2, 4).float()  # keys of classes 0 and 1 only
    labels = torch.randint(0, 2, (40,))
    betas, alphas = tip_search_grid([7, 3], [9, 5])
    alpha, beta, accuracy = search_classes(clip_logits, f @ keys.t(), values, labels, betas, alphas)
    best = best_cell(
        lambda a, b: (
            topk_hits(clip_logits + a * torch.exp(-b * (1 - f @ keys.t())) @ values, labels, (1,))[1].mean().item()
        ),
        betas,
        alphas,
    )
    assert (accuracy, alpha, beta) == pytest.approx(best)
    assert accuracy < 1.0


def test_image_to_text_search_counts_duplicate_captions_as_the_evaluation_does():
    from llamafactory.clip_finetune.tasks.retrieval import recall_at_k

    g = torch.Generator().manual_seed(5)
    f = F.normalize(torch.randn(12, 8, generator=g), dim=-1)
    caption_image = torch.arange(12).repeat_interleave(2)
    texts = F.normalize(f[caption_image] + 0.8 * torch.randn(24, 8, generator=g), dim=-1)
    texts[3] = texts[0]  # image 1's second caption is the same text as image 0's first
    keys = F.normalize(f[:6] + 0.5 * torch.randn(6, 8, generator=g), dim=-1)
    values = F.normalize(texts[0:12:2] + 0.3 * torch.randn(6, 8, generator=g), dim=-1)
    betas, alphas = tip_search_grid([7, 3], [9, 5])
    alpha, beta, recall = search_captions(
        f @ texts.t(), f @ keys.t(), values @ texts.t(), caption_image, betas, alphas
    )
    best = best_cell(
        lambda a, b: recall_at_k(ImageToTextQuery(keys, values, a.item(), b.item())(f) @ texts.t(), caption_image)[
            "i2t_r1"
        ],
        betas,
        alphas,
    )
    assert (recall, alpha, beta) == pytest.approx(best)
