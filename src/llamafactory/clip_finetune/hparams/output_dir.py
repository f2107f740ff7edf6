"""An output_dir holds one run: what it was started with, which checkpoints are whole, and who writes into it.

Each checkpoint holds ``clip_run.json``: the arguments that decide what the run trains, written before anything
else in it; a rerun resumes a checkpoint only when they match. A checkpoint counts only when every file in it is
whole (a job killed mid-write leaves a truncated ``model.safetensors``, ``optimizer.pt`` or
``trainer_state.json``). A lock held for the life of the process keeps a second run out; the kernel releases it
when the process dies, so a crashed run never leaves it stuck.
"""

import dataclasses
import json
import os
import re
import struct
import tempfile
import zipfile
from typing import Any

from llamafactory.extras import logging


logger = logging.get_logger(__name__)

RUN_RECORD = "clip_run.json"
LOCK_FILE = ".clip_run.lock"
# what LLaMA Board and the CLIP tab write into output_dir before the run starts (besides the arguments' yaml), and
# trainer_log.jsonl, which alone, without model files, is the trace of a run that stopped before saving
LAUNCHER_FILES = {"running_log.txt", "trainer_log.jsonl"}  # LLaMA-Factory's logs of a run
# the stage's own bookkeeping: its lock files, the temporary files of its atomic writes (``*.tmp``), and a
# hyper-parameter search's folder (its trials and study; the final model is retrained beside it)
OWN_FILES = re.compile(r"^(\.clip_run\.lock|\.tensors\.lock|.*\.tmp|hp_search)$")
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")

# Trainer keys that change what a run computes; the stage's own dataclasses count in full, minus these
TRAINING_KEYS = (
    "learning_rate",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "optim",
    "optim_args",
    "lr_scheduler_type",
    "lr_scheduler_kwargs",
    "warmup_ratio",
    "warmup_steps",
    "seed",
    "data_seed",
    "bf16",
    "fp16",
)
IGNORED_KEYS = {"cache_dir", "attn_implementation", "plot_loss", "export_merged", "wise_ft_alphas"}  # after training
# a resume may lengthen (or shorten) the run, as with any HF Trainer run; the change is logged
LENGTH_KEYS = ("num_train_epochs", "max_steps")


def is_bookkeeping(name: str) -> bool:
    """Files that do not make a folder another run's: LLaMA-Factory's logs, a launcher's argument yamls and process
    logs (``*.yaml``, ``*.log``), the stage's locks and temporary files."""
    return name in LAUNCHER_FILES or name.endswith((".yaml", ".log")) or bool(OWN_FILES.match(name))


def run_record(model_args, data_args, training_args, finetuning_args) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for obj in (model_args, data_args, finetuning_args):
        for f in dataclasses.fields(obj):
            if f.init and f.name not in IGNORED_KEYS:
                record[f.name] = getattr(obj, f.name)
    for key in TRAINING_KEYS + LENGTH_KEYS:
        value = getattr(training_args, key, None)
        record[key] = value.value if hasattr(value, "value") else value  # enums (optim, scheduler) as strings
    return json.loads(json.dumps(record, default=str))  # what a JSON round trip gives, for comparison


def record_differences(saved: dict[str, Any], current: dict[str, Any], keys=None) -> list[str]:
    keys = sorted(set(saved) | set(current)) if keys is None else keys
    return [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k)]


def write_json_atomic(path: str, value: Any, lines: bool = False) -> None:
    """``value`` as JSON (``lines``: a list written as JSON Lines), through a temporary file renamed into place."""
    handle, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=".tmp")
    with os.fdopen(handle, "w", encoding="utf-8") as f:
        if lines:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in value)
        else:
            json.dump(value, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_record(checkpoint: str) -> dict[str, Any]:
    """The record of a checkpoint that ``checkpoint_problem`` found whole."""
    with open(os.path.join(checkpoint, RUN_RECORD), encoding="utf-8") as f:
        return json.load(f)


# ---- checkpoints: whole or not --------------------------------------------------------------------------------


def _safetensors_problem(path: str) -> str | None:
    """The header says how long the data is; a truncated file is shorter."""
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length)) if 8 + length <= size else None
    except (struct.error, ValueError, UnicodeDecodeError):
        return "its header is unreadable"
    if header is None:
        return "it is truncated"
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    return None if size >= 8 + length + end else f"it is truncated ({size} of {8 + length + end} bytes)"


def _file_problem(path: str) -> str | None:
    name = os.path.basename(path)
    if os.path.getsize(path) == 0:
        return "it is empty"
    if name.endswith(".safetensors"):
        return _safetensors_problem(path)
    if name.endswith((".pt", ".pth", ".bin")):  # torch.save writes a zip; a cut one has no central directory
        try:
            with zipfile.ZipFile(path):
                return None
        except (zipfile.BadZipFile, OSError):
            return "it is truncated (not a complete torch.save file)"
    if name.endswith(".json"):
        try:
            with open(path, encoding="utf-8") as f:
                json.load(f)
        except (OSError, ValueError):
            return "it is not complete JSON"
    return None


