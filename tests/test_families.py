"""The model-family layer against each family's own transformers code: the features, scores and loss the stage
computes through ``model.families`` equal what ``CLIPModel``/``SiglipModel``/... compute themselves
(``get_image_features``, ``get_text_features``, ``forward(return_loss=True)``) on small random models."""

import pytest
import torch
import torch.nn.functional as F
import transformers
from conftest import DATA_DIR, base_args, i2t_args, read_json
from llamafactory.train.tuner import run_exp

from llamafactory.clip_finetune.data.transforms import ImageSpec
from llamafactory.clip_finetune.hparams import ClipDataArguments, ClipFinetuningArguments
from llamafactory.clip_finetune.methods import get_method
from llamafactory.clip_finetune.model import ClipTaskModel, TextTokenizer, family_of
from llamafactory.clip_finetune.model.families import FAMILIES
from llamafactory.clip_finetune.tasks.contrastive import contrastive_loss


TINY_FOLDERS = {"siglip": "siglip", "siglip2": "siglip2", "metaclip_2": "metaclip2", "chinese_clip": "chinese-clip"}
VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
TEXT = {**VISION, "vocab_size": 99, "max_position_embeddings": 16}
CONFIGS = {
    "clip": ("CLIPConfig", {"vision_config": {**VISION, "image_size": 32, "patch_size": 8}, "text_config": TEXT}),
    "metaclip_2": (
        "MetaClip2Config",
        {"vision_config": {**VISION, "image_size": 32, "patch_size": 8}, "text_config": {**TEXT, "eos_token_id": 2}},
    ),
    "siglip": ("SiglipConfig", {"vision_config": {**VISION, "image_size": 32, "patch_size": 8}, "text_config": TEXT}),
    "siglip2": (
        "Siglip2Config",
        {"vision_config": {**VISION, "num_patches": 16, "patch_size": 8}, "text_config": TEXT},
    ),
    "chinese_clip": (
        "ChineseCLIPConfig",
        {
            "vision_config": {**VISION, "image_size": 32, "patch_size": 8},
            "text_config": {**TEXT, "type_vocab_size": 2},
        },
    ),
}


def random_model(name: str):
    torch.manual_seed(0)
    config_name, kwargs = CONFIGS[name]
    config = getattr(transformers, config_name)(**kwargs)
    return FAMILIES[name].model_class()(config).eval()


def task_model(clip) -> ClipTaskModel:
    spec = ImageSpec(32, "bicubic", [0.5] * 3, [0.5] * 3, True, [])
    return ClipTaskModel(clip, torch.nn.Identity(), spec).eval()


def inputs(name: str):
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=g)
    ids = torch.randint(3, 99, (4, 9), generator=g)
    ids[:, -1] = 2  # an end token where EOS-pooling families look for it
    return images, ids, torch.ones_like(ids)


