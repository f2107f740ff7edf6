#!/usr/bin/env python
"""Build, briefly pre-train and save the tiny offline SigLIP, SigLIP 2, MetaCLIP 2 and Chinese-CLIP checkpoints.

Why: besides CLIP (scripts/build_tiny_clip.py), the plugin supports other contrastive families whose
towers, poolings, losses, tokenizers and processors differ from CLIP's. Tests and examples need a
real checkpoint of each that loads offline with the family's own transformers classes and
``AutoProcessor``, is small enough to commit and is not random (a random model scores at chance).
Each is pre-trained for about a minute on the bundled data only (data/fashion_mnist/train and
data/emoji_captions/train) with its family's own loss, stopping early on purpose.

Every tokenizer is real and trained here from the bundled text (the emoji captions of
data/emoji_captions/*.jsonl and the Fashion-MNIST class names filled into prompt templates),
in the family's own format:

- tiny-siglip: SentencePiece unigram ``spiece.model`` (like SigLIP's T5 vocabulary) + SiglipTokenizer
- tiny-siglip2: SentencePiece BPE with byte fallback (like Gemma's), as a GemmaTokenizer ``tokenizer.json``
- tiny-metaclip2: SentencePiece unigram ``sentencepiece.bpe.model`` (like XLM-R/XLM-V) + XLMRobertaTokenizer
- tiny-chinese-clip: WordPiece ``tokenizer.json`` (``tokenizers``' BERT normalisation, deterministic merges),
  BertTokenizer

Weights are stored in float16; load with ``dtype=torch.float32`` to train on CPU.

Usage (deterministic: seed 0, CPU, one thread; well under a minute per model):
    python scripts/build_datasets.py
    python scripts/build_tiny_families.py                      # all four
    python scripts/build_tiny_families.py --only siglip,chinese_clip --steps 300
"""

import argparse
import io
import json
import math
import random
import re
import shutil
import string
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import sentencepiece as spm
import torch
import torch.nn.functional as F
from tokenizers import normalizers, pre_tokenizers
from transformers import (
    AutoProcessor,
    AutoTokenizer,
    BertTokenizer,
    ChineseCLIPConfig,
    ChineseCLIPImageProcessor,
    ChineseCLIPModel,
    ChineseCLIPProcessor,
    CLIPImageProcessor,
    CLIPProcessor,
    GemmaTokenizer,
    MetaClip2Config,
    MetaClip2Model,
    PreTrainedModel,
    ProcessorMixin,
    Siglip2Config,
    Siglip2ImageProcessor,
    Siglip2Model,
    Siglip2Processor,
    SiglipConfig,
    SiglipImageProcessor,
    SiglipModel,
    SiglipProcessor,
    SiglipTokenizer,
    XLMRobertaTokenizer,
)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling


sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_tiny_clip import DATA, TEMPLATES, ZERO_SHOT_TEMPLATE, augment, load_emoji, load_fashion  # noqa: E402


MODELS = DATA / "models"
IMAGE_SIZE, PATCH = 32, 8
SIGLIP2_MAX_PATCHES = (IMAGE_SIZE // PATCH) ** 2  # a 32x32 image is 4x4 patches of 8x8
# The vision tower is the same for all four (and as tiny-clip's).
VISION = {
    "image_size": IMAGE_SIZE,
    "patch_size": PATCH,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
}
TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
PROJECTION = 48  # MetaCLIP 2 and Chinese-CLIP: distinct from both tower widths (32 text, 64 vision)
# Keys that transformers writes into tokenizer_config.json but that describe the load, not the tokenizer.
NOISE_KEYS = ("is_local", "local_files_only", "unk_id")


# --------------------------------------------------------------------------------------------
# Tokenizer training text
# --------------------------------------------------------------------------------------------


def tokenizer_corpus() -> list[str]:
    """Lower-cased bundled text: every emoji caption of data/emoji_captions/*.jsonl (the train
    and test files; val.jsonl and train_fit.jsonl are subsets of train.jsonl) and every
    Fashion-MNIST class name in every prompt template. Only words are learnt, never pairings."""
    lines: list[str] = []
    for path in sorted((DATA / "emoji_captions").glob("*.jsonl")):
        for row in path.read_text().splitlines():
            lines += json.loads(row)["captions"]
    for name in (DATA / "fashion_mnist" / "classnames.txt").read_text().splitlines():
        lines += [t.format(name) for t in TEMPLATES]
    return list(dict.fromkeys(line.lower() for line in lines))  # de-duplicated, first-seen order


def siglip_canonical(text: str) -> str:
    """What SiglipTokenizer does to a text before SentencePiece: lower-case, drop punctuation, squeeze spaces."""
    return re.sub(r"\s+", " ", text.lower().translate(str.maketrans("", "", string.punctuation))).strip()


def train_sentencepiece(lines: list[str], path: Path, **kwargs) -> Path:
    """Train with the sentencepiece package and write the model to ``path``. (Through model_writer
    rather than model_prefix, so that the model does not record the scratch dir's random name.)"""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
        **kwargs,
    )
    path.write_bytes(model.getvalue())
    return path


