"""Training-step speed of the clip stage against a plain PyTorch loop, same model, batch and precision.

    python evaluation/benchmark.py --tiny                  # bundled tiny CLIP on CPU
    python evaluation/benchmark.py --bf16 [--compile]      # ViT-B/16 architecture (random weights) on a GPU
    python evaluation/benchmark.py --bf16 --family siglip2 # SigLIP 2's (or metaclip_2's) ViT-B/16 architecture
    python evaluation/benchmark.py --from_files [--tiny]   # input pipeline from JPEG files: per item vs decoded once

Both sides read the same in-memory uint8 images (so image decoding is out of the comparison) and normalize on the
device. The stage side is the real ClipTaskModel + ClipTrainer (HF Trainer); the plain side is a hand-written loop
over the family's own ``get_image_features`` with AdamW. Prints images/s for both, their ratio, and peak GPU memory,
as one JSON line.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path


os.environ.setdefault(
    "DISABLE_VERSION_CHECK", "1"
)  # GPU images may carry a newer transformers than LLaMA-Factory pins

import torch  # noqa: E402
import torch.nn.functional as F
import transformers  # noqa: E402
from torch.utils.data import DataLoader, Dataset
from transformers import CLIPModel, CLIPProcessor, TrainerCallback, TrainingArguments

from llamafactory.clip_finetune.data.datasets import EpochSeeded, collate
from llamafactory.clip_finetune.data.device_decode import assemble
from llamafactory.clip_finetune.data.transforms import ImageSpec
from llamafactory.clip_finetune.hparams import ClipDataArguments, ClipFinetuningArguments
from llamafactory.clip_finetune.hparams.training_defaults import STAGE_DEFAULTS
from llamafactory.clip_finetune.methods import get_method
from llamafactory.clip_finetune.methods.abs import AbsCallback
from llamafactory.clip_finetune.methods.feature_cache import cache_image_views
from llamafactory.clip_finetune.model import ClipTaskModel
from llamafactory.clip_finetune.model.families import TextTokenizer, family_of
from llamafactory.clip_finetune.tasks import ClassificationTask
from llamafactory.clip_finetune.train.trainer import ClipTrainer


ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "data" / "models" / "tiny-clip"
# openai/clip-vit-base-patch16's architecture.
VIT_B16 = {
    "vision_config": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "image_size": 224,
        "patch_size": 16,
    },
    "text_config": {
        "hidden_size": 512,
        "intermediate_size": 2048,
        "num_hidden_layers": 12,
        "num_attention_heads": 8,
        "vocab_size": 49408,
        "max_position_embeddings": 77,
        "eos_token_id": 49407,
    },
    "projection_dim": 512,
}
# The other families' ViT-B/16 (random weights; the text tower only encodes the class prompts once, so its vocabulary
# stays CLIP's, which the bundled tokenizer feeds): google/siglip2-base-patch16-224 is a SiglipModel with an attention-
# pooling head and no projection; facebook/metaclip-2-worldwide-b16 has CLIP's layout.
VIT_B16_FAMILIES = {
    "clip": ("CLIPConfig", VIT_B16),
    "metaclip_2": ("MetaClip2Config", VIT_B16),
    "siglip2": (
        "SiglipConfig",
        {
            "vision_config": {**VIT_B16["vision_config"], "hidden_act": "gelu_pytorch_tanh"},
            "text_config": {
                **VIT_B16["text_config"],
                "hidden_size": 768,
                "intermediate_size": 3072,
                "num_attention_heads": 12,
                "max_position_embeddings": 64,
                "projection_size": 768,
            },
        },
    ),
}
CLASSES = [f"class {i}" for i in range(100)]
MAX_GRAD_NORM = 1.0  # the Trainer's default; the plain loop clips too


class UInt8Images(EpochSeeded, Dataset):
    """Random uint8 images and labels that follow the stage's dataset contract (``tasks.TrainingSet``); they have no
    random augmentation, so an item is the same in every epoch."""

    def __init__(self, n: int, size: int, classes: int):
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)
        self.labels = torch.randint(0, classes, (n,), generator=generator)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i, epoch=None):
        return {"pixel_values": self.images[i], **self.targets(i)}

    def targets(self, i):
        return {"labels": self.labels[i]}

    def batch_targets(self, indices, generator=None):
        return {"labels": self.labels[indices]}


def build_model(tiny: bool, attn: str, family: str = "clip") -> torch.nn.Module:
    torch.manual_seed(0)
    if tiny:
        return CLIPModel.from_pretrained(TINY, dtype=torch.float32, attn_implementation=attn)
    config_name, arch = VIT_B16_FAMILIES[family]
    config = getattr(transformers, config_name)(**arch)
    config._attn_implementation = attn
    return family_of(config).model_class()(config)  # SigLIP 2 at a fixed resolution is a SiglipModel


def classification_args(**keys) -> ClipFinetuningArguments:
    """A method's arguments as a classification run resolves them: the task's defaults (a frozen text tower), then
    the method's (e.g. LoRA's rank and targets). Only the finetuning arguments are read by these methods' checks."""
    finetuning = ClipFinetuningArguments(**keys)
    ClassificationTask.check(None, finetuning)
    get_method(finetuning.finetuning_type).check((None, None, None, finetuning), ClassificationTask)
    return finetuning


