"""The schedule of a run as pure functions: how many optimiser steps, the learning-rate factor of each, and
which groups each micro-batch holds. A resumed run recomputes them from the seed and the step alone."""

from __future__ import annotations

import math
import random
from functools import lru_cache


def total_steps(max_steps: int | None, epochs: int, n_groups: int, groups_per_step: int) -> int:
    """The run's optimiser steps: ``max_steps`` when set (it overrides epochs, as in transformers' Trainer),
    else enough for ``epochs`` passes over the groups (a last partial step included)."""
    if max_steps:
        return max_steps
    return epochs * math.ceil(n_groups / groups_per_step)


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """The learning rate's multiplier at ``step``: a linear warm-up over ``warmup_steps``, then a linear decay
    to zero at ``total_steps``."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    remaining = max(total_steps - step, 0)
    return remaining / max(total_steps - warmup_steps, 1)


@lru_cache(maxsize=2)  # the loop needs one epoch at a time (two where a step straddles epochs)
def epoch_order(seed: int, epoch: int, n_groups: int) -> tuple[int, ...]:
    """The groups of ``epoch`` in their shuffled order, from a generator of its own (the global RNG is left alone)."""
    order = list(range(n_groups))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return tuple(order)


def group_indices(step: int, micro: int, n_groups: int, groups_per_batch: int, grad_accum: int, seed: int) -> list[int]:
    """The groups of micro-batch ``micro`` of optimiser step ``step``: a pure function of the seed, the step and
    the micro-batch. Epochs follow one another without a gap, each in its own order."""
    start = (step * grad_accum + micro) * groups_per_batch
    return [epoch_order(seed, p // n_groups, n_groups)[p % n_groups] for p in range(start, start + groups_per_batch)]
