"""``llmrerank evaluate``: evaluate runs (the first is the baseline for significance)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .argtypes import positive_int


def add_parser(subparsers: Any) -> None:
    """Add the ``evaluate`` subparser."""
    p = subparsers.add_parser("evaluate", help="evaluate runs (the first is the baseline for significance)")
    p.add_argument("--data", default=None, help="BEIR folder whose qrels/<split>.tsv is used")
    p.add_argument("--split", default="test")
    p.add_argument("--qrels", default=None, help="a qrels file instead of --data")
    p.add_argument(
        "--metrics", nargs="+", default=None, help="ir_measures names (default: nDCG@10 RR@10 R@100 AP Judged@10)"
    )
    p.add_argument(
        "--rel",
        type=positive_int,
        default=None,
        help="the grade at or above which a document counts as relevant for the binary measures (default: 2 if "
        "the qrels are graded, else 1)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output (with per-query values)")
    p.add_argument("--per-query", action="store_true", help="also print the first metric per query")
    p.add_argument("--plot", default=None, help="write a per-query difference plot (PNG) for the first metric")
    p.add_argument("runs", nargs="*", help="TREC run files (at least one)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Print the metrics table (or JSON) of the runs; optionally per query and a plot."""
    if not args.runs:
        # --metrics takes every word after it: runs written after the list land in it
        taken = [m for m in args.metrics or [] if Path(m).is_file()]
        hint = f" (--metrics took {', '.join(taken)}: put the runs before --metrics, or end its list with --)"
        raise argparse.ArgumentError(None, "evaluate needs at least one run file" + (hint if taken else ""))
    if not args.data and not args.qrels:
        raise argparse.ArgumentError(None, "evaluate needs --data or --qrels")
    from ..data import load_beir, load_qrels, load_run
    from ..evaluate import DEFAULT_MEASURES, evaluate_runs, format_per_query, format_table, plot_per_query
    from ..outputs import check_writable

    if args.plot:
        check_writable(args.plot, "plot")  # before the work, not after it
    qrels = load_qrels(args.qrels) if args.qrels else load_beir(args.data, split=args.split).qrels
    runs = {}
    for path in args.runs:
        name = Path(path).name
        if name in runs:
            name = str(path)
        runs[name] = load_run(path)
    measures = args.metrics or list(DEFAULT_MEASURES)
    ev = evaluate_runs(qrels, runs, measures=measures, rel=args.rel)
    if args.json:
        print(json.dumps(ev.to_dict(), indent=2))
    else:
        print(format_table(ev))
        if args.per_query:
            print()
            print(format_per_query(ev, measures[0]))
    if args.plot:
        plot_per_query(ev, measures[0], args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
