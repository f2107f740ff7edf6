#!/usr/bin/env python
"""Build, briefly pre-train and save the tiny offline CLIP checkpoint in data/models/tiny-clip/.

Why: the plugin's tests and examples need a real ``transformers.CLIPModel`` +
``CLIPProcessor`` that load offline (no hub), are small enough to commit (~3.5 MB) and are
not random: a randomly initialised CLIP scores at chance, so "finetuning improved zero-shot
accuracy" could never be checked. We therefore pre-train it for about a minute on the bundled
data only (data/fashion_mnist/train and data/emoji_captions/train) with CLIP's symmetric
contrastive loss, stopping early enough that finetuning still has room to improve it.

The text side uses the real OpenAI CLIP BPE vocabulary (49,408 tokens, rebuilt by
scripts/build_tokenizer.py), so token ids match real CLIP checkpoints. Weights are stored
in float16 to keep the file small; load with ``dtype=torch.float32`` to train on CPU.

Usage (deterministic: seed 0, CPU; about a minute on 2 cores):
    python scripts/build_tokenizer.py && python scripts/build_datasets.py
    python scripts/build_tiny_clip.py
"""

import argparse
import json
import random
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling


DATA = Path(__file__).resolve().parents[1] / "data"
OUT = DATA / "models" / "tiny-clip"
TEMPLATES = [
    "a photo of a {}.",
    "a picture of a {}.",
    "a black and white photo of a {}.",
    "a low resolution photo of a {}.",
    "a {}.",
]
ZERO_SHOT_TEMPLATE = "a photo of a {}."

MODEL_CARD = """\
# tiny-clip

A tiny `transformers.CLIPModel` (about 1.7 M parameters, stored in float16) with the real
OpenAI CLIP BPE tokenizer (49,408 tokens), for offline tests and examples of this plugin.
It is a toy: it has only seen the few hundred images bundled in `data/`.

| part | config |
| --- | --- |
| text | vocab 49408, hidden 32, MLP 64, 2 layers, 2 heads, 77 positions |
| vision | 32x32 images, patch 8, hidden 64, MLP 128, 2 layers, 2 heads |
| projection | 32 |
| image processor | CLIPImageProcessor: resize shortest edge 32 (bicubic), center crop 32x32, OpenAI mean/std |

## How it was built

    python scripts/build_tokenizer.py   # vocab.json + merges.txt from OpenAI's bpe_simple_vocab_16e6.txt.gz
    python scripts/build_datasets.py    # data/fashion_mnist, data/emoji_captions
    python scripts/build_tiny_clip.py   # this folder

Random init (seed 0), then {steps} steps of CLIP's symmetric contrastive loss on CPU (AdamW,
one-cycle LR 2e-3, batches of 10 Fashion-MNIST train images, one per class, captioned with
templates like "a photo of a {{class}}.", plus 22 emoji train image-caption pairs; random
flips and shifts of up to 3 px). Only `data/fashion_mnist/train` and
`data/emoji_captions/train` were used. Training stops early on purpose, so that finetuning
still has room to improve the numbers below.

## Numbers (weights as saved, float16 loaded as float32)

| metric | value | chance |
| --- | --- | --- |
| Fashion-MNIST test zero-shot accuracy, prompt "a photo of a {{}}." (200 images) | {fashion_zero_shot_acc} | 10% |
| emoji test image-to-text Recall@5 (40 images vs their 80 captions) | {emoji_i2t_r5} | 12.2% |
| emoji test text-to-image Recall@5 (80 captions vs 40 images) | {emoji_t2i_r5} | 12.5% |

The same numbers are in `metrics.json`.

## Loading

    model = CLIPModel.from_pretrained("data/models/tiny-clip", dtype=torch.float32)
    processor = CLIPProcessor.from_pretrained("data/models/tiny-clip")

`config.json` says `"dtype": "float16"`, and transformers 5 loads with `dtype="auto"` by
default, so without `dtype=torch.float32` you get a float16 model (poor for CPU training).

## Licenses

- Tokenizer vocabulary: OpenAI CLIP `bpe_simple_vocab_16e6.txt.gz`, MIT License, Copyright (c) 2021 OpenAI.
- Training data: Fashion-MNIST (MIT, Zalando SE) and Noto Emoji images (Apache-2.0, Google)
  with emoji names from iamcal/emoji-data (MIT); see `data/LICENSES.md`.
- The weights were trained from scratch by `scripts/build_tiny_clip.py` and are released
  under the same license as this repository.
"""


