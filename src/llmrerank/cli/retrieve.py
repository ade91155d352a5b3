"""``llmrerank retrieve``: BM25 first stage over a BEIR folder -> TREC run."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .argtypes import nonnegative_float, positive_int, unit_interval


def add_parser(subparsers: Any) -> None:
    """Add the ``retrieve`` subparser."""
    p = subparsers.add_parser("retrieve", help="BM25 first stage over a BEIR folder -> TREC run")
    p.add_argument("--data", required=True, help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/)")
    p.add_argument("--split", default="test")
    p.add_argument("--top-k", type=positive_int, default=100, help="documents kept per query (default 100)")
    p.add_argument("--k1", type=nonnegative_float, default=0.9, help="BM25 term saturation, >= 0 (default 0.9)")
    p.add_argument("--b", type=unit_interval, default=0.4, help="BM25 length normalisation, 0 to 1 (default 0.4)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Retrieve the top k per query with BM25 and write them as a TREC run."""
    from ..data import load_beir, write_run
    from ..outputs import OutputLock, check_writable
    from ..retrieve import bm25_search

    ds = load_beir(args.data, split=args.split)
    out = check_writable(args.out, "output run")
    with OutputLock(out, "output run"):
        run = bm25_search(ds.corpus, ds.queries, top_k=args.top_k, k1=args.k1, b=args.b)
        write_run(out, run, tag="bm25")  # whole or not at all
    print(f"wrote {args.out}: {len(run)} queries, top {args.top_k}", file=sys.stderr)
