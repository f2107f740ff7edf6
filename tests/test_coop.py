"""CoOp / KgCoOp (``finetuning_type: coop``): learned context vectors at slots of the class prompts.

References are independent of the slot mechanism: the stock model scoring hand-written prompts, or the stock model
whose embedding rows of unused tokens hold the context vectors (what CoOp's prompt learner builds: the context's
embeddings in place of placeholder tokens, the rest of the prompt's tokens as tokenized)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import DATA_DIR, TINY_CLIP, base_args, i2t_args, read_json
from llamafactory.train.tuner import run_exp
from transformers import CLIPModel, CLIPProcessor

from llamafactory.clip_finetune.data.transforms import ImageSpec
from llamafactory.clip_finetune.hparams import ClipDataArguments, ClipFinetuningArguments, ClipModelArguments
from llamafactory.clip_finetune.methods import get_method
from llamafactory.clip_finetune.model import ClipTaskModel, TextTokenizer, family_of, load_clip
from llamafactory.clip_finetune.tasks import ClassificationTask


CLASSES = ["t-shirt", "ankle boot", "bag"]


class _Data:
    classnames = CLASSES


def coop_model(**keys):
    clip = CLIPModel.from_pretrained(TINY_CLIP, dtype=torch.float32).eval()
    processor = CLIPProcessor.from_pretrained(TINY_CLIP)
    tokenizer = TextTokenizer(processor.tokenizer)
    method = get_method("coop")()
    method.see_data(_Data(), tokenizer)
    peft = method.prepare(clip, ClipFinetuningArguments(finetuning_type="coop", **keys), None)
    spec = ImageSpec.from_processor(processor.image_processor, ClipDataArguments())
    return peft, tokenizer.for_model(peft), spec, processor


def class_features(clip, tokenizer, spec, templates=("{}.",)) -> torch.Tensor:
    task = ClassificationTask(CLASSES, list(templates), tokenizer, text_trainable=True)
    with torch.no_grad():
        return task.encode_classes(ClipTaskModel(clip, task, spec).eval())


FAMILY_MODELS = ["tiny-clip", "tiny-siglip", "tiny-siglip2", "tiny-metaclip2", "tiny-chinese-clip"]


@pytest.mark.parametrize("model", FAMILY_MODELS)
@pytest.mark.parametrize(
    "position, template", [("end", "a photo of a {}."), ("front", "{} a photo of a."), ("middle", "a photo {} of a.")]
)
def test_a_phrase_initialized_context_is_the_hand_crafted_prompt(model, position, template):
    """Initialized from "a photo of a" (CoOp's CTX_INIT), the learned prompt of each class is exactly the stock
    model's feature of the hand-written prompt with the class name at the same place, on every family: the slots sit
    where the phrase's tokens would, the name and period tokenize as in the text, the end-token pooling finds the
    end. (SigLIP 2's Gemma tokenizer reads "a" differently mid-text than at the start, where the phrase is
    tokenized for the initialization: at the front its prompt ids still match, tested apart.)"""
    path = DATA_DIR / "models" / model
    clip, processor = load_clip(ClipModelArguments(model_name_or_path=str(path)))
    tokenizer = TextTokenizer(processor.tokenizer, family_of(clip.config))
    spec = ImageSpec.from_processor(processor.image_processor, ClipDataArguments())
    expected = class_features(clip, tokenizer, spec, [template])
    method = get_method("coop")()
    method.see_data(_Data(), tokenizer)
    keys = {"coop_ctx_init": "a photo of a", "coop_class_token_position": position}
    peft = method.prepare(clip, ClipFinetuningArguments(finetuning_type="coop", **keys), None)
    contextual = tokenizer.for_model(peft)
    assert contextual.context.position == position and not contextual.context.class_specific
    learned = class_features(peft, contextual, spec)
    if model == "tiny-siglip2" and position == "front":
        plain = tokenizer([template.format(name) for name in CLASSES])["input_ids"]
        prompts, classes = contextual.class_prompts(CLASSES, [])
        ours = contextual(prompts, classes=classes)["input_ids"]
        assert torch.equal(ours[ours >= 0], plain[ours >= 0])  # every token but the slots as in the text
        return
    assert torch.allclose(learned, expected, atol=1e-5)


@pytest.mark.parametrize("class_specific", [False, True])
def test_random_contexts_equal_the_stock_model_with_the_vectors_as_token_embeddings(class_specific):
    """CoOp's prompt learner, independently: give unused tokens the context vectors as their embeddings and write
    the prompt with those tokens; the stock model's class features equal the slot mechanism's (class-specific
    contexts: each class its own tokens)."""
    torch.manual_seed(0)
    peft, tokenizer, spec, processor = coop_model(coop_n_ctx=3, coop_class_specific=class_specific)
    layer = peft.base_model.model.text_model.embeddings.token_embedding
    ctx = layer.clip_coop_ctx["default"].detach()
    assert ctx.shape == (len(CLASSES) if class_specific else 1, 3, 32)
    learned = class_features(peft, tokenizer, spec)

    stock = copy.deepcopy(peft.get_base_model())
    stock.text_model.embeddings.token_embedding = layer.base_layer  # the original embedding
    raw = processor.tokenizer
    unused = list(range(40000, 40000 + ctx.shape[0] * 3))  # rare tokens, none in these prompts
    with torch.no_grad():
        stock.text_model.embeddings.token_embedding.weight[unused] = ctx.reshape(-1, 32)
    rows = []
    for c, name in enumerate(CLASSES):
        group = c if class_specific else 0
        body = unused[group * 3 : group * 3 + 3] + raw(f"{name}.", add_special_tokens=False)["input_ids"]
        rows.append([raw.bos_token_id, *body, raw.eos_token_id])
    tokens = raw.pad({"input_ids": rows}, return_tensors="pt")
    model = ClipTaskModel(stock, torch.nn.Identity(), spec).eval()
    with torch.no_grad():
        expected = model.encode_texts(tokens["input_ids"], tokens["attention_mask"])
    assert torch.allclose(learned, expected, atol=1e-5)


def test_kgcoop_adds_the_cosine_pull_to_the_hand_crafted_features():
    """KgCoOp's loss (htyao89/KgCoOp): CE + w * (1 - mean cos(learned class features, hand-crafted ones))."""
    torch.manual_seed(0)
    peft, tokenizer, spec, _ = coop_model(coop_n_ctx=2)
    templates = ["a photo of a {}."]
    task = ClassificationTask(CLASSES, templates, tokenizer, text_trainable=True, anchor_weight=8.0)
    model = ClipTaskModel(peft, task, spec).eval()
    task.setup(model)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 0])
    loss = model(pixel_values=images, labels=labels)["loss"]
    with torch.no_grad():
        learned = task.encode_classes(model)
        stock = CLIPModel.from_pretrained(TINY_CLIP, dtype=torch.float32).eval()
        hand = class_features(stock, replace_context(tokenizer), spec, templates)
        logits = model.logit_scale() * model.image_features(images) @ learned.t()
        expected = F.cross_entropy(logits, labels) + 8.0 * (1 - F.cosine_similarity(learned, hand, dim=-1).mean())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert (1 - F.cosine_similarity(learned, hand, dim=-1).mean()) > 1e-3  # a random context is far from it