def train_wordpiece(lines: list[str], vocab_size: int, specials: list[str], alphabet: str) -> list[str]:
    """A WordPiece vocabulary built the way the ``tokenizers`` package's WordPieceTrainer builds one
    (BERT normalisation and pre-tokenisation from ``tokenizers``; every character, then "##" + every
    continuing character, then repeatedly the most frequent adjacent pair merged), but with ties broken
    by the pair's text. The ``tokenizers`` trainer breaks them by hash order, so on this small corpus
    it gives a different vocabulary in every process."""
    normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts = Counter(
        word for line in lines for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line))
    )
    words = [([w[0]] + ["##" + c for c in w[1:]], n) for w, n in sorted(counts.items())]
    firsts = {c for w in counts for c in w} | set(alphabet)
    continuing = {piece for pieces, _ in words for piece in pieces[1:]} | {"##" + c for c in alphabet}
    vocab = list(specials) + sorted(firsts) + sorted(continuing)
    known = set(vocab)
    while len(vocab) < vocab_size:
        pairs: Counter = Counter()
        for pieces, n in words:
            for pair in zip(pieces, pieces[1:], strict=False):
                pairs[pair] += n
        if not pairs:
            break
        a, b = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merged = a + b.removeprefix("##")
        for pieces, _ in words:
            i = 0
            while i < len(pieces) - 1:
                if pieces[i] == a and pieces[i + 1] == b:
                    pieces[i : i + 2] = [merged]
                i += 1
        if merged not in known:
            vocab.append(merged)
            known.add(merged)
    return vocab


# --------------------------------------------------------------------------------------------
# The four families
# --------------------------------------------------------------------------------------------


@dataclass
class Family:
    key: str  # the name for --only
    out: Path
    model_cls: type[PreTrainedModel]
    processor_cls: type[ProcessorMixin]
    tokenizer_cls: type
    build: Callable[[Path], tuple[PreTrainedModel, ProcessorMixin]]  # (scratch dir) -> untrained model, processor
    loss: str  # for the model card
    steps: int  # default pre-training steps (about 30-45 s on one CPU thread)
    text_kwargs: dict = field(default_factory=dict)  # passed to processor(text=...)
    image_kwargs: dict = field(default_factory=dict)  # passed to processor(images=...)
    lower: bool = False  # lower-case texts before the tokenizer (SigLIP 2's tokenizer does not)
    naflex: bool = False  # SigLIP 2: patchified pixel_values + pixel_attention_mask + spatial_shapes
    keep_files: tuple[str, ...] = ()  # tokenizer files to ship from the scratch dir instead of what save writes
    drop_files: tuple[str, ...] = ()


