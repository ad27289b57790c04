"""Injected faults, for testing the recovery paths on a machine that cannot produce them.

Off unless the environment asks: `TUNEFORGE_INJECT_OOM` makes training raise
`torch.OutOfMemoryError`, as a CUDA out-of-memory would, so the OOM retry of
`core.training.pipeline.run` can be tested on the CPU, in-process and through a real worker
(worker/childenv.py passes the variable on to the training process only when it is set).

    TUNEFORGE_INJECT_OOM="micro_batch>1"          # at the first step, while the micro-batch is above 1
    TUNEFORGE_INJECT_OOM="always"                 # at the first step of every attempt
    TUNEFORGE_INJECT_OOM="micro_batch>1,after=2"  # ... once 2 optimizer steps are done

Never set it on a production worker: every job would run out of memory on purpose.
"""

from __future__ import annotations

import os

from transformers import TrainerCallback

INJECT_OOM_ENV = "TUNEFORGE_INJECT_OOM"


class InjectedOutOfMemory(TrainerCallback):
    """Raises `torch.OutOfMemoryError` when the step numbered `after` + 1 begins, if the
    micro-batch is above `min_micro_batch`."""

    def __init__(self, min_micro_batch: int = 0, after: int = 0):
        self.min_micro_batch = min_micro_batch
        self.after = after

    def on_step_begin(self, args, state, control, **kwargs):
        import torch

        micro = args.per_device_train_batch_size
        if state.global_step == self.after and micro > self.min_micro_batch:
            raise torch.OutOfMemoryError(
                f"CUDA out of memory (injected by {INJECT_OOM_ENV}) at micro-batch {micro}"
            )


def callbacks(environ=None) -> list[TrainerCallback]:
    """The fault callbacks the environment asks for (none by default)."""
    value = (os.environ if environ is None else environ).get(INJECT_OOM_ENV, "").strip()
    if not value:
        return []
    kwargs = {}
    for item in filter(None, (x.strip() for x in value.split(","))):
        if item == "always":
            kwargs["min_micro_batch"] = 0
        elif item.startswith("micro_batch>"):
            kwargs["min_micro_batch"] = int(item.removeprefix("micro_batch>"))
        elif item.startswith("after="):
            kwargs["after"] = int(item.removeprefix("after="))
        else:
            raise ValueError(f"{INJECT_OOM_ENV}={value!r}: unknown item {item!r}")
    return [InjectedOutOfMemory(**kwargs)]
