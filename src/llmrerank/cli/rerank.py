"""``llmrerank rerank``: rerank the top k of a TREC run with an LLM."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .argtypes import fusion, nonnegative_float, positive_float, positive_int
from .ranker_args import add_model_args, ranker_from_args, ranker_options_from_args


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
    p.add_argument(
        "--fuse",
        type=fusion,
        metavar="bm25:W",
        help="order the reranked top k by W x the first stage's score + (1 - W) x the reranker's, each min-max "
        "normalised per query (W in [0, 1])",
    )
    p.add_argument(
        "--max-minutes",
        type=positive_float,
        help="stop after the batch that ends past this many minutes of reranking, keeping what is done (exit "
        "status 3); the same command with --resume goes on",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_args(p, "pointwise")
    add_engine_args(p)
    p.set_defaults(func=run)


ENGINE_FLAGS = ("num_workers", "address", "gpus_per_worker", "cpus_per_worker", "start_timeout", "replace_timeout")


def add_engine_args(p: argparse.ArgumentParser) -> None:
    """The "engine" group: where the ranking runs (this process, or a Ray cluster's workers)."""
    g = p.add_argument_group("engine")
    g.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: rank in this process; ray: shard the run by query onto Ray workers (the ray extra)",
    )
    g.add_argument("--num-workers", type=positive_int, help="ray: workers (default: what the cluster allows)")
    g.add_argument("--address", help="ray: a running cluster (host:port, auto); default: start a local one")
    g.add_argument("--gpus-per-worker", type=nonnegative_float, help="ray: GPUs per worker (0.5: two share one)")
    g.add_argument("--cpus-per-worker", type=positive_float, help="ray: CPUs and torch threads per worker (1)")
    g.add_argument(
        "--start-timeout",
        type=positive_float,
        help="ray: seconds a worker may take to be placed and load the model before the run ends (600)",
    )
    g.add_argument(
        "--replace-timeout",
        type=positive_float,
        help="ray: seconds a replacement for a dead worker may take to start before its slot is given up "
        "(default: --start-timeout)",
    )


def engine_from_args(args: argparse.Namespace) -> Any:
    """The Ray engine the flags describe, or None for ``--engine local`` (which takes none of the ray flags)."""
    given = {name: getattr(args, name) for name in ENGINE_FLAGS if getattr(args, name) is not None}
    if args.engine == "local":
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            verb = "applies" if len(given) == 1 else "apply"
            raise argparse.ArgumentError(None, f"{flags} {verb} to --engine ray only")
        return None
    from ..distributed import RayEngine

    return RayEngine(**given)


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


def run(args: argparse.Namespace) -> int:
    """Rerank the input run and write the output run with its sidecar; 3 (``STOPPED``) when ``--max-minutes``
    stopped it first."""
    from ..data import load_beir, load_run
    from ..outputs import OutputLock, check_writable
    from ..pipeline import check_resumable, rerank_run

    engine = engine_from_args(args)
    ds = load_beir(args.data, split=args.split)
    run_path = load_run_arg(args)
    run = load_run(run_path)
    out = check_writable(args.out, "output run")
    if out.resolve() == run_path.resolve():
        raise ValueError(f"--out {out} is the input run; write the reranked run to another path")
    with OutputLock(out, "output run"):  # a second writer is refused before it loads a model
        if args.resume:
            check_resumable(out)  # a missing or damaged sidecar, too
        if engine is None:
            ranker = ranker_from_args(args)
        else:  # the workers load the model, not this process
            backend, options = ranker_options_from_args(args)
            ranker = {"method": args.method, "model": args.model, "backend": backend, "options": options}
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
            engine=engine,
            fuse=args.fuse,
            # resolved: the same files spelled another way still resume
            sidecar={"data": str(Path(args.data).resolve()), "split": args.split, "input_run": str(run_path.resolve())},
            max_seconds=args.max_minutes * 60 if args.max_minutes is not None else None,
        )
    if report.queries_left:
        from ..outputs import partial_path
        from . import STOPPED, resume_command

        print(
            f"stopped at --max-minutes {args.max_minutes:g} ({report.summary()}); kept in {partial_path(out)}; "
            f"go on with: {resume_command(args.argv, add=['--resume'])}",
            file=sys.stderr,
        )
        return STOPPED
    print(f"wrote {out}: {report.summary()}", file=sys.stderr)
    return 0
