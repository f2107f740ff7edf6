"""image_to_text at scale: negatives from every rank, and one large contrastive batch trained in cached micro-batches.

The reference is written apart from the implementation: one process computing symmetric InfoNCE over the whole
(global, or un-split) batch with plain torch."""

import contextlib
import math
import os
import socket
import subprocess

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
import yaml
from conftest import CLI, ROOT, TINY_CLIP, i2t_args, run_cli
from llamafactory.train.tuner import run_exp
from safetensors.torch import load_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from llamafactory.clip_finetune.tasks.contrastive import cached_step, contrastive_loss


ROWS = (4, 6)  # rank 0 holds 4 pairs, rank 1 holds 6: unequal local batches


class PairEncoder(nn.Module):
    """A stand-in dual encoder: two linear towers and a learned logit scale (and, SigLIP-like, a learned bias), as
    the task's features_only output."""

    def __init__(self, sigmoid: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.image, self.text = nn.Linear(6, 4), nn.Linear(5, 4)
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.bias = nn.Parameter(torch.tensor(-3.0)) if sigmoid else None

    def forward(self, x, y):
        scale = self.log_scale.exp()
        return {
            "image": F.normalize(self.image(x), dim=-1),
            "text": F.normalize(self.text(y), dim=-1),
            "scale": scale if self.bias is None else torch.stack([scale, self.bias]),
        }


def family_loss(image, text, params, negatives="global"):
    """contrastive_loss with the encoder's logit parameters: a scale, or SigLIP's (scale, bias)."""
    if params.dim() == 1:
        return contrastive_loss(image, text, params[0], negatives, bias=params[1])[0]
    return contrastive_loss(image, text, params, negatives)[0]


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(sum(ROWS), 6, generator=g), torch.randn(sum(ROWS), 5, generator=g)


def reference(sigmoid: bool = False):
    """Loss and gradients of one process on the whole batch: mean cross-entropy both ways, averaged; or SigLIP's
    loss as transformers' ``SiglipModel`` computes it (every pair a binary problem, summed per image, averaged)."""
    model = PairEncoder(sigmoid)
    x, y = batch()
    out = model(x, y)
    if sigmoid:
        scale, bias = out["scale"]
        logits = scale * out["image"] @ out["text"].t() + bias
        labels = 2 * torch.eye(len(x)) - 1
        loss = -F.logsigmoid(labels * logits).sum(dim=-1).mean()
    else:
        logits = out["scale"] * out["image"] @ out["text"].t()
        targets = torch.arange(len(x))
        loss = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2
    loss.backward()
    return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters()}