def checkpoint_problem(path: str, required: tuple[str, ...] = ()) -> str | None:
    """Why ``path`` cannot be resumed from (None when it is whole); ``required``: the method's state files."""
    names = set(os.listdir(path))
    missing = [name for name in required if name not in names]
    if missing:
        return f"it has no {', '.join(missing)} (the method's state)"
    if "trainer_state.json" not in names:
        return "it has no trainer_state.json"
    if RUN_RECORD not in names:
        return f"it has no {RUN_RECORD} (the arguments it was trained with)"
    if not names & {"model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors"}:
        return "it has no model.safetensors or adapter_model.safetensors"
    if "model.safetensors.index.json" in names:
        with open(os.path.join(path, "model.safetensors.index.json"), encoding="utf-8") as f:
            try:
                shards = set(json.load(f)["weight_map"].values())
            except (ValueError, KeyError):
                return "model.safetensors.index.json is not complete JSON"
        if shards - names:
            return f"shards {sorted(shards - names)} are missing"
    for name in sorted(names):
        full = os.path.join(path, name)
        problem = _file_problem(full) if os.path.isfile(full) and not OWN_FILES.match(name) else None
        if problem:
            return f"{name}: {problem}"
    return None


def checkpoints(output_dir: str) -> list[str]:
    """``checkpoint-N`` folders, newest (largest N) first."""
    found = [
        (int(m.group(1)), e.path) for e in os.scandir(output_dir) if e.is_dir() and (m := CHECKPOINT.match(e.name))
    ]
    return [path for _, path in sorted(found, reverse=True)]


def last_complete_checkpoint(output_dir: str, required: tuple[str, ...] = ()) -> str | None:
    """The newest whole checkpoint; each newer incomplete one is named in a warning."""
    for path in checkpoints(output_dir):
        problem = checkpoint_problem(path, required)
        if problem is None:
            return path
        logger.warning_rank0(f"Skipping incomplete checkpoint {path} ({problem}); it was cut off mid-write.")
    return None


# ---- one run at a time --------------------------------------------------------------------------------------

_held: dict[str, Any] = {}  # output_dir -> open lock file, kept for the life of the process


def lock_output_dir(output_dir: str) -> None:
    """Take the folder's lock (non-blocking) or stop: another run is writing into it. Released at process exit."""
    import fcntl

    key = os.path.realpath(output_dir)
    if key in _held:
        return
    os.makedirs(output_dir, exist_ok=True)
    handle = open(os.path.join(output_dir, LOCK_FILE), "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip()
        handle.close()
        raise ValueError(
            f"output_dir: another run is writing into `{output_dir}` ({owner or 'a process that holds its lock'}). "
            "Wait for it to finish, or choose another output_dir."
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
    handle.flush()
    _held[key] = handle


def check_output_dir(model_args, data_args, training_args, finetuning_args, required: tuple[str, ...]) -> None:
    """Resume only the same run from its last whole checkpoint; never write into another run's folder.
    ``required``: the files besides the Trainer's that the method's checkpoints hold."""
    output_dir = training_args.output_dir
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"output_dir: `{output_dir}` is a file, not a folder; choose a folder for the run.")
    if not os.path.isdir(output_dir) or training_args.overwrite_output_dir:
        return
    others = sorted(name for name in os.listdir(output_dir) if not is_bookkeeping(name))
    fixes = "Choose a new output_dir, or set overwrite_output_dir: true to replace that run."
    if not training_args.do_train:
        if others:
            raise ValueError(
                f"output_dir: `{output_dir}` already holds a run ({', '.join(others[:5])}); an evaluation would "
                f"replace its results. {fixes}"
            )
        return
    checkpoint = training_args.resume_from_checkpoint
    if checkpoint is not None:
        problem = checkpoint_problem(checkpoint, required) if os.path.isdir(checkpoint) else "it is not a folder"
        if problem:
            raise ValueError(f"resume_from_checkpoint: cannot resume from `{checkpoint}`: {problem}.")
        if os.path.realpath(os.path.dirname(checkpoint)) != os.path.realpath(output_dir):
            return  # a checkpoint from elsewhere, named explicitly: its folder's record is not ours to check
    else:
        checkpoint = last_complete_checkpoint(output_dir, required)
        if checkpoint is None:
            if others:
                raise ValueError(
                    f"output_dir: `{output_dir}` already holds files of another run ({', '.join(others[:5])}) and "
                    f"no complete checkpoint to resume. {fixes}"
                )
            return
    saved, current = read_record(checkpoint), run_record(model_args, data_args, training_args, finetuning_args)
    length = record_differences(saved, current, LENGTH_KEYS)
    others = sorted((set(saved) | set(current)) - set(LENGTH_KEYS))
    differences = record_differences(saved, current, others)
    if differences:
        raise ValueError(
            f"output_dir: `{output_dir}` holds a run started with other arguments; resuming it would mix the two "
            f"({'; '.join(differences)}). {fixes}"
        )
    training_args.resume_from_checkpoint = checkpoint
    logger.info_rank0(f"Resuming training from {checkpoint} (set overwrite_output_dir: true to start over).")
    if length:
        logger.warning_rank0(
            f"The resumed run's length changed ({'; '.join(length)}): its schedule follows the new one."
        )
