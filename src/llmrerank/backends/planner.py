"""How a backend cuts one call's sequences into forward passes: pure functions over token ids and lengths.

Two plans, both deterministic and independent of the model:

- :func:`plan_batches` groups sequences by a **token budget** rather than a count: sorted longest first, a pass
  takes sequences while its padded size (rows × its longest row) stays within ``max_tokens`` and its rows
  within ``max_rows``. Short prompts then share large passes and long ones small passes, so the memory of a pass
  is bounded whatever the lengths, and padding stays small. Given ``pass_cost`` (what one more pass costs, in
  tokens), it cuts the sorted order where the padded tokens plus the passes' cost are the least instead: on a
  device where a pass of one row already keeps it busy (a CPU), padding a short prompt to a long one's width
  costs more than running it in a pass of its own.
- :func:`prefix_groups` finds the **shared prefixes** worth computing once: the prompts of one query share the
  instruction and the query (the document comes after), and every prompt of a run may share a fixed
  instruction. Sequences are grouped so that the tokens saved, (rows - 1) × prefix length per group less a
  fixed cost per group, is the largest possible; each prefix leaves every member at least one token of its own,
  so the last position is always computed.

:func:`plan` puts the two together: the passes of a call, each with the prefix length its rows share (0: none).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# A prefix group pays for one extra forward pass (its prefix) and keeps its rows out of other groups' passes:
# worth it only when it saves more than this many tokens.
GROUP_COST = 32
MIN_PREFIX = 8


@dataclass(frozen=True)
class Pass:
    """One forward pass: the indices of its rows (into the call's sequences) and the prefix they share."""

    rows: tuple[int, ...]
    prefix: int = 0  # tokens at the start of every row computed once, before the pass (0: no shared prefix)
    group: int = -1  # which prefix group the rows come from (-1: none); passes of a group are consecutive


def plan_batches(
    lengths: Sequence[int], max_tokens: int, max_rows: int, pass_cost: int | None = None
) -> list[list[int]]:
    """Indices of ``lengths`` cut into passes, longest first, each within ``max_tokens`` padded tokens and
    ``max_rows`` rows. A sequence longer than the budget gets a pass of its own. Ties keep input order.

    ``pass_cost=None`` fills each pass as far as the budget allows (the fewest passes). A number is the cost of
    a pass beyond its padded tokens, in tokens: the passes are then the cut of the sorted order with the least
    total ``pass_cost + rows × width`` (found exactly, by dynamic programming over where each pass ends; with
    widths set by each pass's first row, the best plan cuts the sorted order into runs, so this is the best plan).
    0 pads nothing; a large cost gives the fewest passes, as None does.
    """
    if max_tokens < 1 or max_rows < 1:
        raise ValueError(f"max_tokens and max_rows must be at least 1, got {max_tokens} and {max_rows}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    if pass_cost is not None:
        return _least_cost_passes(lengths, order, max_tokens, max_rows, pass_cost)
    passes: list[list[int]] = []
    for i in order:
        current = passes[-1] if passes else None
        # Sorted longest first, so the pass's first row sets its width.
        if current and len(current) < max_rows and (len(current) + 1) * lengths[current[0]] <= max_tokens:
            current.append(i)
        else:
            passes.append([i])
    return passes


def _least_cost_passes(
    lengths: Sequence[int], order: list[int], max_tokens: int, max_rows: int, pass_cost: int
) -> list[list[int]]:
    if pass_cost < 0:
        raise ValueError(f"pass_cost must be at least 0, got {pass_cost}")
    n = len(order)
    best = [0] + [float("inf")] * n  # best[i]: the least cost of the first i sequences of the order
    start = [0] * (n + 1)  # where the last pass of that best plan starts
    for i in range(1, n + 1):
        for j in range(i - 1, max(i - max_rows, 0) - 1, -1):  # the last pass is order[j:i]
            rows, width = i - j, lengths[order[j]]
            if rows > 1 and rows * width > max_tokens:
                break  # an earlier start only adds rows and widens the pass
            cost = best[j] + pass_cost + rows * width
            if cost <= best[i]:  # a tie goes to the longer pass: fewer passes for the same cost
                best[i], start[i] = cost, j
    passes: list[list[int]] = []
    end = n
    while end:
        passes.append(order[start[end] : end])
        end = start[end]
    return passes[::-1]


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def prefix_groups(
    sequences: Sequence[Sequence[int]],
    limits: Sequence[int] | None = None,
    min_prefix: int = MIN_PREFIX,
    group_cost: int = GROUP_COST,
) -> list[tuple[int, list[int]]]:
    """Groups of sequences that share a prefix worth computing once: ``(prefix length, indices)`` each.

    Sorted lexicographically, sequences with a long common prefix lie next to each other, and the common
    prefix of a run of them is the smallest common prefix of neighbours in it. The best grouping of a run is
    either the whole run as one group (its prefix is that smallest value) or the best groupings of the two
    sides of the neighbour pair where the smallest value occurs (a group across that pair has the smallest
    prefix anyway, so it might as well be the whole run): a recursion over those splits finds the grouping that
    saves the most tokens. A prefix is capped at each member's ``limits`` entry (default: one token short of its
    length, so its last position is computed in the pass). Sequences in no group are left out; indices within a
    group are in input order.
    """
    n = len(sequences)
    if n < 2:
        return []
    if limits is None:
        limits = [len(s) - 1 for s in sequences]
    elif len(limits) != n:
        raise ValueError(f"{n} sequences but {len(limits)} prefix limits")
    order = sorted(range(n), key=lambda i: tuple(sequences[i]))
    # shared[k]: what order[k] and order[k + 1] share, within both limits
    shared = [
        min(_common(sequences[a], sequences[b]), limits[a], limits[b])
        for a, b in zip(order, order[1:])
    ]
    groups: list[tuple[int, list[int]]] = []
    # An explicit stack instead of recursion (a run can be thousands long). Each item is a run order[lo..hi]
    # (inclusive); we decide it whole or split it at its weakest neighbour pair. To compare the two, the value
    # of the split halves must be known first, so runs are visited twice (post-order).
    value: dict[tuple[int, int], int] = {}
    choice: dict[tuple[int, int], int | None] = {}  # split position, or None: one group

    def weakest(lo: int, hi: int) -> int:
        return min(range(lo, hi), key=lambda k: shared[k])

    stack: list[tuple[int, int, bool]] = [(0, n - 1, False)]
    while stack:
        lo, hi, expanded = stack.pop()
        if lo == hi:
            value[(lo, hi)] = 0
            choice[(lo, hi)] = None
            continue
        k = weakest(lo, hi)
        if not expanded:
            stack.append((lo, hi, True))
            stack.append((lo, k, False))
            stack.append((k + 1, hi, False))
            continue
        prefix = shared[k]
        whole = (hi - lo) * prefix - group_cost if prefix >= min_prefix else 0
        split = value[(lo, k)] + value[(k + 1, hi)]
        if whole > split and whole > 0:
            value[(lo, hi)], choice[(lo, hi)] = whole, None
        else:
            value[(lo, hi)], choice[(lo, hi)] = split, k
    # Read the decisions from the top.
    todo = [(0, n - 1)]
    while todo:
        lo, hi = todo.pop()
        k = choice[(lo, hi)]
        if k is None:
            if hi > lo and value[(lo, hi)] > 0:
                prefix = min(shared[lo:hi])
                groups.append((prefix, sorted(order[lo : hi + 1])))
        else:
            todo.append((k + 1, hi))
            todo.append((lo, k))
    groups.sort(key=lambda g: g[1][0])
    return groups


def plan(
    sequences: Sequence[Sequence[int]],
    max_tokens: int,
    max_rows: int,
    reuse_prefix: bool = True,
    limits: Sequence[int] | None = None,
    pass_cost: int | None = None,
) -> list[Pass]:
    """The passes of one call: first each prefix group's passes (budgeted on the rows' own tokens after the
    prefix), then the rest by :func:`plan_batches` (with ``pass_cost``). ``limits`` caps each sequence's shared
    prefix (see :func:`prefix_groups`)."""
    passes: list[Pass] = []
    grouped: set[int] = set()
    if reuse_prefix:
        for g, (prefix, members) in enumerate(prefix_groups(sequences, limits)):
            grouped.update(members)
            rest = [len(sequences[i]) - prefix for i in members]
            for chunk in plan_batches(rest, max_tokens, max_rows, pass_cost):
                passes.append(Pass(tuple(members[j] for j in chunk), prefix, g))
    others = [i for i in range(len(sequences)) if i not in grouped]
    for chunk in plan_batches([len(sequences[i]) for i in others], max_tokens, max_rows, pass_cost):
        passes.append(Pass(tuple(others[j] for j in chunk)))
    return passes