def replace_context(tokenizer):
    from dataclasses import replace

    return replace(tokenizer, context=None)


@pytest.mark.slow
def test_coop_trains_the_context_only_and_reloads_with_peft(tmp_path):
    out = tmp_path / "run"
    run_exp(
        base_args(out, finetuning_type="coop", coop_ctx_init="a photo of a", coop_kg_weight=8.0, num_train_epochs=2)
    )
    trained = read_json(out / "all_results.json")
    config = read_json(out / "adapter_config.json")
    assert config["peft_type"] == "CLIP_COOP" and config["n_ctx"] == 4 and config["class_token_position"] == "end"
    again = tmp_path / "eval"
    run_exp(base_args(again, model_name_or_path=str(out), do_train=False, num_shots=None, dataset=None))
    assert read_json(again / "all_results.json")["eval_accuracy"] == pytest.approx(trained["eval_accuracy"])


@pytest.mark.slow
def test_class_specific_contexts_train(tmp_path):
    run_exp(base_args(tmp_path, finetuning_type="coop", coop_n_ctx=2, coop_class_specific=True))
    from safetensors.torch import load_file

    (ctx,) = load_file(tmp_path / "adapter_model.safetensors").values()
    assert ctx.shape == (10, 2, 32)  # Fashion-MNIST's 10 classes, 2 vectors each, the text width