def worker(rank, world, port, folder, mode, sigmoid=False):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model = DistributedDataParallel(PairEncoder(sigmoid))
        x, y = batch()
        start = sum(ROWS[:rank])
        mine = {"x": x[start : start + ROWS[rank]], "y": y[start : start + ROWS[rank]]}
        if mode == "global":
            out = model(**mine)
            loss = family_loss(out["image"], out["text"], out["scale"])
            loss.backward()
        else:  # cached micro-batches of this rank's pairs, against every rank's features
            loss = cached_step(
                lambda chunk: model(**chunk),
                family_loss,
                mine,
                3,
                lambda surrogate: surrogate.backward(),
                model.no_sync,
            )
        grads = {name: p.grad.clone() for name, p in model.module.named_parameters()}
        torch.save({"loss": loss.item(), "grads": grads}, os.path.join(folder, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("sigmoid", [False, True], ids=["infonce", "siglip"])
@pytest.mark.parametrize("mode", ["global", "cached"])
def test_two_ranks_give_the_gradient_of_one_process_on_the_global_batch(tmp_path, mode, sigmoid):
    """Under DDP (gloo, 2 processes, unequal local batches) the averaged gradients equal one process's on the global
    batch: gathering with gradients while every rank computed the whole loss would double them, and local negatives
    would miss half the pairs; both fail here. The mean of the ranks' losses is the global batch's loss. The same
    for SigLIP's sigmoid loss, its bias included."""
    mp.spawn(worker, args=(2, free_port(), str(tmp_path), mode, sigmoid), nprocs=2, join=True)
    expected_loss, expected = reference(sigmoid)
    results = [torch.load(tmp_path / f"{rank}.pt") for rank in range(2)]
    assert sum(r["loss"] for r in results) / 2 == pytest.approx(expected_loss, rel=1e-5)
    for name, grad in expected.items():
        for r in results:
            assert torch.allclose(r["grads"][name], grad, atol=1e-6, rtol=1e-5), (name, r["grads"][name], grad)
    assert not torch.allclose(2 * expected["image.weight"], expected["image.weight"])  # a doubling would show


@pytest.mark.parametrize("sigmoid", [False, True], ids=["infonce", "siglip"])
@pytest.mark.parametrize("micro_batches", [1, 2, 3, 10])
def test_cached_micro_batches_give_the_gradient_of_the_whole_batch(micro_batches, sigmoid):
    expected_loss, expected = reference(sigmoid)
    model = PairEncoder(sigmoid)
    x, y = batch()
    loss = cached_step(
        lambda chunk: model(**chunk),
        family_loss,
        {"x": x, "y": y},
        micro_batches,
        lambda surrogate: surrogate.backward(),
        contextlib.nullcontext,  # no data-parallel engine to hold back
    )
    assert loss.item() == pytest.approx(expected_loss, rel=1e-6)
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, expected[name], atol=1e-6, rtol=1e-5), name


def test_cached_micro_batches_replay_dropout():
    """A micro-batch encoded again with gradients draws the same dropout mask as its cached features did."""
    model = PairEncoder()
    model.train()
    drop = nn.Dropout(0.5)
    seen = []

    def encode(chunk):
        out = model(drop(chunk["x"]), chunk["y"])
        seen.append(out["image"].detach().clone())
        return out

    x, y = batch()
    cached_step(
        encode,
        lambda i, t, s: contrastive_loss(i, t, s)[0],
        {"x": x, "y": y},
        2,
        lambda s: s.backward(),
        contextlib.nullcontext,
    )
    first, second, again_first, again_second = seen
    assert torch.equal(first, again_first) and torch.equal(second, again_second)


def test_stage_accumulation_trains_like_the_large_batch(tmp_path):
    """Through the stage: batch 4 in 2 cached micro-batches ends with the weights of batch 8 in one go (within float
    tolerance): the loader yields the same 8 pairs per step. SGD, because Adam scales the float noise of gradients
    that are zero in theory (the attention's key biases) up to full steps."""
    common = dict(clip_optim="sgd", learning_rate=0.1, max_steps=3, do_eval=False, lr_scheduler_type="constant")
    run_exp(i2t_args(tmp_path / "big", per_device_train_batch_size=8, **common))
    run_exp(i2t_args(tmp_path / "cached", per_device_train_batch_size=4, contrastive_accumulation_steps=2, **common))
    start = load_file(TINY_CLIP / "model.safetensors")
    big, cached = (
        load_file(tmp_path / "big" / "model.safetensors"),
        load_file(tmp_path / "cached" / "model.safetensors"),
    )
    assert not torch.equal(big["text_projection.weight"], start["text_projection.weight"])  # it trained
    for key in big:
        assert torch.allclose(big[key].float(), cached[key].float(), atol=1e-5), key


def test_torchrun_global_negatives_train_like_one_process_on_the_global_batch(tmp_path):
    """2 ranks x 4 pairs with global negatives (and with 2 cached micro-batches) end with the weights of 1 process x
    8 pairs: each step's global batch is the same 8 pairs (the ranks take alternate batches of one permutation).
    Local negatives do not."""
    common = [
        f"model_name_or_path={TINY_CLIP}",
        "clip_optim=sgd",
        "learning_rate=0.1",
        "max_steps=3",
        "lr_scheduler_type=constant",
        "do_eval=false",
        "dataloader_num_workers=0",
        "bf16=false",
    ]
    config = tmp_path / "i2t.yaml"
    args = i2t_args(tmp_path / "unused")
    args = {k: v for k, v in args.items() if k not in ("output_dir", "max_steps", "learning_rate", "do_eval")}
    config.write_text(yaml.safe_dump(args))
    torchrun = {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2", "OMP_NUM_THREADS": "1"}
    runs = {
        "one": ([f"output_dir={tmp_path / 'one'}", "per_device_train_batch_size=8"], {}),
        "two": ([f"output_dir={tmp_path / 'two'}", "per_device_train_batch_size=4"], torchrun),
        "two_local": (
            [f"output_dir={tmp_path / 'two_local'}", "per_device_train_batch_size=4", "contrastive_negatives=local"],
            torchrun,
        ),
        "two_cached": (
            [
                f"output_dir={tmp_path / 'two_cached'}",
                "per_device_train_batch_size=2",
                "contrastive_accumulation_steps=2",
            ],
            torchrun,
        ),
    }
    for extra, env in runs.values():
        done = run_cli(["train", str(config), *common, *extra], env=env)
        assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    one = load_file(tmp_path / "one" / "model.safetensors")
    for name in ("two", "two_cached"):
        other = load_file(tmp_path / name / "model.safetensors")
        for key in one:
            assert torch.allclose(one[key].float(), other[key].float(), atol=1e-5), (name, key)
    local = load_file(tmp_path / "two_local" / "model.safetensors")  # 4 pairs' negatives per rank: another gradient
    assert not torch.allclose(one["text_projection.weight"], local["text_projection.weight"], atol=1e-5)


def test_the_contrastive_keys_are_refused_for_classification(tmp_path):
    from conftest import base_args

    from llamafactory.clip_finetune.train.arguments import check_clip_args

    for key, value in (("contrastive_accumulation_steps", 2), ("contrastive_negatives", "local")):
        with pytest.raises(ValueError, match="apply to image_to_text"):
            check_clip_args(base_args(tmp_path / "o", **{key: value}))
    with pytest.raises(ValueError, match="contrastive_accumulation_steps must be at least 1, got 0"):
        check_clip_args(i2t_args(tmp_path / "o", contrastive_accumulation_steps=0))


def test_two_nodes_on_loopback_train_like_one_process(tmp_path):
    """NNODES=2, one process per node (LLaMA-Factory's launcher runs torchrun with --nnodes/--node_rank): the two
    node ranks join one group over loopback, and with global negatives end as one process on the global batch."""
    args = {k: v for k, v in i2t_args(tmp_path / "unused").items() if k not in ("max_steps", "do_eval")}
    args.update(clip_optim="sgd", learning_rate=0.1, max_steps=3, lr_scheduler_type="constant", do_eval=False)
    args.update(dataloader_num_workers=0, model_name_or_path=str(TINY_CLIP))
    config = tmp_path / "i2t.yaml"
    config.write_text(yaml.safe_dump(args))
    single = run_cli(["train", str(config), f"output_dir={tmp_path / 'one'}", "per_device_train_batch_size=8"])
    assert single.returncode == 0, single.stderr[-3000:]
    env = {"FORCE_TORCHRUN": "1", "NNODES": "2", "NPROC_PER_NODE": "1", "MASTER_ADDR": "127.0.0.1"}
    env.update(MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1")
    argv = [CLI, "train", str(config), f"output_dir={tmp_path / 'nodes'}", "per_device_train_batch_size=4"]
    path = os.pathsep.join([os.path.dirname(CLI), os.environ.get("PATH", "")])
    nodes = [
        subprocess.Popen(
            argv,
            env={**os.environ, **env, "PATH": path, "NODE_RANK": str(rank)},
            cwd=ROOT,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for rank in (0, 1)
    ]
    logs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "world size: 2" in logs[0] + logs[1]
    one, two = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "nodes" / "model.safetensors")
    for key in one:
        assert torch.allclose(one[key].float(), two[key].float(), atol=1e-5), key
