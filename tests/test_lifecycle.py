"""The method/task lifecycle: a new method is one class registered in one place; the pipeline names no method and
no task; the packages are layered without cycles; the Trainer learns an epoch's length without building a loader."""

import ast
import re
from pathlib import Path

import pytest
import torch
from conftest import TINY_CLIP, base_args, i2t_args
from llamafactory.train.tuner import run_exp
from safetensors.torch import load_file

from llamafactory.clip_finetune import methods
from llamafactory.clip_finetune.methods.base import Method, set_trainable
from llamafactory.clip_finetune.model import TextTokenizer


PACKAGE = Path(methods.__file__).resolve().parents[1]
# lower layers never import higher ones: integration, webui, api > train > methods, tasks > model, data > hparams
LAYERS = {
    "hparams": 0,
    "data": 1,
    "model": 1,
    "dassl": 1,
    "peft_tuners": 1,
    "methods": 2,
    "tasks": 2,
    "train": 3,
    "webui": 4,
    "api": 4,
    "integration": 4,
}


class ProjectionOnly(Method):
    """A toy method: only the image projection trains (and every check, callback and run step is the default)."""

    name = "projection_only"
    own_keys = {}

    def prepare(self, clip, finetuning_args, training_args):
        set_trainable(clip, False)
        set_trainable(clip.visual_projection, True)
        return clip


@pytest.mark.parametrize("task_args", [base_args, i2t_args])
def test_a_new_method_is_one_class_registered_in_one_place(tmp_path, monkeypatch, task_args):
    monkeypatch.setitem(methods.METHODS, ProjectionOnly.name, ProjectionOnly)
    run_exp(task_args(tmp_path, finetuning_type="projection_only", learning_rate=1e-2))
    start, saved = load_file(TINY_CLIP / "model.safetensors"), load_file(tmp_path / "model.safetensors")
    assert {k for k, v in saved.items() if not torch.equal(v, start[k])} == {"visual_projection.weight"}


def test_an_unregistered_method_or_task_is_named_with_the_registered_ones(tmp_path):
    with pytest.raises(ValueError, match=r"finetuning_type: `projection_only` is not one of \['adapter', 'bias'"):
        run_exp(base_args(tmp_path, finetuning_type="projection_only"))
    with pytest.raises(ValueError, match=r"clip_task: `captioning` is not one of \['classification', 'image_to_text'"):
        run_exp(base_args(tmp_path, clip_task="captioning"))


def test_a_key_of_another_method_is_an_error_not_ignored(tmp_path):
    with pytest.raises(ValueError, match="tip_alpha applies to tip: this run's finetuning_type is full"):
        run_exp(base_args(tmp_path, tip_alpha=2.0))
    with pytest.raises(ValueError, match="abs selects among existing weights: use it with bias or full, not lora"):
        run_exp(base_args(tmp_path, finetuning_type="lora", abs=True))


def imports(path: Path) -> set[str]:
    """The stage's top-level packages that a module imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = path.relative_to(PACKAGE).parts[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(here[: len(here) - node.level + 1])
            parts = base + (node.module.split(".") if node.module else [])
            if parts:
                found.add(parts[0])
            elif node.names:  # ``from .. import x``: x is a package at the top
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("llamafactory.clip_finetune."):
            found.add(node.module.split(".")[2])
    return found


def test_packages_are_layered_without_cycles():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).parts
        if len(parts) == 1:
            continue  # the package's own __init__
        mine = parts[0]
        for other in imports(path) - {mine}:
            if other in LAYERS and LAYERS[other] > LAYERS[mine]:
                wrong.append(f"{path.relative_to(PACKAGE)} ({mine}) imports {other}")
    assert not wrong, "\n".join(wrong)


def test_the_pipeline_and_the_trainer_name_no_method_and_no_task():
    names = sorted(set(methods.METHODS) | {"abs", "classification", "image_to_text"})
    pattern = re.compile("|".join(rf"[\"']{re.escape(n)}[\"']" for n in names))
    for module in ("train/workflow.py", "train/trainer.py", "train/arguments.py", "model/task_model.py"):
        text = (PACKAGE / module).read_text(encoding="utf-8")
        assert not pattern.search(text), f"{module} names {pattern.search(text).group()}"


def test_steps_per_epoch_equals_the_trainers_loader(tmp_path):
    """The epoch schedule learns an epoch's length by arithmetic: it must equal the prepared loader's."""
    from llamafactory.clip_finetune.data import load_clip_datasets
    from llamafactory.clip_finetune.model import ClipTaskModel, load_clip
    from llamafactory.clip_finetune.tasks import ClassificationTask
    from llamafactory.clip_finetune.train.arguments import check_clip_args
    from llamafactory.clip_finetune.train.trainer import ClipTrainer

    for batch, accumulation, drop_last in [(8, 1, False), (3, 2, False), (3, 4, True), (64, 1, False)]:
        model_args, data_args, training_args, _ = check_clip_args(
            base_args(
                tmp_path / f"o{batch}{accumulation}{drop_last}",
                per_device_train_batch_size=batch,
                gradient_accumulation_steps=accumulation,
                dataloader_drop_last=drop_last,
                num_shots=4,
            )
        )
        clip, processor = load_clip(model_args)
        data = load_clip_datasets(
            data_args, "classification", 0, processor.image_processor, TextTokenizer(processor.tokenizer)
        )
        task = ClassificationTask(data.classnames, data.templates, TextTokenizer(processor.tokenizer), False)
        trainer = ClipTrainer(model=ClipTaskModel(clip, task, data.spec), args=training_args, train_dataset=data.train)
        expected = max(-(-len(trainer.get_train_dataloader()) // accumulation), 1)
        assert trainer.steps_per_epoch() == expected, (batch, accumulation, drop_last)