def make_model_and_processor() -> tuple[CLIPModel, CLIPProcessor]:
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={
            "vocab_size": 49408,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "pad_token_id": 49407,
            "projection_dim": 32,
        },
        vision_config={
            "image_size": 32,
            "patch_size": 8,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "projection_dim": 32,
        },
        projection_dim=32,
    )
    tokenizer = CLIPTokenizer(
        vocab=str(DATA / "clip_tokenizer" / "vocab.json"),
        merges=str(DATA / "clip_tokenizer" / "merges.txt"),
        model_max_length=77,
    )
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        do_center_crop=True,
        resample=PILImageResampling.BICUBIC,
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
    )
    return CLIPModel(config), CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def load_fashion(split: str) -> tuple[list[Image.Image], list[int], list[str]]:
    classnames = (DATA / "fashion_mnist" / "classnames.txt").read_text().splitlines()
    images, labels = [], []
    for label, name in enumerate(classnames):
        for path in sorted((DATA / "fashion_mnist" / split / name.replace(" ", "_")).glob("*.png")):
            images.append(Image.open(path).convert("RGB"))
            labels.append(label)
    return images, labels, classnames


def load_emoji(split: str) -> tuple[list[Image.Image], list[list[str]]]:
    folder = DATA / "emoji_captions"
    rows = [json.loads(line) for line in (folder / f"{split}.jsonl").read_text().splitlines()]
    return [Image.open(folder / r["image"]).convert("RGB") for r in rows], [r["captions"] for r in rows]


def augment(pixels: torch.Tensor) -> torch.Tensor:
    """Random horizontal flip and a random shift of up to 3 px (edge padding)."""
    flip = torch.rand(len(pixels)) < 0.5
    pixels = torch.where(flip[:, None, None, None], pixels.flip(-1), pixels)
    padded = F.pad(pixels, (3, 3, 3, 3), mode="replicate")
    dx, dy = torch.randint(0, 7, (2,)).tolist()
    return padded[:, :, dy : dy + 32, dx : dx + 32]


def embed(model: CLIPModel, processor: CLIPProcessor, images=None, texts=None) -> torch.Tensor:
    """L2-normalised projected embeddings. (In transformers 5, get_*_features return a model
    output whose ``pooler_output`` holds the projected embedding, not a bare tensor.)"""
    if images is not None:
        out = model.get_image_features(**processor(images=images, return_tensors="pt"))
    else:
        out = model.get_text_features(**processor(text=texts, padding=True, return_tensors="pt"))
    return F.normalize(out.pooler_output, dim=-1)


@torch.no_grad()
def evaluate(model: CLIPModel, processor: CLIPProcessor) -> dict[str, float]:
    """Zero-shot Fashion-MNIST test accuracy and emoji test retrieval Recall@5."""
    model.eval()
    images, labels, classnames = load_fashion("test")
    txt = embed(model, processor, texts=[ZERO_SHOT_TEMPLATE.format(c) for c in classnames])
    pred = (embed(model, processor, images=images) @ txt.T).argmax(-1)
    acc = (pred == torch.tensor(labels)).float().mean().item()

    # Emoji retrieval among the 40 test images and their 80 captions (2 per image):
    # i2t hit if any of the image's captions is in its top 5; t2i hit if its image is in top 5.
    e_images, e_caps = load_emoji("test")
    flat = [c for caps in e_caps for c in caps]
    owner = torch.tensor([i for i, caps in enumerate(e_caps) for _ in caps])
    sim = embed(model, processor, images=e_images) @ embed(model, processor, texts=flat).T
    i2t = (owner[sim.topk(5, dim=1).indices] == torch.arange(len(e_images))[:, None]).any(1).float().mean().item()
    t2i = (sim.T.topk(5, dim=1).indices == owner[:, None]).any(1).float().mean().item()
    model.train()
    return {"fashion_zero_shot_acc": acc, "emoji_i2t_r5": i2t, "emoji_t2i_r5": t2i}


