"""Trainer defaults this stage changes unless the user sets them, each to save work on every step."""

STAGE_DEFAULTS = {
    "logging_nan_inf_filter": False,  # its NaN check reads the loss on the host each step
    "accelerator_config": {"non_blocking": True},  # copy pinned uint8 batches to the device asynchronously
    "remove_unused_columns": False,  # the datasets yield model inputs only; the column filter is per-item overhead
}
