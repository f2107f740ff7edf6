import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "data"
TINY_CLIP = DATA_DIR / "models" / "tiny-clip"
CLI = str(Path(sys.executable).with_name("llamafactory-cli"))


def base_args(output_dir, **overrides):
    """A small classification run on the bundled data and tiny checkpoint."""
    args = {
        "stage": "clip",
        "model_name_or_path": str(TINY_CLIP),
        "clip_task": "classification",
        "finetuning_type": "full",
        "dataset": "fashion_mnist_train",
        "eval_dataset": "fashion_mnist_test",
        "dataset_dir": str(DATA_DIR),
        "num_shots": 2,
        "output_dir": str(output_dir),
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 64,
        "learning_rate": 1e-3,
        "num_train_epochs": 1,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "do_train": True,
        "do_eval": True,
        "seed": 0,
    }
    args.update(overrides)
    return args


TRAIN_TRANSFORMS = ("random_resized_crop", "random_flip", "normalize")


def image_spec(transforms_=TRAIN_TRANSFORMS, size=64, crop_scale=(0.5, 1.0), squash=False):
    """An ``ImageSpec`` for pipeline tests: bicubic, normalized around 0.5."""
    from llamafactory.clip_finetune.data.transforms import ImageSpec

    return ImageSpec(
        size=size,
        interpolation="bicubic",
        mean=[0.5] * 3,
        std=[0.5] * 3,
        normalize=True,
        train_transforms=list(transforms_),
        crop_scale=crop_scale,
        squash=squash,
    )


def i2t_args(output_dir, **overrides):
    args = base_args(
        output_dir,
        clip_task="image_to_text",
        dataset="emoji_captions_train",
        eval_dataset="emoji_captions_test",
        num_shots=None,
        max_samples=48,
    )
    args.pop("num_shots")
    args.update(overrides)
    return args


def run_cli(args, env=None, timeout=600, cwd=ROOT):
    path = os.pathsep.join([os.path.dirname(CLI), os.environ.get("PATH", "")])  # torchrun of this environment
    full_env = {**os.environ, "PATH": path, **(env or {})}
    return subprocess.run([CLI, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture
def data_copy(tmp_path):
    """A writable copy of a few bundled images, for tests that build their own dataset files."""
    root = tmp_path / "data"
    for split in ("train",):
        for cls in ("bag", "coat", "dress"):
            src = DATA_DIR / "fashion_mnist" / split / cls
            dst = root / "fm" / cls
            dst.mkdir(parents=True)
            for name in sorted(os.listdir(src))[:6]:
                shutil.copy(src / name, dst / name)
    return root


# What makes a test slow, read off its own code: it trains end to end (run_exp), starts processes (the CLI, torchrun,
# the web UI runner, a browser) or builds a wheel. `python -m pytest -m "not slow"` is then the in-process tier.
SLOW_CALLS = ("run_exp(", "run_cli(", "subprocess.", ".launch(", "Popen(", "page.", "run(args_for")


def pytest_collection_modifyitems(config, items):
    import inspect

    for item in items:
        function = getattr(item, "function", None)
        try:
            source = inspect.getsource(function) if function is not None else ""
        except (OSError, TypeError):
            continue
        if any(call in source for call in SLOW_CALLS):
            item.add_marker(pytest.mark.slow)