def pretrain(model: CLIPModel, processor: CLIPProcessor, steps: int, emoji_per_batch: int = 22) -> None:
    """CLIP symmetric InfoNCE on batches of 10 Fashion images (one per class, so no two pairs
    in a batch share a caption) + ``emoji_per_batch`` emoji image-caption pairs."""
    f_images, f_labels, classnames = load_fashion("train")
    e_images, e_caps = load_emoji("train")
    f_pix = processor(images=f_images, return_tensors="pt")["pixel_values"]
    e_pix = processor(images=e_images, return_tensors="pt")["pixel_values"]
    by_class = [[i for i, y in enumerate(f_labels) if y == c] for c in range(len(classnames))]

    rng = random.Random(0)
    optim = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(optim, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    model.train()
    for step in range(steps):
        f_idx = [rng.choice(ids) for ids in by_class]
        e_idx = rng.sample(range(len(e_images)), emoji_per_batch)
        texts = [rng.choice(TEMPLATES).format(classnames[f_labels[i]]) for i in f_idx]
        texts += [rng.choice(e_caps[i]) for i in e_idx]
        pixels = augment(torch.cat([f_pix[f_idx], e_pix[e_idx]]))
        out = model(**processor(text=texts, padding=True, return_tensors="pt"), pixel_values=pixels)
        target = torch.arange(len(texts))
        loss = (F.cross_entropy(out.logits_per_image, target) + F.cross_entropy(out.logits_per_text, target)) / 2
        optim.zero_grad()
        loss.backward()
        optim.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step:4d} loss {loss.item():.3f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)

    model, processor = make_model_and_processor()
    print("before pretraining:", evaluate(model, processor))
    start = time.time()
    pretrain(model, processor, args.steps)
    print(f"pretraining took {time.time() - start:.0f}s")

    # Store in float16 (the 49408x32 token embedding dominates: ~3.2 MB instead of ~6.3 MB).
    shutil.rmtree(args.out, ignore_errors=True)
    model.to(torch.float16)
    model.config.dtype = torch.float16
    model.save_pretrained(args.out)
    processor.save_pretrained(args.out)
    # Ship the tokenizer as vocab.json + merges.txt (1.5 MB) rather than tokenizer.json (3.6 MB);
    # CLIPTokenizer / AutoTokenizer / AutoProcessor rebuild the same fast tokenizer from them.
    (args.out / "tokenizer.json").unlink()
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(DATA / "clip_tokenizer" / name, args.out / name)

    # Reload exactly as users will, and report the numbers of the saved (fp16-rounded) weights.
    reloaded, info = CLIPModel.from_pretrained(args.out, dtype=torch.float32, output_loading_info=True)
    assert not any(info.values()), info
    reloaded_proc = CLIPProcessor.from_pretrained(args.out)
    assert reloaded_proc.tokenizer("a photo of a dog.")["input_ids"] == [49406, 320, 1125, 539, 320, 1929, 269, 49407]
    metrics = evaluate(reloaded, reloaded_proc)
    print("after pretraining (reloaded from disk):", json.dumps(metrics))
    (args.out / "metrics.json").write_text(json.dumps({"steps": args.steps, **metrics}, indent=2) + "\n")
    (args.out / "README.md").write_text(
        MODEL_CARD.format(steps=args.steps, **{k: f"{v:.1%}" for k, v in metrics.items()})
    )


if __name__ == "__main__":
    main()
