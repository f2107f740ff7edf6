"""Trainer defaults this stage changes unless the user sets them: both avoid a host-device sync every step."""

STAGE_DEFAULTS = {
    "logging_nan_inf_filter": False,  # its NaN check reads the loss on the host each step
    "accelerator_config": {"non_blocking": True},  # copy pinned uint8 batches to the device asynchronously
}
