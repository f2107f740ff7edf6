"""Concurrent runs on one shared cache, damaged or crafted cache files, and diverging runs."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import DATA_DIR, ROOT, TINY_CLIP, base_args
from llamafactory.train.tuner import run_exp
from safetensors.torch import save_file

from llamafactory.clip_finetune.methods.tip.cache import CACHE_FILE, load_cache
from llamafactory.clip_finetune.methods.tip.shared import SHARED_FILE, SharedCache


HEADER = {"checkpoint": "m", "feature_dim": 4, "classnames": ["a", "b", "c"]}


def write_cache(directory, keys, values, header=HEADER, name=CACHE_FILE):
    directory.mkdir(parents=True, exist_ok=True)
    save_file({"keys": keys, "values": values}, str(directory / name), metadata={"header": json.dumps(header)})


CRAFTED = [
    (
        torch.nn.functional.normalize(torch.randn(6, 4), dim=-1),
        torch.ones(6, 1),
        r"`values` has shape \[6, 1\], this run needs \[N, 3\]",
    ),
    (torch.full((6, 4), float("nan")), torch.eye(3).repeat(2, 1), r"`keys` holds NaN or infinite values"),
    (torch.randn(6, 8), torch.eye(3).repeat(2, 1), r"`keys` has shape \[6, 8\], this run needs \[N, 4\]"),
    (torch.randn(6, 4), torch.eye(3).repeat(3, 1), r"disagree on the number of entries"),
]


@pytest.mark.parametrize("keys, values, message", CRAFTED)
def test_crafted_tip_caches_with_a_matching_header_are_refused(tmp_path, keys, values, message):
    write_cache(tmp_path, keys, values)
    with pytest.raises(ValueError, match=rf"{CACHE_FILE} is damaged or not a cache of this run: .*{message}"):
        load_cache(str(tmp_path), HEADER)


def test_a_truncated_cache_file_is_named(tmp_path):
    write_cache(tmp_path, torch.randn(6, 4), torch.eye(3).repeat(2, 1))
    path = tmp_path / CACHE_FILE
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match=rf"{CACHE_FILE} is damaged"):
        load_cache(str(tmp_path), HEADER)


def test_a_crafted_shared_cache_is_refused(tmp_path):
    header = {"checkpoint": "m", "feature_dim": 4}
    tensors = {"keys": torch.randn(5, 4), "counts": torch.ones(5), "labels": torch.tensor([0, 1, 7, -1, -1])}
    save_file(
        tensors, str(tmp_path / SHARED_FILE), metadata={"header": json.dumps({**header, "names": ["d::a", "d::b"]})}
    )
    with pytest.raises(ValueError, match=r"slot labels or counts out of range"):
        SharedCache.load(str(tmp_path), 5, header)
    tensors["labels"] = torch.tensor([0, 1, 1, -1, -1])
    tensors["keys"][0, 0] = float("inf")
    save_file(
        tensors, str(tmp_path / SHARED_FILE), metadata={"header": json.dumps({**header, "names": ["d::a", "d::b"]})}
    )
    with pytest.raises(ValueError, match=r"`keys` holds NaN or infinite values"):
        SharedCache.load(str(tmp_path), 5, header)


def test_a_diverging_run_stops_at_the_first_non_finite_loss(tmp_path):
    with pytest.raises(
        ValueError, match=r"Training diverged: (loss|grad_norm) is (nan|inf) at step \d+ .*learning_rate: 1e\+300"
    ):
        run_exp(base_args(tmp_path, learning_rate=1e300, num_train_epochs=3))
    assert not (tmp_path / "eval_results.json").exists()


# ---- three runs add three datasets to one shared cache at once -------------------------------------------------

SHARED_RUN = """
import json, sys
from llamafactory.train.tuner import run_exp
run_exp(json.loads(sys.argv[1]))
"""


def subset_datasets(root):
    """Three datasets of disjoint Fashion-MNIST classes (tables over the bundled images)."""
    groups = {"ds_a": ["bag", "coat"], "ds_b": ["dress", "sandal"], "ds_c": ["shirt", "sneaker"]}
    info = {}
    for name, classes in groups.items():
        rows = [
            {"image": str(DATA_DIR / "fashion_mnist" / "train" / c.replace(" ", "_") / f), "label": c}
            for c in classes
            for f in sorted(os.listdir(DATA_DIR / "fashion_mnist" / "train" / c))[:6]
        ]
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        info[name] = {"file_name": f"{name}.jsonl"}
    (root / "dataset_info.json").write_text(json.dumps(info))
    return list(groups)


def shared_args(root, cache, name, out):
    args = base_args(
        out,
        finetuning_type="tip",
        dataset=name,
        eval_dataset=name,
        dataset_dir=str(root),
        tip_fixed_cache=True,
        tip_new_dataset=True,
        tip_cache_size=12,
        tip_cache_dir=str(cache),
        tip_augment_epoch=1,
        do_eval=False,
    )
    args.pop("num_shots")
    return args


@pytest.mark.slow
def test_three_runs_adding_datasets_at_once_all_land_as_if_added_in_turn(tmp_path):
    names = subset_datasets(tmp_path)
    cache = tmp_path / "shared"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SHARED_RUN, json.dumps(shared_args(tmp_path, cache, n, tmp_path / f"run_{n}"))],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for n in names
    ]
    for proc in procs:
        assert proc.wait(timeout=600) == 0, proc.stderr.read()[-3000:]
    dim = json.loads((TINY_CLIP / "config.json").read_text())["projection_dim"]
    header = {"checkpoint": str(TINY_CLIP), "feature_dim": dim}
    together = SharedCache.load(str(cache), 12, header)
    order = list(dict.fromkeys(label.split("::")[0] for label in together.names))
    assert sorted(order) == sorted(names) and len(together.names) == 6
    # the same three added one after another, in the order the runs took the lock
    sequential = tmp_path / "sequential"
    for n in order:
        run_exp(shared_args(tmp_path, sequential, n, tmp_path / f"seq_{n}"))
    in_turn = SharedCache.load(str(sequential), 12, header)
    assert in_turn.names == together.names
    assert torch.equal(in_turn.labels, together.labels) and torch.equal(in_turn.counts, together.counts)
    assert torch.allclose(in_turn.keys, together.keys, atol=1e-6)
