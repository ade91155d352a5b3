"""``llmrerank generate-queries``: synthetic training queries for a corpus, filtered, as a BEIR folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..options import Spec
from .argtypes import nonnegative_int, positive_float, positive_int, spec_type


def add_parser(subparsers: Any) -> None:
    """Add the ``generate-queries`` subparser."""
    p = subparsers.add_parser(
        "generate-queries",
        help="generate one query per sampled passage (few-shot, sampled), filter them, write a BEIR folder",
    )
    p.add_argument("--data", required=True, help="BEIR folder whose corpus the passages are drawn from")
    p.add_argument(
        "--out",
        required=True,
        help="the BEIR folder to write (resumable: run again to continue, or with more --passages to grow it)",
    )
    p.add_argument("--model", default="default", help="the generating model: a preset or a Hugging Face folder")
    p.add_argument("--passages", type=positive_int, required=True, help="passages to write a query for")
    p.add_argument("--examples", type=nonnegative_int, default=3, help="few-shot examples in the prompt (3)")
    p.add_argument(
        "--examples-split", default="train", help="the labelled split of --data the examples come from (train)"
    )
    p.add_argument("--temperature", type=spec_type(Spec("", (float,), positive=True)), default=0.7)
    p.add_argument("--top-p", type=spec_type(Spec("", (float,), positive=True, maximum=1.0)), default=0.95)
    p.add_argument("--max-new-tokens", type=positive_int, default=32, help="longest query, in tokens (32)")
    p.add_argument("--passage-tokens", type=positive_int, default=192, help="a passage is cut to this many (192)")
    p.add_argument("--min-words", type=positive_int, default=3, help="shorter queries are dropped (3)")
    p.add_argument("--candidates", type=positive_int, default=100, help="BM25 candidates per query (100)")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--batch-size", type=positive_int, default=8, help="passages generated at once (8)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="float32")
    p.add_argument("--threads", type=positive_int, default=None)
    g = p.add_argument_group("consistency filter (the teacher's top k must hold the source passage)")
    g.add_argument("--teacher-run", help="an existing teacher run of --out's 'generated' split")
    g.add_argument("--teacher-model", help="rerank the candidates with this model as the teacher (e.g. the 0.5B)")
    g.add_argument("--teacher-method", default="likelihood", help="the teacher's method (likelihood)")
    g.add_argument("--teacher-max-length", type=positive_int, default=256)
    g.add_argument("--teacher-top-k", type=positive_int, default=20, help="candidates the teacher reranks (20)")
    g.add_argument(
        "--teacher-dtype", choices=["auto", "float32", "bfloat16"], default=None,
        help="the teacher's dtype (default: its method's, as llmrerank rerank: auto for likelihood)",
    )
    g.add_argument("--consistency-k", type=positive_int, default=3, help="the source must be in the top k (3)")
    p.add_argument(
        "--max-minutes",
        type=positive_float,
        help="stop after the batch (of passages, or of the teacher's queries) that ends past this many minutes, "
        "keeping what is done (exit status 3); the same command goes on",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def resume_hint(args: argparse.Namespace, argv: list[str]) -> str:
    from . import resume_command

    return f"the queries generated so far are kept in {args.out}; run the same command again to continue: " + (
        resume_command(argv)
    )


def run(args: argparse.Namespace) -> int:
    """Generate, filter and write the folder; then, with a teacher, the consistency filter. Returns 3
    (``STOPPED``) when ``--max-minutes`` stopped it first."""
    import time

    from ..backends.hf import HFBackend
    from ..data import load_beir, load_corpus, load_run
    from ..outputs import OutputLock, check_writable, partial_path
    from ..train import synthetic

    if args.teacher_run and args.teacher_model:
        raise argparse.ArgumentError(None, "give --teacher-run or --teacher-model, not both")
    settings = synthetic.GenerationSettings(
        passages=args.passages,
        examples=args.examples,
        examples_split=args.examples_split if args.examples else None,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        passage_tokens=args.passage_tokens,
        seed=args.seed,
        min_words=args.min_words,
        candidates=args.candidates,
        model=args.model,
        dtype=args.dtype,
    )
    data = Path(args.data)
    labelled = load_beir(data, split=args.examples_split) if args.examples else None
    corpus = labelled.corpus if labelled is not None else load_corpus(data / "corpus.jsonl")
    out = check_writable(args.out, "generated queries", folder=True)
    if out.resolve() == data.resolve():
        raise ValueError("--out is --data: write the generated queries to a folder of their own")
    synthetic.check_out_folder(out)
    teacher_run = Path(args.teacher_run) if args.teacher_run else None
    if teacher_run is not None and not teacher_run.is_file():
        raise FileNotFoundError(f"--teacher-run {teacher_run} not found")
    with OutputLock(out / "generated.jsonl", "generated queries"):
        examples = synthetic.few_shot_examples(labelled, args.examples, args.seed) if labelled is not None else []
        backend = HFBackend.load(args.model, dtype=args.dtype, threads=args.threads)
        budget = None if args.max_minutes is None else args.max_minutes * 60
        deadline = None if budget is None else time.perf_counter() + budget
        had = len(synthetic.read_generated(out / synthetic.GENERATED))
        generated = synthetic.generate(
            backend, corpus, examples, out, settings, batch_size=args.batch_size, progress=not args.quiet,
            max_seconds=budget,
        )
        del backend
        if len(generated) < settings.passages:
            return _stopped(args, f"{len(generated)} of {settings.passages} passages have their query")
        report = synthetic.write_dataset(out, data / "corpus.jsonl", corpus, generated, settings, not args.quiet)
        counts = report["counts"]
        print(
            f"generated {counts['generated']} queries: kept {counts['kept']}, dropped {counts['too_short']} too "
            f"short, {counts['copied']} copied, {counts['duplicate']} duplicates",
            file=sys.stderr,
        )
        if args.teacher_model:
            teacher_run = out / f"teacher-{args.teacher_method}.trec"
            left = None if deadline is None else deadline - time.perf_counter()
            if left is not None and left <= 0:
                if len(generated) > had:  # this call has done some work: the teacher starts in the next one
                    return _stopped(args, "the queries are written; the teacher has not started")
                left = 1e-9  # a call always makes progress: one batch of the teacher's at least
            if not _teacher(args, out, teacher_run, left):
                return _stopped(args, f"the teacher's run is not finished ({partial_path(teacher_run)} so far)")
        if teacher_run is None:
            synthetic.write_qrels(out / "qrels" / "train.tsv", synthetic.generated_sources(out))
            print(f"wrote {out} (split 'train': every kept query; no consistency filter)", file=sys.stderr)
            return 0
        report = synthetic.consistency_filter(out, load_run(teacher_run), args.consistency_k)
        c = report["consistency"]
        missing = c["not_in_teacher_run"]
        unranked = f" ({missing} not in the teacher run, dropped: rerank them with the teacher)" if missing else ""
        print(
            f"consistency (source in the teacher's top {c['k']}): kept {c['kept']} of {c['checked']}{unranked}; "
            f"wrote {out} (split 'train'; teacher run {teacher_run})",
            file=sys.stderr,
        )
    return 0


def _stopped(args: argparse.Namespace, what: str) -> int:
    from . import STOPPED, resume_command

    print(f"stopped at --max-minutes {args.max_minutes:g}: {what}; go on with: {resume_command(args.argv)}",
          file=sys.stderr)
    return STOPPED


def _teacher(args: argparse.Namespace, out: Path, teacher_run: Path, max_seconds: float | None = None) -> bool:
    """The teacher's rerank of the generated split's BM25 candidates (resumable, as ``llmrerank rerank``); False
    when ``max_seconds`` stopped it first."""
    from ..data import load_beir, load_run
    from ..outputs import partial_path
    from ..pipeline import rerank_run
    from ..registry import Reranker
    from ..train.synthetic import RUN

    ds = load_beir(out, split="generated")
    dtype = {"dtype": args.teacher_dtype} if args.teacher_dtype else {}  # none: the method's own
    ranker = Reranker(
        args.teacher_method, model=args.teacher_model, max_length=args.teacher_max_length, threads=args.threads,
        **dtype,
    )
    report = rerank_run(
        ranker,
        ds.queries,
        ds.corpus,
        load_run(out / RUN),
        teacher_run,
        top_k=args.teacher_top_k,
        resume=teacher_run.exists() or partial_path(teacher_run).exists(),
        progress=not args.quiet,
        sidecar={"data": str(out.resolve()), "split": "generated"},
        max_seconds=max_seconds,
    )
    return not report.queries_left