@pytest.mark.parametrize(
    "keys, message",
    [
        ({"clip_task": "image_to_text", "coop_class_specific": True}, "has no classes: its context is one"),
        ({"clip_task": "image_to_text", "coop_kg_weight": 8.0}, "coop_kg_weight pulls class features"),
        ({"coop_ctx_init": "a photo of a", "coop_class_specific": True}, "coop_ctx_init initializes one shared"),
        ({"coop_n_ctx": 0}, "coop_n_ctx must be at least 1"),
        ({"coop_kg_weight": -1.0}, "coop_kg_weight must be >= 0"),
        ({"freeze_text_tower": False}, "coop trains the context only"),
    ],
)
def test_bad_coop_settings_are_refused_while_parsing(tmp_path, keys, message):
    from llamafactory.clip_finetune.train.arguments import check_clip_args

    make = i2t_args if keys.get("clip_task") == "image_to_text" else base_args
    args = make(tmp_path, finetuning_type="coop", **{k: v for k, v in keys.items() if k != "clip_task"})
    with pytest.raises(ValueError, match=message):
        check_clip_args(args)


def test_a_phrase_of_another_length_than_coop_n_ctx_is_refused():
    with pytest.raises(ValueError, match="coop_ctx_init `a photo of a` is 4 tokens, but coop_n_ctx is 3"):
        coop_model(coop_ctx_init="a photo of a", coop_n_ctx=3)


def test_dassl_coop_keys_set_the_method_for_a_coop_trainer_only():
    from llamafactory.clip_finetune.dassl.translate import translate

    coop = translate(
        {"TRAINER": {"NAME": "KgCoOp", "COOP": {"N_CTX": 4, "CTX_INIT": "a photo of a", "CSC": False, "W": 8.0}}}
    )
    assert coop.values["finetuning_type"] == "coop"
    assert coop.values["coop_ctx_init"] == "a photo of a" and coop.values["coop_kg_weight"] == 8.0
    vpt = translate({"TRAINER": {"NAME": "VPT", "COOP": {"N_CTX": 16, "N_PLN": 4}}})
    assert vpt.values["finetuning_type"] == "prompt" and "coop_n_ctx" not in vpt.values
    assert "TRAINER.NAME is CoOp" in vpt.unused["TRAINER.COOP.N_CTX"]


@pytest.mark.slow
def test_image_to_text_prepends_the_context_to_every_caption(tmp_path):
    """For image_to_text the one context goes before each caption: initialized from "a photo of a", the run's
    zero-step evaluation equals the stock model's on captions written as "a photo of a <caption>"; then it trains."""
    keys = {"finetuning_type": "coop", "coop_ctx_init": "a photo of a", "max_steps": 1, "learning_rate": 0.0}
    run_exp(i2t_args(tmp_path / "coop", **keys))
    coop = read_json(tmp_path / "coop" / "all_results.json")
    caption_file = tmp_path / "captions"
    caption_file.mkdir()
    import json

    info = json.loads((DATA_DIR / "dataset_info.json").read_text())
    for name in ("emoji_captions_train", "emoji_captions_test"):
        attr = info[name]
        rows = [json.loads(line) for line in (DATA_DIR / attr["file_name"]).read_text().splitlines()]
        for row in rows:
            row["captions"] = [f"a photo of a {c}" for c in row["captions"]]
            row["image"] = str(DATA_DIR / "emoji_captions" / row["image"])
        (caption_file / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        info[name] = {**attr, "file_name": f"{name}.jsonl"}
    (caption_file / "dataset_info.json").write_text(json.dumps(info))
    run_exp(i2t_args(tmp_path / "stock", dataset_dir=str(caption_file), do_train=False))
    stock = read_json(tmp_path / "stock" / "all_results.json")
    recalls = [k for k in stock if k.startswith(("eval_i2t_r", "eval_t2i_r"))]
    assert len(recalls) == 6
    assert {k: coop[k] for k in recalls} == pytest.approx({k: stock[k] for k in recalls})
