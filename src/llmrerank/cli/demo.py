"""``llmrerank demo``: rerank a bundled DL19 sample with the default model and show nDCG@10."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from .argtypes import positive_int
from .ranker_args import add_model_args, ranker_from_args, resolve_method


def add_parser(subparsers: Any) -> None:
    """Add the ``demo`` subparser."""
    p = subparsers.add_parser("demo", help="rerank a bundled DL19 sample with the default model and show nDCG@10")
    p.add_argument("--top-k", type=positive_int, default=20, help="rerank this many per query (default 20)")
    p.add_argument("--out-dir", default=None)
    p.add_argument("--quiet", action="store_true")
    add_model_args(p, "likelihood")
    p.set_defaults(func=run)


def resume_hint(args: argparse.Namespace, argv: list[str]) -> str:
    from . import resume_command

    return f"the demo stopped before its table; run it again: {resume_command(argv)}"


def run(args: argparse.Namespace) -> None:
    """Rerank the bundled sample's BM25 run and print BM25 against the reranked run."""
    from ..data import find_run, load_beir, load_run, sample_path
    from ..evaluate import evaluate_runs, format_table
    from ..outputs import check_writable
    from ..pipeline import rerank_run

    resolve_method(args)
    folder = sample_path()
    ds = load_beir(folder, split="test")
    run_path = find_run(folder)
    if run_path is None:
        raise FileNotFoundError(f"the bundled sample at {folder} has no run file; reinstall llmrerank")
    run = load_run(run_path)
    print(
        f"demo: {len(ds.queries)} TREC DL19 queries, BM25 top-{max(len(v) for v in run.values())} each; "
        f"reranking with --method {args.method} --model {args.model}",
        file=sys.stderr,
    )
    if args.out_dir:
        check_writable(args.out_dir, "demo output", folder=True)  # before the model loads
    ranker = ranker_from_args(args)
    asked = getattr(getattr(ranker.backend, "options", None), "dtype", None)  # "auto" became bfloat16 or float32
    given = getattr(args, "dtype", None)
    how = f"--dtype {given}" if given else f"{args.method}'s default dtype, {asked}"
    print(f"computing in {ranker.backend.dtype} ({how})", file=sys.stderr)
    out_dir = Path(args.out_dir) if args.out_dir else Path(tempfile.mkdtemp(prefix="llmrerank-demo-"))
    out = out_dir / f"{args.method}.trec"
    report = rerank_run(ranker, ds.queries, ds.corpus, run, out, top_k=args.top_k, progress=not args.quiet)
    print(f"{report.summary()}", file=sys.stderr)
    ev = evaluate_runs(ds.qrels, {"BM25": run, f"{args.method} ({args.model})": load_run(out)})
    print(format_table(ev))
    print(f"\nreranked run: {out}")
