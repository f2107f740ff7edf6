"""Argument parsing: yaml/dict and argv forms, unknown keys named with the closest valid one, backbones."""

import pytest
from conftest import TINY_CLIP, base_args

from llamafactory.clip_finetune.hparams.model_args import resolve_backbone
from llamafactory.clip_finetune.train.arguments import check_clip_args, get_clip_train_args


def test_dict_args_parse_into_clip_and_trainer_dataclasses(tmp_path):
    model_args, data_args, training_args, finetuning_args = get_clip_train_args(base_args(tmp_path / "o"))
    assert finetuning_args.clip_task == "classification"
    assert finetuning_args.freeze_text_tower is True  # classification default: only the image tower trains
    assert data_args.num_shots == 2
    assert training_args.per_device_train_batch_size == 8
    assert hasattr(training_args, "ray_num_workers")  # LLaMA-Factory's TrainingArguments, Ray args included


def test_argv_args_parse(tmp_path):
    argv = [
        "--stage",
        "clip",
        "--model_name_or_path",
        "ViT-B/32",
        "--clip_task",
        "image_to_text",
        "--dataset",
        "emoji_captions_train",
        "--dataset_dir",
        "data",
        "--do_train",
        "--output_dir",
        str(tmp_path / "o"),
        "--image_mean",
        "0.5",
        "0.5",
        "0.5",
    ]
    model_args, data_args, training_args, finetuning_args = get_clip_train_args(argv)
    assert model_args.model_name_or_path == "openai/clip-vit-base-patch32"
    assert data_args.image_mean == [0.5, 0.5, 0.5]
    assert finetuning_args.freeze_text_tower is False  # retrieval trains both towers by default


def test_misspelled_key_names_the_closest_valid_key(tmp_path):
    with pytest.raises(ValueError, match=r"`num_shot` \(did you mean `num_shots`\?\)"):
        get_clip_train_args(base_args(tmp_path / "o", num_shot=4))


def test_misspelled_argv_flag_is_an_error(tmp_path):
    argv = [
        "--stage",
        "clip",
        "--dataset",
        "fashion_mnist_train",
        "--do_train",
        "--output_dir",
        str(tmp_path),
        "--learning_rat",
        "0.1",
    ]
    with pytest.raises(ValueError, match=r"`learning_rat` \(did you mean `learning_rate`\?\)"):
        get_clip_train_args(argv)


def test_backbone_names_map_to_hub_checkpoints():
    assert resolve_backbone("ViT-B/16") == "openai/clip-vit-base-patch16"
    assert resolve_backbone("ViT-L/14@336px") == "openai/clip-vit-large-patch14-336"
    assert resolve_backbone("/some/local/dir") == "/some/local/dir"
    with pytest.raises(ValueError, match="RN50 is a ResNet CLIP"):
        resolve_backbone("RN50")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"do_train": False, "do_eval": False}, "Nothing to do"),
        ({"dataset": None}, "do_train needs `dataset`"),
        ({"dataset_dir": "/nonexistent"}, "has no dataset_info.json"),
        ({"num_shots": 0}, "num_shots must be a positive number"),
        ({"train_transforms": ["random_crop"]}, "unknown transform"),
        ({"templates": ["a photo"]}, "needs a `{}`"),
        ({"clip_task": "image_to_text"}, "num_shots applies to classification"),
        ({"clip_task": "detection"}, "clip_task"),
        ({"crop_scale": [0.9, 0.5]}, r"crop_scale needs \[min, max\] with 0 < min <= max <= 1"),
    ],
)
def test_bad_arguments_are_clear_errors(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        get_clip_train_args(base_args(tmp_path / "o", **overrides))


def test_output_dir_of_another_run_is_refused(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "model.safetensors").write_text("x")
    with pytest.raises(ValueError, match="already holds files of another run"):
        get_clip_train_args(base_args(out))
    _, _, training_args, _ = get_clip_train_args(base_args(out, overwrite_output_dir=True))
    assert training_args.resume_from_checkpoint is None


def test_stage_defaults_avoid_per_step_syncs_unless_set(tmp_path):
    _, _, training_args, _ = get_clip_train_args(base_args(tmp_path / "o"))
    assert training_args.logging_nan_inf_filter is False
    # asynchronous copies from pinned memory: only toward a CUDA device (off here, on CPU, where torch warns)
    cuda = training_args.device.type == "cuda"
    assert training_args.accelerator_config.non_blocking is cuda and training_args.dataloader_pin_memory is cuda
    assert training_args.remove_unused_columns is False
    _, _, training_args, _ = get_clip_train_args(base_args(tmp_path / "o", logging_nan_inf_filter=True))
    assert training_args.logging_nan_inf_filter is True
    argv = [
        "--stage",
        "clip",
        "--dataset",
        "fashion_mnist_train",
        "--do_train",
        "--output_dir",
        str(tmp_path / "argv"),
    ]
    _, _, training_args, _ = check_clip_args(argv)  # the defaults reach argv too (before the CPU adjustment)
    assert training_args.logging_nan_inf_filter is False and training_args.accelerator_config.non_blocking is True


def test_crop_scale_is_the_papers_for_tip_and_torchvisions_otherwise(tmp_path):
    from transformers import CLIPImageProcessor

    from llamafactory.clip_finetune.data.transforms import ImageSpec

    processor = CLIPImageProcessor.from_pretrained(TINY_CLIP)

    def crop(**overrides):
        _, data_args, _, _ = get_clip_train_args(base_args(tmp_path / "o", **overrides))
        spec = ImageSpec.from_processor(processor, data_args)
        return data_args.crop_scale, spec.train_transform().transforms[0].scale

    assert crop() == (None, (0.08, 1.0))
    assert crop(finetuning_type="tip") == ([0.5, 1.0], (0.5, 1.0))
    assert crop(finetuning_type="tip", crop_scale=[0.3, 0.9]) == ([0.3, 0.9], (0.3, 0.9))
