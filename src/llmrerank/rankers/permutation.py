"""Pure parts of listwise reranking: window planning, identifiers, and parsing/repairing a model's permutation.

Nothing here touches a model, so every rule is a plain function with worked examples in the tests.

- :func:`plan_windows`: the sliding windows of one sweep, from the back of the list to the front.
- :func:`make_identifiers`: the labels shown in front of the passages (``1, 2, ...`` or ``A, B, ...``).
- :func:`parse_permutation`: read an answer such as ``"[2] > [1] > [3]"`` into a full permutation of the
  window, repairing it (duplicates dropped, unknown identifiers ignored, missing ones appended in their
  previous relative order) and saying exactly which repairs were made.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from ..prompts.base import LABELS

T = TypeVar("T")

IDENTIFIER_KINDS = ("numbers", "letters")

# An identifier is whatever stands between square brackets; anything bracketed that is not one of the window's
# identifiers (``[21]``, ``[]``, ``[2, 3]``) is counted as unknown rather than passed over.
_BRACKETED = re.compile(r"\[([^\[\]]*)\]")


def plan_windows(n: int, window_size: int = 20, step: int = 10) -> list[tuple[int, int]]:
    """The windows of one sliding sweep over ``n`` candidates, as half-open ``(start, end)`` pairs.

    The first window covers the last ``window_size`` candidates (``start = max(0, n - window_size)``); each
    next one ends ``step`` earlier, and the sweep stops with the window that starts at 0. That window may be
    shorter than ``window_size`` when ``n - window_size`` is not a multiple of ``step``. Strong candidates thus
    bubble up from the bottom: with a perfect model one sweep puts the best ``window_size - step`` first, in
    order.

    >>> plan_windows(25, 20, 10)
    [(5, 25), (0, 15)]
    >>> plan_windows(8, 20, 10)
    [(0, 8)]
    """
    if window_size < 2:
        raise ValueError(f"window_size must be at least 2, got {window_size}")
    if step < 1:
        raise ValueError(f"step must be at least 1, got {step}")
    if step > window_size:
        raise ValueError(f"step ({step}) may not exceed window_size ({window_size}): candidates would be skipped")
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    if n == 0:
        return []
    windows = []
    end = n
    while True:
        start = max(0, end - window_size)
        windows.append((start, end))
        if start == 0:
            return windows
        end -= step


def make_identifiers(kind: str, n: int) -> list[str]:
    """``n`` identifiers: ``numbers`` (``"1"``, ``"2"``, ...) or ``letters`` (``"A"`` ... ``"Z"``, at most 26)."""
    if kind == "numbers":
        return [str(i + 1) for i in range(n)]
    if kind == "letters":
        if n > len(LABELS):
            raise ValueError(f"letter identifiers go up to 26 (A..Z), but a window holds {n} candidates")
        return list(LABELS[:n])
    raise ValueError(f"unknown identifiers {kind!r}: choose one of {', '.join(IDENTIFIER_KINDS)}")


def find_identifiers(text: str) -> list[str]:
    """Every bracketed item in ``text``, stripped, in order: ``"[2] > [ 1 ]"`` -> ``["2", "1"]``."""
    return [m.strip() for m in _BRACKETED.findall(text)]


@dataclass(frozen=True)
class ParsedPermutation:
    """A model's answer read into a full permutation of a window, with the repairs it needed.

    Attributes:
        order: window positions best first; every position exactly once (the named ones, then the missing).
        ranked: the positions the model named, in its order, duplicates dropped.
        missing: positions the model did not name, appended in their previous relative order.
        duplicates: identifiers named again after their first mention (dropped), in the order seen.
        unknown: bracketed items that are not identifiers of this window (ignored), in the order seen.
    """

    order: tuple[int, ...]
    ranked: tuple[int, ...]
    missing: tuple[int, ...]
    duplicates: tuple[str, ...]
    unknown: tuple[str, ...]

    @property
    def repairs(self) -> int:
        """Missing identifiers appended + duplicates dropped + unknown items ignored."""
        return len(self.missing) + len(self.duplicates) + len(self.unknown)


def repair_permutation(named: Sequence[str], identifiers: Sequence[str]) -> ParsedPermutation:
    """Turn the identifiers a model named (in its order) into a full permutation of ``identifiers``.

    Duplicates are dropped (the first mention counts), unknown identifiers are ignored, and identifiers never
    named follow the named ones in their previous relative order (their order in ``identifiers``, which is
    the window's current order). Every one of these repairs is recorded in the result.
    """
    position = {label: i for i, label in enumerate(identifiers)}
    if len(position) != len(identifiers):
        raise ValueError(f"identifiers must be distinct, got {list(identifiers)}")
    ranked: list[int] = []
    seen: set[int] = set()
    duplicates: list[str] = []
    unknown: list[str] = []
    for label in named:
        i = position.get(label)
        if i is None:
            unknown.append(label)
        elif i in seen:
            duplicates.append(label)
        else:
            seen.add(i)
            ranked.append(i)
    missing = [i for i in range(len(identifiers)) if i not in seen]
    return ParsedPermutation(
        order=(*ranked, *missing),
        ranked=tuple(ranked),
        missing=tuple(missing),
        duplicates=tuple(duplicates),
        unknown=tuple(unknown),
    )


def parse_permutation(text: str, identifiers: Sequence[str]) -> ParsedPermutation:
    """Read an answer such as ``"[2] > [1] > [3]"`` into a repaired permutation (see :func:`repair_permutation`).

    Only bracketed items count; text around them (``"Ranking:"``, ``">"``) is ignored. Identifiers match
    exactly after stripping spaces (``"[a]"`` is not ``"A"``).

    >>> parse_permutation("[2] > [2] > [7]", ["1", "2", "3"]).order
    (1, 0, 2)
    """
    return repair_permutation(find_identifiers(text), identifiers)


def apply_order(items: Sequence[T], start: int, end: int, order: Sequence[int]) -> list[T]:
    """``items`` with the slice ``[start, end)`` rearranged: its new i-th element is its old ``order[i]``-th."""
    window = list(items[start:end])
    if sorted(order) != list(range(len(window))):
        raise ValueError(f"order {list(order)} is not a permutation of the {len(window)} window positions")
    return [*items[:start], *(window[i] for i in order), *items[end:]]