def build_task_model(clip: torch.nn.Module, processor: CLIPProcessor, size: int) -> ClipTaskModel:
    spec = ImageSpec.from_processor(processor.image_processor, ClipDataArguments(image_size=size))
    finetuning = classification_args()
    clip = get_method("full")().prepare(clip, finetuning, argparse.Namespace(do_train=True))
    return ClipTaskModel(
        clip, ClassificationTask(CLASSES, ["a photo of a {}."], TextTokenizer(processor.tokenizer), False), spec
    )


def state_bytes(optimizer, model) -> int:
    """Bytes of optimizer state plus gradients held right now."""
    total = sum(
        t.numel() * t.element_size() for st in optimizer.state.values() for t in st.values() if torch.is_tensor(t)
    )
    return total + sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)


class AbsProbe(TrainerCallback):
    """Around the ABS selection: peak device memory and optimizer+gradient bytes before and after it."""

    def __init__(self, select_step: int):
        self.select_step, self.results = select_step, {}

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        phase = "before" if state.global_step < self.select_step else "after"
        self.results[f"abs_state_mib_{phase}"] = round(state_bytes(optimizer, model) / 2**20, 1)

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available() and state.global_step == self.select_step:
            self.results["abs_peak_gib_before"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            torch.cuda.reset_peak_memory_stats()

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if torch.cuda.is_available():
            self.results["abs_peak_gib_after"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        self.results["abs_trainable_after"] = sum(p.numel() for p in model.parameters() if p.requires_grad)


class StepTimer(TrainerCallback):
    def __init__(self, warmup: int):
        self.warmup, self.start, self.end = warmup, None, None

    def _sync(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:
            self._sync()
            self.start = time.perf_counter()
        elif state.global_step == state.max_steps:
            self._sync()
            self.end = time.perf_counter()


def run_stage(model, data, opts, device) -> float:
    # transformers' TrainingArguments: LLaMA-Factory's subclass only adds keys, and importing it pulls datasets/pandas.
    args = TrainingArguments(
        output_dir=opts.output_dir,
        per_device_train_batch_size=opts.batch_size,
        max_steps=opts.steps + opts.warmup,
        learning_rate=1e-5,
        bf16=opts.bf16,
        torch_compile=opts.compile,
        dataloader_num_workers=opts.workers,
        dataloader_pin_memory=device.type == "cuda",
        logging_strategy="no",
        save_strategy="no",
        report_to="none",
        use_cpu=device.type == "cpu",
        optim="adamw_torch_fused" if device.type == "cuda" else "adamw_torch",
        lr_scheduler_type="constant",
        dataloader_persistent_workers=opts.workers > 0,
        disable_tqdm=True,
        max_grad_norm=MAX_GRAD_NORM,
        **STAGE_DEFAULTS,
    )
    timer = StepTimer(opts.warmup)
    callbacks = [timer]
    if opts.abs_keep:  # select at the end of the untimed warm-up: the timed steps run on the kept units only
        steps_per_epoch = len(data) // opts.batch_size
        abs_args = ClipFinetuningArguments(
            abs=True, abs_keep=opts.abs_keep, abs_warmup_epochs=opts.warmup / steps_per_epoch
        )
        opts.abs_probe = AbsProbe(opts.warmup)
        callbacks = [AbsCallback(model.clip, abs_args), opts.abs_probe, timer]
    trainer = ClipTrainer(model=model, args=args, train_dataset=data, callbacks=callbacks)
    trainer.train()
    return opts.steps * opts.batch_size / (timer.end - timer.start)


def run_plain(model: ClipTaskModel, data, opts, device) -> float:
    """The reference: a plain loop over the same model through its own ``get_image_features`` (and SigLIP's logit
    bias), normalizing uint8 images on the device."""
    clip = model.clip.to(device).train()
    text = model.task.class_features.to(device)
    mean, std = model.pixel_mean.to(device), model.pixel_std.to(device)
    params = [p for p in clip.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=device.type == "cuda")
    loader = DataLoader(
        data,
        batch_size=opts.batch_size,
        shuffle=True,
        num_workers=opts.workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
        persistent_workers=opts.workers > 0,
    )

    def forward_loss(images, labels):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=opts.bf16):
            x = (images.float() / 255 - mean) / std
            feats = F.normalize(clip.get_image_features(pixel_values=x).pooler_output, dim=-1)
            logits = clip.logit_scale.exp() * feats @ text.t().to(feats.dtype)
            if hasattr(clip, "logit_bias"):
                logits = logits + clip.logit_bias
            return F.cross_entropy(logits.float(), labels)

    # Compile what `torch_compile: true` compiles in the Trainer: the forward (and so its backward), not the optimizer.
    forward_loss = torch.compile(forward_loss) if opts.compile else forward_loss

    def step(images, labels):
        forward_loss(images, labels).backward()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    done, start = 0, None
    while done < opts.steps + opts.warmup:
        for batch in loader:
            step(batch["pixel_values"].to(device, non_blocking=True), batch["labels"].to(device, non_blocking=True))
            done += 1
            if done == opts.warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
            if done == opts.steps + opts.warmup:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return opts.steps * opts.batch_size / (time.perf_counter() - start)


class EpochTimer(TrainerCallback):
    def __init__(self):
        self.times, self.start = [], None

    def on_epoch_begin(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.start = time.perf_counter()

    def on_epoch_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self.start)


def run_adapter_cache(opts, processor, data, size, device) -> dict:
    """CLIP-Adapter epochs through the stage with and without the feature cache (same data, same run)."""
    out = {}
    for cached in (False, True):
        clip = build_model(opts.tiny, opts.attn)
        adapter_args = classification_args(finetuning_type="adapter")
        clip = get_method("adapter")().prepare(clip, adapter_args, argparse.Namespace(do_train=True))
        spec = ImageSpec.from_processor(processor.image_processor, ClipDataArguments(image_size=size))
        task = ClassificationTask(CLASSES, ["a photo of a {}."], TextTokenizer(processor.tokenizer), False)
        model = ClipTaskModel(clip, task, spec).to(device)
        args = TrainingArguments(
            output_dir=opts.output_dir,
            per_device_train_batch_size=opts.batch_size,
            num_train_epochs=opts.epochs,
            per_device_eval_batch_size=opts.batch_size,
            learning_rate=1e-3,
            bf16=opts.bf16,
            dataloader_num_workers=opts.workers,
            logging_strategy="no",
            save_strategy="no",
            report_to="none",
            use_cpu=device.type == "cpu",
            disable_tqdm=True,
            **STAGE_DEFAULTS,
        )
        timer = EpochTimer()
        start = time.perf_counter()
        trainer = ClipTrainer(model=model, args=args, train_dataset=data, callbacks=[timer])
        model.task.setup(model)  # the frozen class features, as the stage's pipeline computes them once
        if cached:  # what a run of a method with a frozen image tower does before training
            trainer.train_dataset = cache_image_views(trainer, data, opts.views)
        build = time.perf_counter() - start
        trainer.train()
        epoch = statistics.median(timer.times[1:] or timer.times)
        name = "cached" if cached else "recomputed"
        out[f"adapter_epoch_s_{name}"] = round(epoch, 4)
        if cached:
            out["adapter_cache_build_s"] = round(build, 2)
            out["adapter_cache_views"] = opts.views
    out["adapter_epoch_speedup"] = round(out["adapter_epoch_s_recomputed"] / out["adapter_epoch_s_cached"], 1)
    return out


METHOD_ARGS = {  # --methods entries: finetuning_type and keys
    "full": {"finetuning_type": "full"},
    "bias": {"finetuning_type": "bias"},
    "lora": {"finetuning_type": "lora"},
    "adapter": {"finetuning_type": "adapter", "feature_cache": False},
    "vpt_shallow": {"finetuning_type": "prompt"},
    "vpt_deep": {"finetuning_type": "prompt", "prompt_deep": True},
}


def run_methods(opts, processor, data, size, device) -> dict:
    """Training steps of each method through the stage: images/s, trainable parameters, peak device memory."""
    out = {}
    for name in opts.methods.split(","):
        if name not in METHOD_ARGS:
            raise SystemExit(f"--methods: `{name}` is not one of {', '.join(METHOD_ARGS)}")
        method_args = classification_args(**METHOD_ARGS[name])
        clip = get_method(method_args.finetuning_type)().prepare(
            build_model(opts.tiny, opts.attn), method_args, argparse.Namespace(do_train=True)
        )
        spec = ImageSpec.from_processor(processor.image_processor, ClipDataArguments(image_size=size))
        model = ClipTaskModel(
            clip, ClassificationTask(CLASSES, ["a photo of a {}."], TextTokenizer(processor.tokenizer), False), spec
        )
        model = model.to(device)
        model.task.setup(model)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        out[f"{name}_images_per_s"] = round(run_stage(model, data, opts, device), 1)
        out[f"{name}_trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if device.type == "cuda":
            out[f"{name}_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        del model, clip
    return out


TIP_GROUPS = {"fm_a": [0, 1, 2, 3], "fm_b": [4, 5, 6], "fm_c": [7, 8, 9]}  # disjoint Fashion-MNIST class subsets


@torch.no_grad()
def run_tip_shared(opts) -> dict:
    """Tip-Adapter on dataset 1 of three (disjoint class subsets of the bundled Fashion-MNIST): zero-shot, its own
    cache, and the fixed-size shared cache after adding all three; test accuracy on dataset 1 and the cache sizes."""
    from llamafactory.clip_finetune.data import load_clip_datasets
    from llamafactory.clip_finetune.data.datasets import ClassificationDataset
    from llamafactory.clip_finetune.data.readers import ClassificationSamples
    from llamafactory.clip_finetune.methods.tip import TipCache
    from llamafactory.clip_finetune.methods.tip.cache import build_keys
    from llamafactory.clip_finetune.methods.tip.shared import SharedCache

    processor = CLIPProcessor.from_pretrained(TINY)
    data_args = ClipDataArguments(
        dataset="fashion_mnist_train", eval_dataset="fashion_mnist_test", dataset_dir=str(ROOT / "data")
    )
    full = load_clip_datasets(
        data_args, "classification", 0, processor.image_processor, TextTokenizer(processor.tokenizer)
    )
    clip = get_method("tip")().prepare(build_model(True, opts.attn), classification_args(), None)

    def part(dataset, classes):
        """The images of ``classes``, relabeled 0..len(classes)-1, with the eval transform."""
        s, keep = dataset.samples, [i for i, label in enumerate(dataset.samples.labels) if label in classes]
        samples = ClassificationSamples(
            [s.images[i] for i in keep],
            [classes.index(s.labels[i]) for i in keep],
            [s.classnames[c] for c in classes],
            [s.origins[i] for i in keep],
        )
        return ClassificationDataset(samples, full.spec.eval_transform())

    def features(model, dataset, flip: bool) -> torch.Tensor:
        pixels = torch.stack([dataset[i]["pixel_values"] for i in range(len(dataset))])
        views = [model.image_features(pixels)] + ([model.image_features(pixels.flip(-1))] if flip else [])
        return torch.stack(views, dim=1)  # [images, views, dim]

    models, keys, out = {}, {}, {}
    for name, classes in TIP_GROUPS.items():
        train = part(full.train, classes)
        task = ClassificationTask(train.samples.classnames, full.templates, TextTokenizer(processor.tokenizer), False)
        models[name] = ClipTaskModel(clip, task, full.spec).eval()
        task.setup(models[name])
        keys[name] = (build_keys(features(models[name], train, flip=True)), train.labels, train.samples.classnames)

    name = "fm_a"
    model, test = models[name], part(full.eval, TIP_GROUPS[name])
    f = features(model, test, flip=False)[:, 0]
    clip_logits = model.logit_scale() * f @ model.task.class_features.t()

    def accuracy(cache_keys, values) -> float:
        cache = TipCache(cache_keys, values, opts.tip_alpha, opts.tip_beta, learnable=False)
        logits = clip_logits if cache_keys is None else clip_logits + cache(f)
        return round((logits.argmax(-1) == test.labels).float().mean().item(), 4)

    classes = len(TIP_GROUPS[name])
    own_keys, own_labels, classnames = keys[name]
    shared = SharedCache(opts.tip_cache_size, own_keys.shape[1])
    shared.add(name, classnames, own_keys, own_labels)
    first_keys, first_values = shared.restricted(name, classnames)
    for other in ("fm_b", "fm_c"):
        shared.add(other, keys[other][2], keys[other][0], keys[other][1])
    shared_keys, shared_values = shared.restricted(name, classnames)

    def nbytes(*tensors) -> int:
        return sum(t.numel() * t.element_size() for t in tensors)

    out.update(
        tip_test_images=len(test),
        tip_alpha=opts.tip_alpha,
        tip_beta=opts.tip_beta,
        tip_zero_shot_accuracy=round((clip_logits.argmax(-1) == test.labels).float().mean().item(), 4),
        tip_own_cache_accuracy=accuracy(own_keys, F.one_hot(own_labels, classes).float()),
        tip_shared_after_first_accuracy=accuracy(first_keys, first_values),
        tip_shared_after_three_accuracy=accuracy(shared_keys, shared_values),
        tip_shared_slots_for_first=len(shared_keys),
        tip_own_cache_shape=list(own_keys.shape),
        tip_per_dataset_caches_bytes=sum(
            nbytes(k, F.one_hot(y, len(c)).float()) for k, y, c in keys.values()
        ),  # keys + one-hot values of the three per-dataset caches
        tip_shared_cache_shapes={"keys": list(shared.keys.shape), "counts": list(shared.counts.shape)},
        tip_shared_cache_bytes=nbytes(shared.keys, shared.counts, shared.labels),
    )
    return out


def make_files(root: Path, count: int, classes: int) -> Path:
    """``count`` JPEGs of Caltech-101-like sizes (200-500 px a side, quality 90) in ``classes`` class folders, and a
    dataset_info.json naming them: what a user's image folder looks like to the stage."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for i in range(count):
        h, w = (int(v) for v in torch.randint(200, 501, (2,), generator=g))
        y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
        pixels = torch.stack([x, y, (x * y)]) * 180 + 60 * torch.rand(3, h, w, generator=g)
        folder = root / "images" / f"class_{i % classes:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.clamp(0, 255).byte().permute(1, 2, 0).numpy()).save(folder / f"{i}.jpg", quality=90)
    (root / "dataset_info.json").write_text(json.dumps({"files": {"file_name": "images"}}))
    return root


def pipeline_rate(dataset, workers: int, batch: int, device: torch.device | None = None) -> float:
    """Images per second of one pass of the training transforms over ``dataset`` through a DataLoader; with
    ``device``, the device-decoded rows are decoded and finished there (``image_decode_device``)."""
    loader = DataLoader(dataset, batch_size=batch, num_workers=workers, shuffle=False, collate_fn=collate)
    start, count = time.perf_counter(), 0
    for b in loader:
        count += len(assemble(b, device)["pixel_values"]) if device is not None else b["labels"].numel()
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize()
    return count / (time.perf_counter() - start)


def run_from_files(opts, device: torch.device) -> dict:
    """The input pipeline from files: one epoch decoding every file in the loader workers (``image_cache: none``),
    the loader reading bytes only (``image_decode_device: cuda``; on a GPU also decoded and finished there), the
    one-time decode into the store, and one epoch from the store (``image_cache: memory``). On a GPU, also the
    stage's full finetune end to end from the files through each path, against the plain loop from memory."""
    import tempfile

    from llamafactory.clip_finetune.data import load_clip_datasets
    from llamafactory.clip_finetune.data.image_cache import cache_training_images

    count = opts.files or (512 if opts.tiny else 4128)
    size = 32 if opts.tiny else 224
    processor = CLIPProcessor.from_pretrained(TINY)
    results = {"files": count, "image_size": size, "loader_workers": opts.workers}
    cores = max(opts.workers, 1)
    with tempfile.TemporaryDirectory() as tmp:
        root = make_files(Path(tmp), count, len(CLASSES))
        args = ClipDataArguments(dataset="files", dataset_dir=str(root), image_size=size, crop_scale=[0.08, 1.0])
        tokenizer = TextTokenizer(processor.tokenizer, family_of(CLIPModel.config_class()))
        train = load_clip_datasets(args, "classification", 0, processor.image_processor, tokenizer).train
        per_item = pipeline_rate(train, opts.workers, 64)
        train.device_decode = True
        results["bytes_only_loader_images_per_s"] = round(pipeline_rate(train, opts.workers, 64), 1)
        if device.type == "cuda":
            results["device_decode_images_per_s"] = round(pipeline_rate(train, opts.workers, 256, device), 1)
            results.update(stage_from_files(opts, processor, train, size, device, decode="device"))
        train.device_decode = False
        if device.type == "cuda":
            results.update(stage_from_files(opts, processor, train, size, device, decode="worker"))
        start = time.perf_counter()
        cache_training_images(train, ImageSpec.from_processor(processor.image_processor, args), "memory", opts.workers)
        build = count / (time.perf_counter() - start)
        cached = pipeline_rate(train, opts.workers, 64)
        if device.type == "cuda":
            results.update(stage_from_files(opts, processor, train, size, device, decode="once"))
            model = build_task_model(build_model(False, opts.attn), processor, size).to(device)
            model.task.setup(model)
            plain = run_plain(model, UInt8Images(opts.batch_size * 8, size, len(CLASSES)), opts, device)
            results["plain_from_memory_images_per_s"] = round(plain, 1)
            for decode in ("device", "worker", "once"):
                results[f"ratio_{decode}"] = round(results[f"stage_{decode}_images_per_s"] / plain, 3)
    results.update(
        per_item_images_per_s=round(per_item, 1),
        per_item_images_per_s_per_core=round(per_item / cores, 1),
        decode_once_images_per_s=round(build, 1),
        from_store_images_per_s=round(cached, 1),
        from_store_images_per_s_per_core=round(cached / cores, 1),
        speedup_per_epoch=round(cached / per_item, 2),
    )
    return results


def stage_from_files(opts, processor, train, size: int, device: torch.device, decode: str) -> dict:
    """The stage's full finetune (ViT-B/16 architecture) trained from the files, images decoded as ``decode`` says."""
    model = build_task_model(build_model(False, opts.attn), processor, size).to(device)
    model.task.setup(model)
    torch.cuda.reset_peak_memory_stats()
    speed = run_stage(model, train, opts, device)
    return {
        f"stage_{decode}_images_per_s": round(speed, 1),
        f"stage_{decode}_peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="bundled tiny CLIP on CPU")
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (after --warmup steps)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=None, help="alternate plain/stage runs; the median counts")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU intra-op threads: tiny matmuls gain nothing from more, and OpenMP barriers add noise",
    )
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument(
        "--family", default="clip", choices=list(VIT_B16_FAMILIES), help="the ViT-B/16 architecture of this family"
    )
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument(
        "--adapter_cache", action="store_true", help="only time CLIP-Adapter epochs with and without the feature cache"
    )
    parser.add_argument("--epochs", type=int, default=4, help="--adapter_cache: epochs per run")
    parser.add_argument("--methods", default=None, help=f"only time these methods' steps: {','.join(METHOD_ARGS)}")
    parser.add_argument("--views", type=int, default=10, help="--adapter_cache: augmented views cached")
    parser.add_argument(
        "--abs_keep", type=int, default=0, help="stage side: full finetune with ABS keeping K per group"
    )
    parser.add_argument("--output_dir", default="/tmp/clip-benchmark")
    parser.add_argument(
        "--tip_shared",
        action="store_true",
        help="only Tip-Adapter accuracy on dataset 1 of three: own cache vs the shared fixed-size cache (tiny CLIP)",
    )
    parser.add_argument("--tip_cache_size", type=int, default=100, help="--tip_shared: slots of the shared cache")
    parser.add_argument("--tip_alpha", type=float, default=1.0, help="--tip_shared: cache weight")
    parser.add_argument("--tip_beta", type=float, default=1.0, help="--tip_shared: cache sharpness")
    parser.add_argument(
        "--from_files",
        action="store_true",
        help="only the input pipeline from generated JPEG files: decoded per item, on the GPU, or once (image_cache);"
        " on a GPU also the stage's full finetune end to end from the files",
    )
    parser.add_argument("--files", type=int, default=None, help="--from_files: how many (512 --tiny, else 4,128)")
    opts = parser.parse_args()
    if opts.tip_shared:
        torch.set_num_threads(opts.threads)
        print(json.dumps({"device": "cpu", "model": "tiny-clip", **run_tip_shared(opts)}))
        return
    device = torch.device("cpu" if opts.tiny or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu":
        torch.set_num_threads(opts.threads)
    opts.batch_size = opts.batch_size or (32 if opts.tiny else 256)
    opts.steps = opts.steps or (200 if opts.tiny else 30)
    opts.repeats = opts.repeats or (3 if opts.tiny else 1)
    opts.workers = opts.workers if opts.workers is not None else (0 if opts.tiny else 4)
    if opts.from_files:
        name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
        print(json.dumps({"device": name, "torch": torch.__version__, **run_from_files(opts, device)}))
        return

    processor = CLIPProcessor.from_pretrained(TINY)
    size = 32 if opts.tiny else 224
    data = UInt8Images(opts.batch_size * 8, size, len(CLASSES))
    results = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "model": "tiny-clip" if opts.tiny else f"ViT-B/16 {opts.family} architecture (random weights)",
        "batch_size": opts.batch_size,
        "bf16": opts.bf16,
        "compile": opts.compile,
        "torch": torch.__version__,
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
    }
    if opts.adapter_cache or opts.methods:
        if opts.adapter_cache:
            results.update(run_adapter_cache(opts, processor, data, size, device))
        if opts.methods:
            results.update(run_methods(opts, processor, data, size, device))
        print(json.dumps(results))
        return
    speeds = {"plain": [], "stage": []}
    for _ in range(opts.repeats):  # alternate, so that drifting machine load hits both sides alike
        for name, runner in (("plain", run_plain), ("stage", run_stage)):
            model = build_task_model(build_model(opts.tiny, opts.attn, opts.family), processor, size).to(device)
            model.task.setup(model)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            speeds[name].append(runner(model, data, opts, device))
            if device.type == "cuda":
                results[f"{name}_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            del model
    for name, values in speeds.items():
        results[f"{name}_images_per_s"] = round(statistics.median(values), 1)
    results["ratio"] = round(results["stage_images_per_s"] / results["plain_images_per_s"], 3)
    if opts.abs_keep:
        results.update(abs_keep=opts.abs_keep, **opts.abs_probe.results)
    print(json.dumps(results))


if __name__ == "__main__":
    sys.exit(main())