def build_siglip(tmp: Path) -> tuple[SiglipModel, SiglipProcessor]:
    # Like google/siglip-*: a SentencePiece unigram model with <pad>=0, </s>=1, <unk>=2 and no <s>;
    # SiglipTokenizer appends </s> and pads with </s> (id 1), canonicalising the text first.
    # model_input_names=["input_ids"] as in the converted google/siglip-* checkpoints: the model was
    # trained without an attention mask (its pooled token is the last, padding position).
    model_file = train_sentencepiece(
        [siglip_canonical(line) for line in tokenizer_corpus()],
        tmp / "spiece.model",
        model_type="unigram",
        vocab_size=400,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        required_chars=string.digits,
    )
    tokenizer = SiglipTokenizer(vocab_file=str(model_file), model_max_length=64, model_input_names=["input_ids"])
    config = SiglipConfig(
        text_config={
            **TEXT,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 64,
            "projection_size": VISION["hidden_size"],  # text head -> the vision width (SigLIP has no projections)
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "bos_token_id": None,
        },
        vision_config=dict(VISION),
    )
    image_processor = SiglipImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        resample=PILImageResampling.BICUBIC,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    model = SiglipModel(config)
    _init_sigmoid_logits(model)
    return model, SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build_siglip2(tmp: Path) -> tuple[Siglip2Model, Siglip2Processor]:
    # Like google/siglip2-*: a Gemma-style SentencePiece BPE (byte fallback, no dummy prefix, identity
    # normalisation; <pad>=0, <eos>=1, <bos>=2, <unk>=3, <mask>=4) loaded as GemmaTokenizer with the
    # conversion's settings: no <bos>, <eos> appended, right padding, input_ids only. GemmaTokenizer
    # does not lower-case: SigLIP 2 was trained on lower-cased text, so callers must lower-case.
    model_file = train_sentencepiece(
        tokenizer_corpus(),
        tmp / "tokenizer.model",
        model_type="bpe",
        vocab_size=1000,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        eos_piece="<eos>",
        bos_piece="<bos>",
        unk_piece="<unk>",
        user_defined_symbols=["<mask>"],
        byte_fallback=True,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        normalization_rule_name="identity",
    )
    native = GemmaTokenizer.convert_to_native_format(vocab_file=str(model_file))
    tokenizer = GemmaTokenizer(
        vocab=native["vocab"],
        merges=native["merges"],
        add_bos_token=False,
        add_eos_token=True,
        padding_side="right",
        model_max_length=64,
        model_input_names=["input_ids"],
    )
    config = Siglip2Config(
        text_config={
            **TEXT,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 64,
            "projection_size": VISION["hidden_size"],
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "bos_token_id": tokenizer.bos_token_id,
        },
        vision_config={
            **{k: v for k, v in VISION.items() if k != "image_size"},
            "num_patches": SIGLIP2_MAX_PATCHES,  # a 4x4 grid of position embeddings, resized to each image's grid
        },
    )
    image_processor = Siglip2ImageProcessor(
        patch_size=PATCH,
        max_num_patches=SIGLIP2_MAX_PATCHES,
        resample=PILImageResampling.BILINEAR,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    model = Siglip2Model(config)
    _init_sigmoid_logits(model)
    return model, Siglip2Processor(image_processor=image_processor, tokenizer=tokenizer)


def build_metaclip2(tmp: Path) -> tuple[MetaClip2Model, CLIPProcessor]:
    # Like facebook/metaclip-2-* (XLM-V, an XLM-R-format SentencePiece unigram model): XLMRobertaTokenizer
    # maps the SentencePiece ids with fairseq's offset to <s>=0, <pad>=1, </s>=2, <unk>=3, ..., <mask>=last.
    # MetaClip2 pools the text at the first </s> (config eos_token_id), so that must be 2.
    # Upper-case letters and digits are forced into the vocabulary so "A photo" is not <unk>.
    model_file = train_sentencepiece(
        tokenizer_corpus(),
        tmp / "sentencepiece.bpe.model",
        model_type="unigram",
        vocab_size=400,
        required_chars=string.ascii_uppercase + string.digits,
    )
    tokenizer = XLMRobertaTokenizer.from_pretrained(model_file.parent, model_max_length=77)
    config = MetaClip2Config(
        text_config={
            **TEXT,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 77,
            "projection_dim": PROJECTION,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        vision_config={**VISION, "projection_dim": PROJECTION},
        projection_dim=PROJECTION,
    )
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_center_crop=True,
        resample=PILImageResampling.BICUBIC,
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
    )
    return MetaClip2Model(config), CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build_chinese_clip(tmp: Path) -> tuple[ChineseCLIPModel, ChineseCLIPProcessor]:
    # Like OFA-Sys/chinese-clip-*: a BERT WordPiece vocab.txt (lower-casing, [PAD]=0) and a BERT text
    # tower whose feature is the [CLS] (first) token, projected; token_type_ids are model inputs.
    vocab = train_wordpiece(
        tokenizer_corpus(),
        vocab_size=1000,
        specials=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
        alphabet=string.ascii_lowercase + string.digits,
    )
    (tmp / "vocab.txt").write_text("".join(piece + "\n" for piece in vocab))
    tokenizer = BertTokenizer.from_pretrained(tmp, model_max_length=64)
    config = ChineseCLIPConfig(
        text_config={
            **TEXT,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 64,
            "type_vocab_size": 2,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": None,  # BERT has none ([CLS] is its first token)
        },
        vision_config={**VISION, "projection_dim": PROJECTION},
        projection_dim=PROJECTION,
    )
    # Chinese-CLIP resizes straight to the square size (no crop), bicubic, OpenAI mean/std.
    image_processor = ChineseCLIPImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_center_crop=False,
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        resample=PILImageResampling.BICUBIC,
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
    )
    model = ChineseCLIPModel(config)
    # transformers 5.6's ChineseCLIPPreTrainedModel._init_weights has no branch for the BERT text layers,
    # so its catch-all gives every text nn.Linear std = initializer_factor = 1.0 (BERT uses
    # initializer_range = 0.02); from that init the text tower saturates and training collapses.
    with torch.no_grad():
        for module in model.text_model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, config.text_config.initializer_range)
                module.bias.zero_()
    return model, ChineseCLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def _init_sigmoid_logits(model: SiglipModel | Siglip2Model) -> None:
    """The sigmoid loss's published initialisation (t' = log 10, b = -10); transformers' own init is 0 and 0."""
    with torch.no_grad():
        model.logit_scale.fill_(math.log(10.0))
        model.logit_bias.fill_(-10.0)