def own_image_features(clip, name: str, pixels: torch.Tensor) -> torch.Tensor:
    """The family's own ``get_image_features`` on normalized pixels; NaFlex gets the processor's patch layout."""
    if name == "siglip2":
        b, c, h, w = pixels.shape
        # transformers' convert_image_to_patches, per image: (C, H, W) -> (h*w, p*p*C), channels last in a patch
        patches = torch.stack(
            [transformers.models.siglip2.image_processing_siglip2.convert_image_to_patches(img, 8) for img in pixels]
        )
        mask = torch.ones(b, patches.shape[1], dtype=torch.long)
        shapes = torch.tensor([[h // 8, w // 8]] * b)
        out = clip.get_image_features(pixel_values=patches, pixel_attention_mask=mask, spatial_shapes=shapes)
    else:
        out = clip.get_image_features(pixel_values=pixels)
    return out.pooler_output


@pytest.mark.parametrize("name", list(CONFIGS))
@torch.no_grad()
def test_features_and_scores_equal_the_familys_own(name):
    clip = random_model(name)
    assert family_of(clip.config) is FAMILIES[name]
    model = task_model(clip)
    images, ids, mask = inputs(name)
    image = model.image_features(images)
    expected = F.normalize(own_image_features(clip, name, model.pixels(images)), dim=-1)
    assert torch.allclose(image, expected, atol=1e-5)
    text_kwargs = (
        {"input_ids": ids} if FAMILIES[name].loss == "sigmoid" else {"input_ids": ids, "attention_mask": mask}
    )
    text = model.text_features(ids, mask)
    assert torch.allclose(text, F.normalize(clip.get_text_features(**text_kwargs).pooler_output, dim=-1), atol=1e-5)
    if name == "siglip2":
        return  # its forward needs the patch rows built above; the scores are the same formula as SigLIP's
    own = clip(pixel_values=model.pixels(images), **text_kwargs)
    assert torch.allclose(model.logits(image, text), own.logits_per_image, atol=1e-4)


@pytest.mark.parametrize("name", ["siglip", "siglip2"])
def test_siglip_loss_equals_the_models_own(name):
    """The stage's sigmoid loss (one process) equals ``SiglipModel(return_loss=True)`` on paired rows."""
    clip = random_model(name)
    model = task_model(clip)
    images, ids, _ = inputs(name)
    image, text = model.image_features(images), model.text_features(ids[:3], None)
    ours = contrastive_loss(image, text, model.logit_scale(), "local", model.logit_bias())[0]
    logits = model.logits(image, text).t()  # as SiglipModel: texts x images
    labels = 2 * torch.eye(3) - 1
    reference = -F.logsigmoid(labels * logits).sum(dim=-1).mean()
    if name == "siglip":
        reference_own = clip(pixel_values=model.pixels(images), input_ids=ids[:3], return_loss=True).loss
        assert torch.allclose(reference, reference_own, atol=1e-5)
    assert torch.allclose(ours, reference, atol=1e-5)


def test_unsupported_family_names_the_supported_ones():
    config = transformers.AltCLIPConfig()
    with pytest.raises(ValueError, match="altclip.*Supported: CLIPModel.*SiglipModel.*ChineseCLIPModel"):
        family_of(config)


@pytest.mark.parametrize("name", ["siglip", "siglip2"])
@torch.no_grad()
def test_siglip_adapter_on_the_pooled_embedding_caches_like_it_computes(name):
    """CLIP-Adapter wraps SigLIP's pooling head (there is no projection): the feature from a cached pooled output
    equals the one computed from the image, and the adapter changes it."""
    clip = random_model(name)
    args = ClipFinetuningArguments(finetuning_type="adapter")
    method = get_method("adapter")()
    before = task_model(random_model(name)).image_features(inputs(name)[0])
    peft = method.prepare(clip, args, None)
    for module in peft.modules():
        if hasattr(module, "clip_adapter_up"):
            for up in module.clip_adapter_up.values():
                torch.nn.init.normal_(up.weight)
    model = task_model(peft)
    assert model.family.pooled_frozen(peft)
    images = inputs(name)[0]
    direct = model.image_features(images)
    assert torch.allclose(model.image_features(None, model.pooled_image(images)), direct, atol=1e-6)
    assert not torch.allclose(direct, before, atol=1e-3)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("deep", [False, True])
@torch.no_grad()
def test_prompts_follow_the_class_token_or_lead_without_one(name, deep):
    """VPT inserts prompts after CLIP's class token and before SigLIP's patches (the family's prefix), and the pooled
    feature depends on them: through the class token's attention, or SigLIP's pooling head."""
    clip = random_model(name)
    args = ClipFinetuningArguments(finetuning_type="prompt", prompt_deep=deep)
    peft = get_method("prompt")().prepare(clip, args, None)
    encoder = peft.base_model.model.vision_model.encoder
    assert encoder.clip_vpt_prefix["default"] == FAMILIES[name].prefix_tokens
    model = task_model(peft)
    images = inputs(name)[0]
    first = model.image_features(images)
    encoder.clip_vpt_prompts["default"].add_(torch.randn_like(encoder.clip_vpt_prompts["default"]))
    assert not torch.allclose(first, model.image_features(images), atol=1e-4)


def test_chinese_clip_lora_and_abs_groups_find_bert_layers():
    """CLIP's module names (q_proj, v_proj) reach Chinese-CLIP's BERT text tower through the family's aliases."""
    from llamafactory.clip_finetune.methods.abs import unit_group
    from llamafactory.clip_finetune.methods.lora import lora_target_pattern

    family = FAMILIES["chinese_clip"]
    clip = random_model("chinese_clip")
    import re

    pattern = re.compile(lora_target_pattern(["q_proj", "v_proj"], ["vision", "text"], family))
    matched = [n for n, _ in clip.named_modules() if pattern.match(n)]
    assert "text_model.encoder.layer.0.attention.self.query" in matched
    assert "vision_model.encoder.layers.1.self_attn.v_proj" in matched
    assert not any(n.endswith("attention.self.key") for n in matched)
    groups = [family.names(t) for t in ["k_proj", "v_proj", "q_proj"]]
    assert unit_group("text_model.encoder.layer.0.attention.self.key", groups, True) == 0
    assert unit_group("text_model.encoder.layer.0.attention.self.query", groups, True) == 2
    assert unit_group("text_model.encoder.layer.0.intermediate.dense", groups, True) == 3


def test_processor_sizes_of_every_family():
    from transformers import CLIPImageProcessor, Siglip2ImageProcessor, SiglipImageProcessor

    from llamafactory.clip_finetune.data.transforms import processor_size

    assert processor_size(CLIPImageProcessor(size={"shortest_edge": 224}, crop_size=224)) == (224, False)
    assert processor_size(SiglipImageProcessor(size={"height": 384, "width": 384})) == (384, True)
    assert processor_size(Siglip2ImageProcessor(patch_size=16, max_num_patches=256)) == (256, True)
    spec = ImageSpec.from_processor(SiglipImageProcessor(size={"height": 32, "width": 32}), ClipDataArguments())
    image = torch.randint(0, 256, (3, 40, 64), dtype=torch.uint8)
    assert spec.eval_transform().steps(image).shape == (3, 32, 32)  # squashed, nothing cropped away


# Every method on both tasks on each family's tiny checkpoint (data/models/tiny-*: scripts/build_tiny_families.py),
# through the stage as users run it (in-process run_exp); the outputs reload with the family's own classes.
TINY_MODELS = {name: DATA_DIR / "models" / f"tiny-{folder}" for name, folder in TINY_FOLDERS.items()}
METHOD_KEYS = {
    "full": {},
    "abs": {"finetuning_type": "full", "abs": True, "abs_keep": 2, "abs_warmup_epochs": 0.5, "num_train_epochs": 2},
    "bias": {"finetuning_type": "bias"},
    "lora": {"finetuning_type": "lora"},
    "clip_lora": {"finetuning_type": "clip_lora"},
    "adapter": {"finetuning_type": "adapter"},
    "vpt_shallow": {"finetuning_type": "prompt"},
    "vpt_deep": {"finetuning_type": "prompt", "prompt_deep": True},
    "tip": {"finetuning_type": "tip", "tip_augment_epoch": 1, "tip_search_step": [10, 5]},
    "tip_f": {"finetuning_type": "tip", "tip_finetune": True, "tip_augment_epoch": 1, "tip_search_step": [10, 5]},
}


def family_run(tmp_path, family: str, method: str, task: str, **extra) -> dict:
    make = base_args if task == "classification" else i2t_args
    val = "fashion_mnist_test" if task == "classification" else "emoji_captions_val"
    keys = {**METHOD_KEYS[method]}
    if method.startswith("tip"):
        keys["val_dataset"] = val
    args = make(tmp_path, model_name_or_path=str(TINY_MODELS[family]), max_steps=2, **{**keys, **extra})
    if method == "abs":
        args.pop("max_steps")
    run_exp(args)
    return read_json(tmp_path / "all_results.json")


@pytest.mark.slow
@pytest.mark.parametrize("task", ["classification", "image_to_text"])
@pytest.mark.parametrize("method", list(METHOD_KEYS))
@pytest.mark.parametrize("family", list(TINY_FOLDERS))
def test_every_method_on_every_family_and_task(tmp_path, family, method, task):
    results = family_run(tmp_path / "run", family, method, task)
    metric = results["eval_accuracy"] if task == "classification" else results["eval_i2t_r1"]
    assert 0.0 <= metric <= 1.0
    if method == "abs":
        assert any(unit["kept"] for unit in read_json(tmp_path / "run" / "abs_selection.json")["units"])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "lora", "adapter", "vpt_deep"])
@pytest.mark.parametrize("family", list(TINY_FOLDERS))
def test_outputs_reload_with_the_familys_own_classes(tmp_path, family, method):
    """A trained run's output loads with the family's class (``SiglipModel.from_pretrained``, and
    ``PeftModel.from_pretrained`` over it for PEFT methods) and evaluates to the accuracy the run reported."""
    from peft import PeftModel

    import llamafactory.clip_finetune.peft_tuners  # noqa: F401  (registers clip_adapter and clip_vpt with PEFT)

    out = tmp_path / "run"
    trained = family_run(out, family, method, "classification")
    model_class = FAMILIES[family].model_class()
    if method == "full":
        reloaded = model_class.from_pretrained(out)
    else:
        reloaded = PeftModel.from_pretrained(model_class.from_pretrained(TINY_MODELS[family]), out)
    assert family_of(reloaded.config) is FAMILIES[family]
    again = tmp_path / "eval"
    run_exp(base_args(again, model_name_or_path=str(out), do_train=False, num_shots=None, dataset=None))
    assert read_json(again / "all_results.json")["eval_accuracy"] == pytest.approx(trained["eval_accuracy"])


@pytest.mark.parametrize("family", ["siglip", "siglip2"])
def test_siglip_texts_are_lower_cased_and_padded_to_64(family):
    """SigLIP's rule, with each tiny checkpoint's real SentencePiece tokenizer: whatever the case and the batch, a
    text becomes the lower-cased text's ids padded to 64, so the pooled last position is the same padding token."""
    from transformers import AutoTokenizer

    raw = AutoTokenizer.from_pretrained(TINY_MODELS[family])
    tokens = TextTokenizer(raw, FAMILIES[family])(["A Photo of a DOG.", "bag"])
    assert tokens["input_ids"].shape == (2, 64)
    expected = raw(["a photo of a dog."], padding="max_length", max_length=64)["input_ids"][0]
    assert tokens["input_ids"][0].tolist() == expected
    assert tokens["input_ids"][0, -1].item() == raw.pad_token_id
    assert raw("A Photo")["input_ids"] != raw("a photo")["input_ids"] or family == "siglip"  # siglip's lower-cases too
    assert TextTokenizer(raw, FAMILIES[family]).count("A Photo") == len(raw("a photo")["input_ids"])


def test_chinese_clip_token_types_are_the_models_default():
    """Chinese-CLIP's BERT tokenizer (real WordPiece) gives token types all 0 for one sentence, which is what the text
    tower uses when none are given: the stage's features equal the model's own with the tokenizer's token types."""
    from transformers import AutoProcessor, ChineseCLIPModel

    processor = AutoProcessor.from_pretrained(TINY_MODELS["chinese_clip"])
    clip = ChineseCLIPModel.from_pretrained(TINY_MODELS["chinese_clip"], dtype=torch.float32).eval()
    raw = processor.tokenizer(["a photo of a bag.", "a sneaker"], padding=True, return_tensors="pt")
    assert raw["token_type_ids"].eq(0).all()
    ours = TextTokenizer(processor.tokenizer, FAMILIES["chinese_clip"])(["a photo of a bag.", "a sneaker"])
    with torch.no_grad():
        features = task_model(clip).text_features(ours["input_ids"], ours["attention_mask"])
        own = F.normalize(clip.get_text_features(**raw).pooler_output, dim=-1)
    assert torch.allclose(features, own, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("family", list(TINY_FOLDERS))
def test_wise_ft_and_flyp_on_every_family(tmp_path, family):
    """WiSE-FT interpolates the family's weights and picks alpha on val; FLYP trains with the family's contrastive
    loss against class prompts (SigLIP's sigmoid one, with its bias)."""
    wise = family_run(
        tmp_path / "wise", family, "full", "classification", wise_ft_alphas=[0.0, 1.0], val_dataset="fashion_mnist_val"
    )
    assert "wise_ft_alpha" in wise
    flyp = family_run(
        tmp_path / "flyp",
        family,
        "full",
        "classification",
        classification_loss="contrastive_prompts",
        freeze_text_tower=False,
    )
    assert flyp["train_loss"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("family", list(TINY_FOLDERS))
def test_coop_on_every_family(tmp_path, family):
    """CoOp's slots in each family's prompts: no BOS and 64-token padding (SigLIP), BERT's word embeddings
    (Chinese-CLIP), XLM-R's tokens (MetaCLIP 2); class-specific contexts and KgCoOp's pull included."""
    results = family_run(
        tmp_path / "run",
        family,
        "full",
        "classification",
        finetuning_type="coop",
        coop_ctx_init="a photo of a",
        coop_kg_weight=8.0,
    )
    assert 0.0 <= results["eval_accuracy"] <= 1.0
    csc = family_run(
        tmp_path / "csc",
        family,
        "full",
        "classification",
        finetuning_type="coop",
        coop_n_ctx=2,
        coop_class_specific=True,
        coop_class_token_position="middle",
    )
    assert 0.0 <= csc["eval_accuracy"] <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize(
    "keys",
    [{"finetuning_type": "linear_probe", "probe_type": "zero_shot"}, {"lp_ft": True, "max_steps": 2}],
    ids=["zero_shot_probe", "lp_ft"],
)
@pytest.mark.parametrize("family", list(TINY_FOLDERS))
def test_probe_heads_on_every_family_reload_to_the_runs_accuracy(tmp_path, family, keys):
    """The zero-shot-initialized probe starts from the family's own scores (SigLIP's bias as the intercept) and
    LP-FT trains from a probe; both output dirs evaluate, through their head file, to the accuracy the run reported."""
    out = tmp_path / "run"
    run_exp(base_args(out, model_name_or_path=str(TINY_MODELS[family]), val_dataset="fashion_mnist_val", **keys))
    trained = read_json(out / "all_results.json")
    again = tmp_path / "eval"
    run_exp(base_args(again, model_name_or_path=str(out), do_train=False, num_shots=None, dataset=None))
    assert read_json(again / "all_results.json")["eval_accuracy"] == pytest.approx(trained["eval_accuracy"])
