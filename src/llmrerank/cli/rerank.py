"""``llmrerank rerank``: rerank the top k of a TREC run with an LLM."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .argtypes import positive_int
from .ranker_args import add_model_args, ranker_from_args


def add_parser(subparsers: Any) -> None:
    """Add the ``rerank`` subparser."""
    p = subparsers.add_parser("rerank", help="rerank the top k of a TREC run with an LLM")
    p.add_argument("--data", required=True, help="BEIR folder with the corpus and queries")
    p.add_argument("--split", default="test", help="qrels split whose queries are reranked")
    p.add_argument("--run", default=None, help="input TREC run (default: the one .trec file in --data)")
    p.add_argument(
        "--top-k", type=positive_int, default=100, help="rerank this many per query; the rest follow unchanged"
    )
    p.add_argument("--out", required=True, help="output TREC run; a JSON sidecar is written next to it")
    p.add_argument("--resume", action="store_true", help="keep the queries already complete in --out")
    p.add_argument("--queries-per-batch", type=positive_int, default=4, help="batch the documents of this many queries")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_args(p, "pointwise")
    p.set_defaults(func=run)


def load_run_arg(args: argparse.Namespace) -> Path:
    """The input run: ``--run``, or else the one .trec file in ``--data``."""
    from ..data import find_run

    if args.run:
        return Path(args.run)
    found = find_run(args.data)
    if found is None:
        raise FileNotFoundError(
            f"no --run given and {args.data} does not hold exactly one .trec file; name the run with --run"
        )
    return found


def resume_hint(args: argparse.Namespace, argv: list[str]) -> str:
    """What an interrupted rerank says: where its finished queries are, and the command that resumes it."""
    from ..outputs import partial_path
    from . import resume_command

    partial = partial_path(args.out)
    if not partial.exists():
        return f"nothing was written yet; run it again: {resume_command(argv)}"
    return f"the queries finished so far are kept in {partial}; resume with: {resume_command(argv, add=['--resume'])}"


def run(args: argparse.Namespace) -> None:
    """Rerank the input run and write the output run with its sidecar."""
    from ..data import load_beir, load_run
    from ..outputs import OutputLock, check_writable
    from ..pipeline import check_resumable, rerank_run

    ds = load_beir(args.data, split=args.split)
    run_path = load_run_arg(args)
    run = load_run(run_path)
    out = check_writable(args.out, "output run")
    if out.resolve() == run_path.resolve():
        raise ValueError(f"--out {out} is the input run; write the reranked run to another path")
    with OutputLock(out, "output run"):  # a second writer is refused before it loads a model
        if args.resume:
            check_resumable(out)  # a missing or damaged sidecar, too
        ranker = ranker_from_args(args)
        report = rerank_run(
            ranker,
            ds.queries,
            ds.corpus,
            run,
            out,
            top_k=args.top_k,
            resume=args.resume,
            queries_per_batch=args.queries_per_batch,
            progress=not args.quiet,
            # resolved: the same files spelled another way still resume
            sidecar={"data": str(Path(args.data).resolve()), "split": args.split, "input_run": str(run_path.resolve())},
        )
    print(f"wrote {out}: {report.summary()}", file=sys.stderr)