FAMILIES = {
    "siglip": Family(
        key="siglip",
        out=MODELS / "tiny-siglip",
        model_cls=SiglipModel,
        processor_cls=SiglipProcessor,
        tokenizer_cls=SiglipTokenizer,
        build=build_siglip,
        loss="SigLIP's pairwise sigmoid loss (`SiglipModel(..., return_loss=True)`)",
        steps=1000,
        text_kwargs={"padding": "max_length", "max_length": 64},
        lower=True,
    ),
    "siglip2": Family(
        key="siglip2",
        out=MODELS / "tiny-siglip2",
        model_cls=Siglip2Model,
        processor_cls=Siglip2Processor,
        tokenizer_cls=GemmaTokenizer,
        build=build_siglip2,
        loss="SigLIP's pairwise sigmoid loss (`Siglip2Model(..., return_loss=True)`)",
        steps=1000,
        text_kwargs={"padding": "max_length", "max_length": 64},
        image_kwargs={"patch_size": PATCH, "max_num_patches": SIGLIP2_MAX_PATCHES},
        lower=True,
        naflex=True,
    ),
    "metaclip2": Family(
        key="metaclip2",
        out=MODELS / "tiny-metaclip2",
        model_cls=MetaClip2Model,
        processor_cls=CLIPProcessor,
        tokenizer_cls=XLMRobertaTokenizer,
        build=build_metaclip2,
        loss="CLIP's symmetric contrastive (InfoNCE) loss (`MetaClip2Model(..., return_loss=True)`)",
        steps=1000,
        text_kwargs={"padding": True},
        keep_files=("sentencepiece.bpe.model",),  # 0.25 MB instead of a 0.35 MB tokenizer.json
        drop_files=("tokenizer.json",),
    ),
    "chinese_clip": Family(
        key="chinese_clip",
        out=MODELS / "tiny-chinese-clip",
        model_cls=ChineseCLIPModel,
        processor_cls=ChineseCLIPProcessor,
        tokenizer_cls=BertTokenizer,
        build=build_chinese_clip,
        loss="CLIP's symmetric contrastive (InfoNCE) loss (`ChineseCLIPModel(..., return_loss=True)`)",
        steps=1500,
        text_kwargs={"padding": True},
        # tokenizer.json (22 KB), not vocab.txt: BertTokenizer built from a vocab file goes through a path of
        # `tokenizers` that is deprecated (a DeprecationWarning on every load)
        keep_files=(),
        drop_files=(),
    ),
}


# --------------------------------------------------------------------------------------------
# Inputs, evaluation, pre-training
# --------------------------------------------------------------------------------------------


