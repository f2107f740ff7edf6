"""Callbacks every clip run gets."""

import math

from transformers import TrainerCallback


class EpochCallback(TrainerCallback):
    """Tells the training dataset its epoch, which with the seed decides each image's augmentation
    (``data.datasets.EpochSeeded``). A resumed run starts inside the epoch its checkpoint was in."""

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs):
        dataset = getattr(train_dataloader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(math.floor(state.epoch + 1e-6))


class FiniteLossCallback(TrainerCallback):
    """Stops the run at the first logged non-finite loss or gradient norm. It reads what the Trainer logs anyway
    (every ``logging_steps``), so it adds no per-step device-to-host sync; a run that diverged never reports
    "Finished" with a NaN loss and a chance-level accuracy."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "grad_norm"):
            value = (logs or {}).get(key)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                raise ValueError(
                    f"Training diverged: {key} is {value} at step {state.global_step} (checked every "
                    f"{args.logging_steps} logging steps). Likely causes: a learning rate too high for this method "
                    f"(learning_rate: {args.learning_rate:g}), fp16 overflow (use bf16 or fp32), or non-finite "
                    "inputs. Lower the learning rate and start again (a new output_dir, or overwrite_output_dir: "
                    "true)."
                )
