"""Argument types for numeric flags: ``type=`` callables that parse a flag's text and check its range, so a bad
value is a parse error (exit status 2, ``argument --top-k: must be at least 1, got 0``) before any work starts.

The ranges are :class:`llmrerank.options.Spec` rules, checked by :func:`llmrerank.options.violation` as the
options tables check theirs; :func:`spec_type` makes the type of any spec's flag.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

from ..options import Spec, violation


def spec_type(spec: Spec, name: str | None = None) -> Callable[[str], Any]:
    """A ``type=`` callable for a number flag declared by ``spec``: an int if ``spec.types`` has ``int`` and not
    ``float``, else a finite float; then ``spec``'s range (``minimum``, ``maximum``, ``below``, ``positive``)."""
    kind = float if float in spec.types or int not in spec.types else int

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            noun = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"must be {noun}, got {text!r}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        problem = violation(spec, value)
        if problem is not None:
            raise argparse.ArgumentTypeError(f"must be {problem[1]}, got {text}")
        return value

    parse.__name__ = name or kind.__name__  # argparse shows it in some messages
    return parse


positive_int = spec_type(Spec("", (int,), minimum=1), "positive_int")
"""An integer >= 1 (a count: ``--top-k``, ``--max-steps``)."""
nonnegative_int = spec_type(Spec("", (int,), minimum=0), "nonnegative_int")
"""An integer >= 0."""
nonnegative_float = spec_type(Spec("", (float, int), minimum=0), "nonnegative_float")
"""A finite number >= 0 (BM25's ``--k1``)."""
positive_float = spec_type(Spec("", (float, int), positive=True), "positive_float")
"""A finite number > 0 (``--cpus-per-worker``)."""
unit_interval = spec_type(Spec("", (float, int), minimum=0, maximum=1), "unit_interval")
"""A number from 0 to 1 (BM25's ``--b``)."""


def fusion(text: str) -> Any:
    """The ``--fuse`` flag: ``bm25:W`` as a :class:`~llmrerank.fusion.Fusion` (the form and range checked)."""
    from ..fusion import parse_fusion

    try:
        return parse_fusion(text)
    except (TypeError, ValueError) as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("fuse: ")) from None