def patchify(pixels: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/p * W/p, p * p * C), in Siglip2ImageProcessor's patch order."""
    b, c, h, w = pixels.shape
    patches = pixels.reshape(b, c, h // PATCH, PATCH, w // PATCH, PATCH).permute(0, 2, 4, 3, 5, 1)
    return patches.reshape(b, (h // PATCH) * (w // PATCH), PATCH * PATCH * c)


def unpatchify(patches: torch.Tensor, grid: int) -> torch.Tensor:
    b = len(patches)
    pixels = patches.reshape(b, grid, grid, PATCH, PATCH, -1).permute(0, 5, 1, 3, 2, 4)
    return pixels.reshape(b, -1, grid * PATCH, grid * PATCH)


def text_inputs(fam: Family, processor: ProcessorMixin, texts: list[str]) -> dict:
    texts = [t.lower() for t in texts] if fam.lower else texts
    return dict(processor(text=texts, return_tensors="pt", **fam.text_kwargs))


def image_pixels(fam: Family, processor: ProcessorMixin, images) -> torch.Tensor:
    """Processed images as a (N, 3, 32, 32) tensor (SigLIP 2's 4x4 patches are put back together)."""
    out = processor(images=images, return_tensors="pt", **fam.image_kwargs)
    if not fam.naflex:
        return out["pixel_values"]
    grid = IMAGE_SIZE // PATCH
    assert (out["spatial_shapes"] == grid).all() and out["pixel_attention_mask"].all(), "expected 4x4 patches"
    pixels = unpatchify(out["pixel_values"], grid)
    assert torch.equal(patchify(pixels), out["pixel_values"])
    return pixels


def image_inputs(fam: Family, pixels: torch.Tensor) -> dict:
    if not fam.naflex:
        return {"pixel_values": pixels}
    n, grid = len(pixels), IMAGE_SIZE // PATCH
    return {
        "pixel_values": patchify(pixels),
        "pixel_attention_mask": torch.ones(n, grid * grid, dtype=torch.int32),
        "spatial_shapes": torch.tensor([[grid, grid]] * n),
    }


def embed(fam: Family, model: PreTrainedModel, processor: ProcessorMixin, images=None, texts=None) -> torch.Tensor:
    """L2-normalised embeddings in the shared space (``pooler_output`` of get_*_features)."""
    if images is not None:
        out = model.get_image_features(**image_inputs(fam, image_pixels(fam, processor, images)))
    else:
        out = model.get_text_features(**text_inputs(fam, processor, texts))
    return F.normalize(out.pooler_output.float(), dim=-1)


@torch.no_grad()
def evaluate(fam: Family, model: PreTrainedModel, processor: ProcessorMixin) -> dict[str, float]:
    """Zero-shot Fashion-MNIST test accuracy and emoji test retrieval Recall@5 (as build_tiny_clip.py)."""
    model.eval()
    images, labels, classnames = load_fashion("test")
    txt = embed(fam, model, processor, texts=[ZERO_SHOT_TEMPLATE.format(c) for c in classnames])
    pred = (embed(fam, model, processor, images=images) @ txt.T).argmax(-1)
    acc = (pred == torch.tensor(labels)).float().mean().item()

    e_images, e_caps = load_emoji("test")
    flat = [c for caps in e_caps for c in caps]
    owner = torch.tensor([i for i, caps in enumerate(e_caps) for _ in caps])
    sim = embed(fam, model, processor, images=e_images) @ embed(fam, model, processor, texts=flat).T
    i2t = (owner[sim.topk(5, dim=1).indices] == torch.arange(len(e_images))[:, None]).any(1).float().mean().item()
    t2i = (sim.T.topk(5, dim=1).indices == owner[:, None]).any(1).float().mean().item()
    model.train()
    return {"fashion_zero_shot_acc": acc, "emoji_i2t_r5": i2t, "emoji_t2i_r5": t2i}


def pretrain(fam: Family, model: PreTrainedModel, processor: ProcessorMixin, steps: int, lr: float) -> None:
    """The family's own loss on batches of 10 Fashion images (one per class, so no two pairs in a batch
    share a caption) + 22 emoji image-caption pairs, with random flips and shifts (as build_tiny_clip.py)."""
    f_images, f_labels, classnames = load_fashion("train")
    e_images, e_caps = load_emoji("train")
    f_pix = image_pixels(fam, processor, f_images)
    e_pix = image_pixels(fam, processor, e_images)
    by_class = [[i for i, y in enumerate(f_labels) if y == c] for c in range(len(classnames))]

    rng = random.Random(0)
    optim = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(optim, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    for step in range(steps):
        f_idx = [rng.choice(ids) for ids in by_class]
        e_idx = rng.sample(range(len(e_images)), 22)
        texts = [rng.choice(TEMPLATES).format(classnames[f_labels[i]]) for i in f_idx]
        texts += [rng.choice(e_caps[i]) for i in e_idx]
        pixels = augment(torch.cat([f_pix[f_idx], e_pix[e_idx]]))
        out = model(**text_inputs(fam, processor, texts), **image_inputs(fam, pixels), return_loss=True)
        optim.zero_grad()
        out.loss.backward()
        optim.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"  step {step:4d} loss {out.loss.item():.3f}", flush=True)


# --------------------------------------------------------------------------------------------
# Saving and checking what was saved
# --------------------------------------------------------------------------------------------


def save(fam: Family, model: PreTrainedModel, processor: ProcessorMixin, scratch: Path) -> None:
    shutil.rmtree(fam.out, ignore_errors=True)
    model.to(torch.float16)
    model.config.dtype = torch.float16
    model.save_pretrained(fam.out)
    processor.save_pretrained(fam.out)
    for name in fam.drop_files:
        (fam.out / name).unlink()
    for name in fam.keep_files:
        shutil.copy(scratch / name, fam.out / name)
    config_path = fam.out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    for key in NOISE_KEYS:
        config.pop(key, None)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for path in fam.out.iterdir():
        path.chmod(0o644)  # save_pretrained writes model.safetensors as 0600


def check_tokenizer(fam: Family, processor: ProcessorMixin) -> dict:
    """Round-trips through the reloaded processor; returns the facts for the model card."""
    tok = processor.tokenizer
    assert type(tok) is fam.tokenizer_cls, type(tok)
    assert tok.model_max_length == (77 if fam.key == "metaclip2" else 64), tok.model_max_length
    text = "a photo of a dog."
    if fam.key in ("siglip", "siglip2"):
        enc = processor(text=[text], **fam.text_kwargs)
        ids = enc["input_ids"][0]
        assert list(enc) == ["input_ids"], list(enc)  # no attention_mask, as the real checkpoints
        assert len(ids) == 64, len(ids)
        n = ids.index(tok.eos_token_id) + 1
        assert ids[n:] == [tok.pad_token_id] * (64 - n), ids  # </s> (or <eos>) then right padding
        assert tok.bos_token_id is None or tok.bos_token_id not in ids
        decoded = tok.decode(ids[: n - 1])
        if fam.key == "siglip":
            # SiglipTokenizer lower-cases and drops punctuation itself
            assert tok("A Photo of a DOG!")["input_ids"] == tok(text)["input_ids"]
            assert decoded == "a photo of a dog", decoded
        else:
            # GemmaTokenizer is cased (callers lower-case, as for google/siglip2-*) and falls back to bytes
            assert decoded == text, decoded
            assert tok.decode(tok("Ünïcode")["input_ids"], skip_special_tokens=True) == "Ünïcode"
            assert tok.unk_token_id not in tok("Ünïcode")["input_ids"]
            image = load_fashion("test")[0][:1]
            both = processor(text=[text], images=image, return_tensors="pt", **fam.image_kwargs)
            assert len(both["input_ids"][0]) == 64  # Siglip2Processor pads to 64 by default
            assert both["spatial_shapes"].tolist() == [[4, 4]], both["spatial_shapes"]
            assert processor.image_processor(image, return_tensors="pt")["spatial_shapes"].tolist() == [[4, 4]]
            shapes = processor(images=image, return_tensors="pt")["spatial_shapes"].tolist()
            if shapes != [[4, 4]]:
                print(f"  note: processor(images=...) without patch_size/max_num_patches gives {shapes} patches")
    else:
        enc = processor(text=[text, "an emoji of a red heart (smileys & emotion)"], padding=True)
        ids = enc["input_ids"][0]
        if fam.key == "metaclip2":
            assert list(enc) == ["input_ids", "attention_mask"], list(enc)
            assert ids[0] == tok.bos_token_id == 0 and tok.pad_token_id == 1 and tok.eos_token_id == 2
            n = ids.index(tok.eos_token_id) + 1  # MetaClip2 pools here (first eos_token_id)
            assert ids[n:] == [tok.pad_token_id] * (len(ids) - n)
            assert tok.unk_token_id not in tok("A photo of a T-shirt 42.")["input_ids"]
        else:
            assert list(enc) == ["input_ids", "token_type_ids", "attention_mask"], list(enc)
            assert ids[0] == tok.cls_token_id and tok.sep_token_id in ids and tok.pad_token_id == 0
            assert tok("A Photo of a DOG.")["input_ids"] == tok(text)["input_ids"]  # lower-cases
        assert tok.decode(ids, skip_special_tokens=True) == text, tok.decode(ids, skip_special_tokens=True)
    return {
        "class": type(tok).__name__,
        "vocab": len(tok),
        "specials": {name: getattr(tok, f"{name}_token_id") for name in ("pad", "bos", "eos", "unk", "cls", "sep")},
        "example": tok.convert_ids_to_tokens(tok("a photo of a t-shirt.")["input_ids"]),
    }


def check_saved(fam: Family) -> tuple[PreTrainedModel, ProcessorMixin, dict]:
    """Reload exactly as users will: the family's own model class and AutoProcessor / AutoTokenizer."""
    model, info = fam.model_cls.from_pretrained(fam.out, dtype=torch.float32, output_loading_info=True)
    assert not any(info.values()), info
    assert all(p.dtype == torch.float32 for p in model.parameters())
    processor = AutoProcessor.from_pretrained(fam.out)
    assert type(processor) is fam.processor_cls, type(processor)
    assert type(AutoTokenizer.from_pretrained(fam.out)) is fam.tokenizer_cls
    return model, processor, check_tokenizer(fam, processor)


# --------------------------------------------------------------------------------------------
# Model cards
# --------------------------------------------------------------------------------------------

CARD = """\
# {name}

A tiny `transformers.{model}` ({params:.2f} M parameters, stored in float16) with a tiny real
{tok_kind}
trained on the bundled text, for offline tests and examples of this plugin.
It is a toy: it has only seen the few hundred images bundled in `data/`.

| part | config |
| --- | --- |
{rows}

{notes}

## How it was built

    python scripts/build_datasets.py          # data/fashion_mnist, data/emoji_captions
    python scripts/build_tiny_families.py --only {key}

The tokenizer was trained first (deterministically) on the lower-cased emoji captions of
`data/emoji_captions/*.jsonl` (train and test captions: the tokenizer learns their words, never
which image they describe) and the 10 Fashion-MNIST class names in 5 prompt templates.
Then random init (seed 0) and {steps} steps of
{loss}
on CPU (one thread; AdamW, one-cycle LR {lr}, batches of 10 Fashion-MNIST train images, one per
class, captioned with templates like "a photo of a {{class}}.", plus 22 emoji train image-caption
pairs; random flips and shifts of up to 3 px). Only `data/fashion_mnist/train` and
`data/emoji_captions/train` images were trained on. Training stops early on purpose, so that
finetuning still has room to improve the numbers below.

## Numbers (weights as saved, float16 loaded as float32)

| metric | value | chance |
| --- | --- | --- |
| Fashion-MNIST test zero-shot accuracy, prompt "a photo of a {{}}." (200 images) | {fashion_zero_shot_acc} | 10% |
| emoji test image-to-text Recall@5 (40 images vs their 80 captions) | {emoji_i2t_r5} | 12.2% |
| emoji test text-to-image Recall@5 (80 captions vs 40 images) | {emoji_t2i_r5} | 12.5% |

The same numbers are in `metrics.json`.

## Loading

{loading}

`config.json` says `"dtype": "float16"`, and transformers 5 loads with `dtype="auto"` by
default, so without `dtype=torch.float32` you get a float16 model (poor for CPU training).

## Licenses

- Training data (for the weights and the tokenizer): Fashion-MNIST (MIT, Zalando SE) and Noto Emoji
  images (Apache-2.0, Google) with emoji names from iamcal/emoji-data (MIT); see `data/LICENSES.md`.
- The weights and the tokenizer were made from scratch by `scripts/build_tiny_families.py` (no
  third-party vocabulary or weights) and are released under the same license as this repository.
"""

VISION_ROW = "vision | {image}, patch 8, hidden 64, MLP 128, 2 layers, 2 heads"
TEXT_ROW = "text | vocab {vocab}, hidden 32, MLP 64, 2 layers, 2 heads, {positions} positions"

CARDS = {
    "siglip": {
        "model": "SiglipModel",
        "tok_kind": "SentencePiece unigram tokenizer (`spiece.model`, SiglipTokenizer)",
        "rows": [
            TEXT_ROW + "; feature: the last position (padding), through `head` (32 -> 64)",
            VISION_ROW.format(image="32x32 images") + "; attention-pooling head",
            "shared space | 64 (`text_config.projection_size` = vision hidden 64; SigLIP has no projections)",
            "logits | `logit_scale` and `logit_bias` (sigmoid loss), initialised to log 10 and -10",
            "tokenizer | SiglipTokenizer from `spiece.model`, {vocab} pieces: `</s>`={eos} (also the padding "
            "token), `<unk>`={unk}, `<pad>`=0 (unused), no `<s>`; appends `</s>`; lower-cases and drops "
            "punctuation itself; returns `input_ids` only",
            "image processor | SiglipImageProcessor: resize to 32x32 (no crop, bicubic), mean/std 0.5",
        ],
        "notes": "SigLIP's text feature is the hidden state at the last position, so texts must be padded\n"
        'to the full 64 tokens (`padding="max_length", max_length=64`), as SigLIP was trained; the\n'
        "tokenizer returns no `attention_mask` (as google/siglip-* do) and the model was trained without one.",
        "loading": '    model = SiglipModel.from_pretrained("data/models/tiny-siglip", dtype=torch.float32)\n'
        '    processor = AutoProcessor.from_pretrained("data/models/tiny-siglip")  # SiglipProcessor\n'
        '    inputs = processor(text=["a photo of a dog."], padding="max_length", max_length=64, return_tensors="pt")',
    },
    "siglip2": {
        "model": "Siglip2Model",
        "tok_kind": "Gemma-style SentencePiece BPE tokenizer (GemmaTokenizer, `tokenizer.json`)",
        "rows": [
            TEXT_ROW + "; feature: the last position (padding), through `head` (32 -> 64)",
            VISION_ROW.format(image="NaFlex (variable resolution, at most 16 patches)")
            + "; 4x4 position-embedding grid (`num_patches` 16) resized to each image's grid; attention-pooling head",
            "shared space | 64 (`text_config.projection_size` = vision hidden 64)",
            "logits | `logit_scale` and `logit_bias` (sigmoid loss), initialised to log 10 and -10",
            "tokenizer | GemmaTokenizer, {vocab} tokens (BPE, byte fallback): `<pad>`={pad}, `<eos>`={eos}, "
            "`<bos>`={bos} (not added), `<unk>`={unk}, `<mask>`=4; appends `<eos>`, pads right; cased; "
            "returns `input_ids` only",
            "image processor | Siglip2ImageProcessor: patch 8, `max_num_patches` 16 (a square image -> 32x32, "
            "4x4 patches), bilinear, mean/std 0.5",
        ],
        "notes": "As google/siglip2-* in transformers 5.6, `tokenizer_config.json` names `GemmaTokenizer`, which\n"
        "does not lower-case: lower-case texts yourself (SigLIP 2 was trained on lower-cased text). Texts must\n"
        "be padded to 64 tokens (Siglip2Processor does so by default). **Pass `patch_size=8, max_num_patches=16`\n"
        "when calling the processor on images**: Siglip2Processor's built-in defaults (patch 16, 256 patches)\n"
        "override the image processor's saved values in transformers 5.6 (calling `processor.image_processor`\n"
        "directly uses the saved ones). Without them the patches are 768 wide and the model raises.",
        "loading": '    model = Siglip2Model.from_pretrained("data/models/tiny-siglip2", dtype=torch.float32)\n'
        '    processor = AutoProcessor.from_pretrained("data/models/tiny-siglip2")  # Siglip2Processor\n'
        '    inputs = processor(text=["a photo of a dog."], images=images, patch_size=8, max_num_patches=16,\n'
        '                       return_tensors="pt")  # input_ids, pixel_values, pixel_attention_mask, spatial_shapes',
    },
    "metaclip2": {
        "model": "MetaClip2Model",
        "tok_kind": "SentencePiece unigram tokenizer (XLM-R format, XLMRobertaTokenizer)",
        "rows": [
            TEXT_ROW + "; causal; feature: the first `</s>` (`text_config.eos_token_id`={eos})",
            VISION_ROW.format(image="32x32 images") + "; feature: the class token",
            "projection | 48 (text 32 -> 48, vision 64 -> 48), `logit_scale` init 2.6592",
            "tokenizer | XLMRobertaTokenizer from `sentencepiece.bpe.model` ({vocab} tokens with fairseq's "
            "offset): `<s>`={bos}, `<pad>`={pad}, `</s>`={eos}, `<unk>`={unk}, `<mask>`={vocab_last}; cased "
            "(trained on lower-cased text; A-Z and 0-9 forced into the vocabulary)",
            "image processor | CLIPImageProcessor: resize shortest edge 32 (bicubic), center crop 32x32, "
            "OpenAI mean/std",
        ],
        "notes": "AutoProcessor gives a `CLIPProcessor` (transformers maps metaclip_2 to it). The tokenizer is\n"
        "rebuilt from `sentencepiece.bpe.model` on load (needs the `sentencepiece` and `protobuf` packages).",
        "loading": '    model = MetaClip2Model.from_pretrained("data/models/tiny-metaclip2", dtype=torch.float32)\n'
        '    processor = AutoProcessor.from_pretrained("data/models/tiny-metaclip2")  # CLIPProcessor\n'
        '    inputs = processor(text=["a photo of a dog."], images=images, padding=True, return_tensors="pt")',
    },
    "chinese_clip": {
        "model": "ChineseCLIPModel",
        "tok_kind": "WordPiece tokenizer (`tokenizer.json`, BertTokenizer)",
        "rows": [
            "text | BERT: vocab {vocab}, hidden 32, MLP 64, 2 layers, 2 heads, 64 positions, 2 token types, "
            "dropout 0.1; feature: the `[CLS]` (first) token, no pooler layer",
            VISION_ROW.format(image="32x32 images") + "; feature: the class token",
            "projection | 48 (text 32 -> 48, vision 64 -> 48), `logit_scale` init 2.6592",
            "tokenizer | BertTokenizer from `tokenizer.json` (WordPiece: `tokenizers`' BERT normaliser and "
            "pre-tokeniser, its trainer's merge rule with ties broken by text): `[PAD]`={pad}, "
            "`[UNK]`={unk}, `[CLS]`={cls}, `[SEP]`={sep}, `[MASK]`=4; lower-cases; returns `token_type_ids`",
            "image processor | ChineseCLIPImageProcessor: resize to 32x32 (no crop, bicubic), OpenAI mean/std",
        ],
        "notes": "The vocabulary is English only (the bundled captions are English); the tokenizer still splits\n"
        "CJK characters like BERT's (they come out as `[UNK]`). The text tower's linear layers were initialised\n"
        "N(0, 0.02) as BERT's before pre-training: transformers 5.6's ChineseCLIP init gives them std 1.0, from\n"
        "which training collapses.",
        "loading": "    model = ChineseCLIPModel.from_pretrained(\n"
        '        "data/models/tiny-chinese-clip", dtype=torch.float32\n'
        "    )\n"
        '    processor = AutoProcessor.from_pretrained("data/models/tiny-chinese-clip")  # ChineseCLIPProcessor\n'
        '    inputs = processor(text=["a photo of a dog."], images=images, padding=True, return_tensors="pt")',
    },
}


def write_card(fam: Family, model: PreTrainedModel, tok: dict, steps: int, lr: float, metrics: dict) -> None:
    card = CARDS[fam.key]
    ids = tok["specials"]
    positions = 77 if fam.key == "metaclip2" else 64
    rows = "\n".join(
        "| " + row.format(vocab=tok["vocab"], vocab_last=tok["vocab"] - 1, positions=positions, **ids) + " |"
        for row in card["rows"]
    )
    text = CARD.format(
        name=fam.out.name,
        key=fam.key,
        model=card["model"],
        tok_kind=card["tok_kind"],
        params=sum(p.numel() for p in model.parameters()) / 1e6,
        rows=rows,
        notes=card["notes"],
        loading=card["loading"],
        steps=steps,
        loss=fam.loss,
        lr=f"{lr:.0e}".replace("e-0", "e-"),
        **{k: f"{v:.1%}" for k, v in metrics.items()},
    )
    (fam.out / "README.md").write_text(text)


# --------------------------------------------------------------------------------------------


def build(fam: Family, steps: int, lr: float) -> dict:
    print(f"== {fam.out.name}", flush=True)
    start = time.time()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model, processor = fam.build(Path(tmp))
        print(f"  tokenizer trained in {time.time() - start:.0f}s", flush=True)
        print("  before pretraining:", json.dumps(evaluate(fam, model, processor)), flush=True)
        train_start = time.time()
        pretrain(fam, model, processor, steps, lr)
        print(f"  pretraining took {time.time() - train_start:.0f}s", flush=True)
        save(fam, model, processor, Path(tmp))
    reloaded, reloaded_proc, tok = check_saved(fam)
    metrics = evaluate(fam, reloaded, reloaded_proc)
    print("  after pretraining (reloaded from disk):", json.dumps(metrics), flush=True)
    (fam.out / "metrics.json").write_text(json.dumps({"steps": steps, **metrics}, indent=2) + "\n")
    write_card(fam, reloaded, tok, steps, lr, metrics)
    seconds = time.time() - start
    sizes = {p.name: p.stat().st_size for p in sorted(fam.out.iterdir())}
    print(f"  built in {seconds:.0f}s; tokenizer {tok}; files {sizes}", flush=True)
    return {"seconds": seconds, "metrics": metrics, "tokenizer": tok, "files": sizes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default=",".join(FAMILIES), help=f"comma-separated subset of {','.join(FAMILIES)}")
    ap.add_argument("--steps", type=int, help="pre-training steps (default: 1000, 1500 for chinese_clip)")
    ap.add_argument("--lr", type=float, default=2e-3)
    args = ap.parse_args()
    keys = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = sorted(set(keys) - set(FAMILIES))
    if unknown:
        ap.error(f"unknown families {unknown}; choose from {list(FAMILIES)}")
    torch.use_deterministic_algorithms(True)
    # One thread: the same float results on any machine, and no slowdown (tens of times) when other
    # processes compete for the cores.
    torch.set_num_threads(1)
    for key in keys:
        fam = FAMILIES[key]
        build(fam, args.steps or fam.steps, args.lr)


if __name__ == "__main__":
    main()
