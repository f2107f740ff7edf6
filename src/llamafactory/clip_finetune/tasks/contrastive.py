"""The image-text contrastive loss with negatives from every rank, and the cached-feature (GradCache) step that
trains one large contrastive batch in micro-batches.

Global negatives follow open_clip's ``local_loss`` with ``gather_with_grad``: each rank scores its own rows against
the features of every rank, so memory grows linearly with the global batch. Each rank returns its share of the
global batch's loss, scaled so that the data-parallel engine's gradient average (DDP, FSDP, DeepSpeed all average
over ranks) yields exactly the gradient of the global batch's mean loss, whatever the local batch sizes. Gathering
with gradients but every rank computing the whole loss would multiply the gradients by the world size: a test
compares with one process running the global batch.
"""

import contextlib
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _GatherRows(torch.autograd.Function):
    """Every rank's rows in rank order. The backward sums every rank's gradient for this rank's rows (an all-reduce
    of the whole gradient, then this rank's slice: gloo has no reduce-scatter)."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        ctx.rank, ctx.sizes = dist.get_rank(), sizes
        padded = local.new_zeros(max(sizes), *local.shape[1:])
        padded[: len(local)] = local
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None


def gather_rows(local: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(all ranks' rows with gradients, this rank's first row in them, the total row count)."""
    count = torch.tensor([len(local)], device=local.device)
    counts = [torch.zeros_like(count) for _ in range(_world())]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    return _GatherRows.apply(local, sizes), sum(sizes[: dist.get_rank()]), sum(sizes)


def contrastive_loss(
    image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, negatives: str = "global", bias=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE of paired rows of normalized ``image`` and ``text`` features, or with a logit ``bias``
    (SigLIP) the pairwise sigmoid loss; (loss, this rank's image-to-text logits). ``negatives``: ``global`` uses
    every rank's pairs (the same as ``local`` in one process)."""
    image, text = image.float(), text.float()
    if bias is not None:
        return sigmoid_loss(image, text, scale, bias, negatives)
    world = _world()
    if negatives != "global" or world == 1:
        logits = scale * image @ text.t()
        targets = torch.arange(len(logits), device=logits.device)
        return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2, logits
    all_image, first, total = gather_rows(image)
    all_text, _, _ = gather_rows(text)
    targets = torch.arange(first, first + len(image), device=image.device)
    logits = scale * image @ all_text.t()  # this rank's images against every caption
    summed = F.cross_entropy(logits, targets, reduction="sum")
    summed = summed + F.cross_entropy(scale * text @ all_image.t(), targets, reduction="sum")
    return summed / 2 * world / total, logits  # the engines average gradients over ranks


def sigmoid_loss(
    image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, negatives: str = "global"
) -> tuple[torch.Tensor, torch.Tensor]:
    """SigLIP's loss (Zhai et al., ICCV 2023; big_vision's ``sigmoid_xent``): every image-text pair is a binary
    problem, ``-log sigmoid(+-(scale * cos + bias))``, summed over each image's row and averaged over images. Across
    ranks each rank scores its images against every rank's texts (gathered with gradients), which covers every pair of
    the global batch once: the all-gather form rather than big_vision's ring of text chunks, because it reuses the
    InfoNCE path's gather and costs the same memory at the batch sizes one node holds."""
    world = _world()
    if negatives == "global" and world > 1:
        text, first, total = gather_rows(text)
    else:
        first, total, world = 0, len(image), 1
    logits = scale * image @ text.t() + bias
    signs = -torch.ones_like(logits)
    rows = torch.arange(len(image), device=logits.device)
    signs[rows, rows + first] = 1.0
    return -F.logsigmoid(signs * logits).sum() * world / total, logits


def _rng_state() -> tuple:
    return torch.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)


@contextlib.contextmanager
def _replayed(state: tuple):
    """Run with the RNG as it was when ``state`` was taken (dropout draws the same mask twice), then go on."""
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if state[1] is not None else []):
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state_all(state[1])
        yield


def cached_step(
    encode: Callable[[dict], dict],
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    batch: dict,
    micro_batches: int,
    backward: Callable[[torch.Tensor], None],
    no_sync: Callable[[], contextlib.AbstractContextManager],
) -> torch.Tensor:
    """One optimizer step's gradients for a contrastive batch, ``micro_batches`` rows at a time (GradCache, Gao et
    al. 2021; open_clip's ``--accum-freq``): encode every micro-batch without gradients, take the loss's gradient
    with respect to the cached features, then encode each micro-batch again with gradients and backpropagate its
    share. The gradient equals the whole batch's; memory is one micro-batch's activations plus the features.

    ``encode(chunk)`` returns ``{"image", "text", "scale"}`` through the (wrapped) model (``scale``: the logit
    scale, or SigLIP's scale and bias); ``backward`` is the engine's;
    ``no_sync`` keeps the data-parallel engine from reducing gradients before the last micro-batch."""
    rows = len(next(v for v in batch.values() if torch.is_tensor(v)))
    bounds = torch.linspace(0, rows, micro_batches + 1).round().long().tolist()
    chunks = [
        {k: v[a:b] if torch.is_tensor(v) else v for k, v in batch.items()}
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        if b > a
    ]
    states, images, texts = [], [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(_rng_state())
            out = encode(chunk)
            images.append(out["image"].detach())
            texts.append(out["text"].detach())
        scale = out["scale"].detach().float()
    image = torch.cat(images).float().requires_grad_()
    text = torch.cat(texts).float().requires_grad_()
    scale.requires_grad_()
    loss = loss_fn(image, text, scale)
    loss.backward()
    start = 0
    for i, (chunk, state) in enumerate(zip(chunks, states, strict=True)):
        end = start + len(images[i])
        last = i == len(chunks) - 1
        with contextlib.nullcontext() if last else no_sync(), _replayed(state):
            out = encode(chunk)
            surrogate = (out["image"].float() * image.grad[start:end]).sum()
            surrogate = surrogate + (out["text"].float() * text.grad[start:end]).sum()
            # the scale's gradient once, on the last micro-batch; zero weight before keeps every pass alike
            surrogate = (
                surrogate + (out["scale"].float() * (scale.grad if last else torch.zeros_like(scale.grad))).sum()
            )
            backward(surrogate)
        start = end
    return loss.detach()
