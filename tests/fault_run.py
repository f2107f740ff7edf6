"""Run the clip stage with one injected fault: the process kills itself (SIGKILL) at a chosen point.

    python tests/fault_run.py '<run_exp arguments as JSON>' <fault>

Faults: ``step:N`` (at the start of training step N), ``write:<file>:<folder>`` (halfway through writing ``file``
into ``folder``: ``checkpoint-N`` or ``final`` for output_dir itself), or ``none``. The writers are wrapped where
the stage, transformers and peft call them, so the file on disk is really cut short, as a killed job leaves it.
"""

import io
import json
import os
import signal
import sys


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    args, fault = json.loads(sys.argv[1]), sys.argv[2]
    import safetensors.torch
    import torch
    from llamafactory.train.tuner import run_exp
    from transformers import TrainerCallback, TrainerState

    import llamafactory.clip_finetune.train.workflow  # noqa: F401  (every writer's module is loaded)

    callbacks = []
    if fault.startswith("step:"):
        step = int(fault.split(":")[1])

        class KillAtStep(TrainerCallback):
            def on_step_begin(self, targs, state, control, **kwargs):
                if state.global_step + 1 == step:
                    die()

        callbacks.append(KillAtStep())
    elif fault.startswith("write:"):
        _, name, folder = fault.split(":")
        output_dir = os.path.realpath(args["output_dir"])
        where = output_dir if folder == "final" else os.path.join(output_dir, folder)

        def targeted(path) -> bool:
            path = os.path.realpath(str(path))
            return os.path.basename(path) == name and os.path.dirname(path) == where

        def cut(path, data: bytes) -> None:
            with open(path, "wb") as f:
                f.write(data[: len(data) // 2])
            die()

        save_file, torch_save, save_json = safetensors.torch.save_file, torch.save, TrainerState.save_to_json

        def save_file_cut(tensors, filename, metadata=None):
            if targeted(filename):
                cut(filename, safetensors.torch.save(tensors, metadata=metadata))
            return save_file(tensors, filename, metadata=metadata)

        def torch_save_cut(obj, f, *a, **k):
            if isinstance(f, (str, os.PathLike)) and targeted(f):
                buffer = io.BytesIO()
                torch_save(obj, buffer, *a, **k)
                cut(f, buffer.getvalue())
            return torch_save(obj, f, *a, **k)

        def save_json_cut(self, json_path):
            if targeted(json_path):
                cut(json_path, (json.dumps(self.__dict__, indent=2, sort_keys=True) + "\n").encode())
            return save_json(self, json_path)

        TrainerState.save_to_json = save_json_cut
        for module in list(sys.modules.values()):  # every alias of the two writers, wherever imported
            for attr, original, wrapper in (
                ("save_file", save_file, save_file_cut),
                ("safe_save_file", save_file, save_file_cut),
                ("save", torch_save, torch_save_cut),
            ):
                if getattr(module, attr, None) is original:
                    setattr(module, attr, wrapper)
        # the stage's atomic writes (temporary file, then os.replace): a kill before the rename leaves only a
        # cut temporary file and no `name` at all
        replace = os.replace

        def replace_cut(src, dst, *a, **k):
            if targeted(dst):
                with open(src, "r+b") as f:
                    f.truncate(os.path.getsize(src) // 2)
                die()
            return replace(src, dst, *a, **k)

        os.replace = replace_cut
    run_exp(args, callbacks=callbacks)


if __name__ == "__main__":
    main()
