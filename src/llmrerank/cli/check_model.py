"""``llmrerank check-model``: check that a model and prompt give true scores before a run relies on them."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from typing import Any

from .argtypes import unit_interval
from .ranker_args import add_model_args, ranker_from_args


def add_parser(subparsers: Any) -> None:
    """Add the ``check-model`` subparser."""
    p = subparsers.add_parser(
        "check-model",
        help="check a model and prompt on a few built-in pairs (exit 1 on a failed check)",
        description=(
            "Check that a model and prompt give true scores: answer tokens, the chat template, cutting, the mass "
            "on the answer tokens, finite scores, batch invariance, relevant before unrelated. One line a check "
            "(pass, warn, fail or skip); exit status 1 when a check fails, 0 with warnings."
        ),
    )
    p.add_argument("--json", action="store_true", help="print a JSON list of the checks (name, status, detail, values)")
    p.add_argument(
        "--min-mass",
        type=unit_interval,
        default=None,
        help="the share of probability on the answer tokens below which answer_mass warns (fails for a --family; "
        "default 0.5)",
    )
    add_model_args(p, "pointwise")
    p.set_defaults(func=run)


def format_checks(checks: list[Any]) -> str:
    """The checks as text: one line each, then a count of each status."""
    width = max(len(c.name) for c in checks)
    lines = [f"{c.status:<4}  {c.name:<{width}}  {c.detail}" for c in checks]
    counts = Counter(c.status for c in checks)
    lines.append(", ".join(f"{counts[s]} {s}" for s in ("pass", "warn", "fail", "skip")))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Build the ranker the flags describe (its build checks run), run the forward checks, print them all;
    return 1 when a check failed."""
    from ..check import MIN_MASS, ModelCheckError, check_model, complete, failed

    try:
        ranker = ranker_from_args(args)
    except ModelCheckError as e:  # a build check failed: report it with the others, as a failed check
        checks = complete(e.checks, "not run: the ranker could not be built")
    else:
        checks = check_model(ranker, min_mass=MIN_MASS if args.min_mass is None else args.min_mass)
    if args.json:
        print(json.dumps([c.to_dict() for c in checks], indent=2))
    else:
        print(f"check-model: {args.model}, method {args.method}")
        print(format_checks(checks))
    sys.stdout.flush()
    return 1 if failed(checks) else 0
