"""Token-budget packing: examples -> micro-batches of at most `budget` tokens (best-fit decreasing).

Why a token budget and not a row count: the fit plan sizes a micro-batch in tokens
(`RunPlan.micro_batch_tokens`); with rows of very different lengths a fixed row count either
pads (dense batches) or leaves most of the budget empty (packed rows of a few short examples).
Best-fit decreasing fills bins to within a few percent of the budget on real data (measured on
the Korean news rows, tests/training/test_packing.py), so every micro-batch does nearly the
same work and the peak memory the plan predicted is the one reached.

Why the bins are made once and only their order changes per epoch: the HF Trainer computes the
number of steps from `len(dataloader)` once, before the first epoch, and a resumed run skips the
batches it already consumed by counting them. Bins that changed from epoch to epoch could change
that count mid-run and make "skip k batches" land elsewhere. So the packing is a pure function of
(lengths, budget, seed) and the order of the bins a pure function of (seed, epoch): a run resumed
in epoch e rebuilds exactly the batches an uninterrupted run had.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterator, Sequence


def packing_budget(spec, plan=None) -> int:
    """Tokens per packed micro-batch: the run plan's `micro_batch_tokens`; without a plan (the
    CPU), the spec's own batch_rows x max_seq_length (`plan.spec_plan`)."""
    from core.training.plan import spec_plan

    return (plan or spec_plan(spec)).micro_batch_tokens


def pack(lengths: Sequence[int], budget: int, seed: int = 0) -> list[list[int]]:
    """Best-fit decreasing: indices grouped into bins of total length <= budget.

    Examples are placed longest first, each into the fullest bin it still fits (the one with the
    least room left), else a new bin. Equal lengths are ordered by a seeded shuffle, so the
    result is deterministic for (lengths, budget, seed). An example longer than the budget (the
    encoder caps rows at max_seq_length, so only when budget < max_seq_length) gets a bin of
    its own: it is never cut, and never dropped.
    """
    if budget < 1:
        raise ValueError(f"packing budget must be >= 1 token, got {budget}")
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    order.sort(key=lambda i: -lengths[i])  # stable: ties keep the seeded order
    bins: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (room left, bin index), sorted: the best fit is a bisect away
    for i in order:
        n = lengths[i]
        at = bisect.bisect_left(room, (n, -1))
        if at < len(room):
            left, b = room.pop(at)
            bins[b].append(i)
            if left - n > 0:
                bisect.insort(room, (left - n, b))
        else:
            bins.append([i])
            if budget - n > 0:
                bisect.insort(room, (budget - n, len(bins) - 1))
    return bins


def epoch_order(n_bins: int, seed: int, epoch: int) -> list[int]:
    """The order the bins are visited in an epoch: a shuffle seeded by seed + epoch."""
    order = list(range(n_bins))
    random.Random(seed + epoch).shuffle(order)
    return order


class PackedBatchSampler:
    """A batch sampler for torch's DataLoader: each batch is one bin of `pack(...)`.

    `set_epoch` (called by accelerate's DataLoaderShard at each epoch start, as for a
    DistributedSampler) picks that epoch's order; `len` is the same every epoch.
    """

    def __init__(self, lengths: Sequence[int], budget: int, seed: int = 0):
        self.lengths = list(lengths)
        self.budget = budget
        self.seed = seed
        self.epoch = 0
        self.bins = pack(self.lengths, budget, seed)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        for b in epoch_order(len(self.bins), self.seed, self.epoch):
            yield list(self.bins[b])

    def __len__(self) -> int:
        return len(self.bins)

    def fill_ratio(self) -> float:
        """Tokens packed / (bins x budget): the share of the budget that holds real tokens."""
        return sum(self.lengths) / max(len(self.bins) * self.budget, 1)
