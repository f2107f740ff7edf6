"""FLYP's loss (classification_loss: contrastive_prompts) against a plain-torch restatement; a run of it."""

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_CLIP, base_args, i2t_args, read_json
from llamafactory.train.tuner import run_exp
from safetensors.torch import load_file
from transformers import CLIPModel

from llamafactory.clip_finetune.data import load_clip_datasets
from llamafactory.clip_finetune.model import ClipTaskModel, TextTokenizer, load_clip
from llamafactory.clip_finetune.tasks import ClassificationTask
from llamafactory.clip_finetune.train.arguments import check_clip_args


def test_the_loss_is_infonce_between_images_and_their_class_prompts(tmp_path):
    model_args, data_args, _, finetuning_args = check_clip_args(
        base_args(tmp_path, freeze_text_tower=False, classification_loss="contrastive_prompts", templates=None)
    )
    clip, processor = load_clip(model_args)
    data = load_clip_datasets(
        data_args, "classification", 0, processor.image_processor, TextTokenizer(processor.tokenizer)
    )
    task = ClassificationTask(
        data.classnames, data.templates, TextTokenizer(processor.tokenizer), True, "contrastive_prompts"
    )
    model = ClipTaskModel(clip, task, data.spec).eval()
    batch = [data.train[i] for i in range(8)]
    pixels = torch.stack([b["pixel_values"] for b in batch])
    labels = torch.stack([b["labels"] for b in batch])
    assert len(labels.unique()) < len(labels)  # repeated classes in the batch share one prompt
    loss = model(pixel_values=pixels, labels=labels)["loss"]

    plain = CLIPModel.from_pretrained(TINY_CLIP, dtype=torch.float32).eval()
    with torch.no_grad():
        x = (pixels.float() / 255 - torch.tensor(data.spec.mean).view(1, 3, 1, 1)) / torch.tensor(data.spec.std).view(
            1, 3, 1, 1
        )
        image = F.normalize(plain.get_image_features(pixel_values=x).pooler_output, dim=-1)
        prompts = [[t.format(data.classnames[c]) for t in data.templates] for c in labels.tolist()]
        text = []
        for own in prompts:
            tokens = processor.tokenizer(own, padding=True, return_tensors="pt")
            feats = F.normalize(plain.get_text_features(**tokens).pooler_output, dim=-1)
            text.append(F.normalize(feats.mean(0), dim=-1))
        logits = plain.logit_scale.exp() * image @ torch.stack(text).t()
        target = torch.arange(len(labels))
        expected = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_flyp_example_trains_both_towers(tmp_path):
    run_exp(
        base_args(tmp_path, freeze_text_tower=False, classification_loss="contrastive_prompts", learning_rate=1e-4)
    )
    start, saved = load_file(TINY_CLIP / "model.safetensors"), load_file(tmp_path / "model.safetensors")
    changed = {k.split(".")[0] for k in saved if not torch.equal(saved[k].float(), start[k].float())}
    assert {"vision_model", "text_model"} <= changed
    assert "eval_accuracy" in read_json(tmp_path / "all_results.json")


def test_classification_loss_is_refused_where_it_does_not_apply(tmp_path):
    with pytest.raises(ValueError, match="classification_loss applies to classification"):
        check_clip_args(i2t_args(tmp_path, classification_loss="contrastive_prompts"))
    with pytest.raises(ValueError, match="tip learns its cache with cross-entropy"):
        check_clip_args(
            base_args(tmp_path, finetuning_type="tip", classification_loss="contrastive_prompts", tip_finetune=True)
        )
