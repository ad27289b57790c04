"""Which rank this process is when a job runs on several GPUs under `accelerate launch`.

Read from the launcher's environment (RANK, LOCAL_RANK, WORLD_SIZE) rather than from an
accelerate state object: asking early must not initialise the process group before the
Trainer does, and a plain single-process run has none of these variables.
"""

from __future__ import annotations

import os


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0 alone reports progress and writes the run's output files."""
    return rank() == 0


STOP_DECISIONS = (None, "pause", "cancel")


def agreed_stop(decision: str | None, accelerator) -> str | None:
    """Rank 0's stop decision, on every rank.

    A pause signal reaches the ranks at different moments; if one rank stopped a step
    earlier than another, the next collective would hang and the checkpoint would mix two
    steps. One tiny broadcast per optimizer step makes them all stop together.
    """
    if accelerator is None or accelerator.num_processes <= 1:
        return decision
    import torch
    from accelerate.utils import broadcast

    flag = torch.tensor([STOP_DECISIONS.index(decision)], device=accelerator.device)
    return STOP_DECISIONS[int(broadcast(flag, from_process=0).item())]
