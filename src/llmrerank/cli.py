"""The ``llmrerank`` command: retrieve, rerank, evaluate, demo. A thin layer over the public API."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__

EPILOG = "Models are never downloaded: presets come from installed packages (see `llmrerank rerank --help`)."


def _add_model_args(p: argparse.ArgumentParser, method_default: str) -> None:
    from .registry import METHODS

    g = p.add_argument_group("model and method")
    g.add_argument("--method", default=method_default, choices=sorted(METHODS), help="ranking method")
    g.add_argument(
        "--model",
        default="default",
        help="preset (default = qwen2.5-0.5b, smollm2-135m), a Hugging Face folder, or a .gguf file",
    )
    g.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="token budget of one prompt (documents are cut); default 512, listwise 4096 (a window and its answer), "
        "pairwise and setwise 4096",
    )
    g.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, or auto")
    g.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    g.add_argument("--prompt-file", default=None, help="a prompt template (.toml or .json)")
    g.add_argument("--tokens", default=None, help="pointwise answer tokens: yes_no, true_false, or 'WORD,WORD'")
    g.add_argument(
        "--normalisation",
        default=None,
        choices=["pair_softmax", "vocab_softmax", "yes_logit", "logit"],
        help="pointwise score normalisation (default pair_softmax; logit = z_yes - z_no)",
    )
    g.add_argument("--reduction", default=None, choices=["mean", "sum"], help="likelihood: mean (default) or sum")
    g.add_argument("--window-size", type=int, default=None, help="listwise: candidates per window (default 20)")
    g.add_argument("--step", type=int, default=None, help="listwise: how far the window moves up (default 10)")
    g.add_argument("--passes", type=int, default=None, help="listwise: sweeps over the list (default 1)")
    g.add_argument(
        "--decoding",
        default=None,
        choices=["generate", "first"],
        help="listwise: generate a permutation (default) or FIRST (first-token logits, one forward pass)",
    )
    g.add_argument(
        "--identifiers",
        default=None,
        choices=["numbers", "letters"],
        help="listwise: passage identifiers (default numbers; letters for FIRST)",
    )
    g.add_argument(
        "--passage-tokens",
        type=int,
        default=None,
        help="listwise, pairwise, setwise: each passage cut to this (default 100)",
    )
    g.add_argument(
        "--max-new-tokens", type=int, default=None, help="listwise: generation cap (default: a full permutation)"
    )
    g.add_argument(
        "--aggregation",
        default=None,
        choices=["allpairs", "heapsort", "bubblesort"],
        help="pairwise: allpairs (default; sum of win probabilities), heapsort or bubblesort of the top k; "
        "setwise: heapsort (default) or bubblesort",
    )
    g.add_argument(
        "--sort-top-k",
        type=int,
        default=None,
        help="pairwise/setwise sorting: fully sort this many (default 10); the rest keep their input order",
    )
    g.add_argument(
        "--pair-top-k", type=int, default=None, help="pairwise allpairs: compare all pairs of the first N (default all)"
    )
    g.add_argument("--set-size", type=int, default=None, help="setwise: passages per prompt (default 4)")


def _ranker_from_args(args: argparse.Namespace) -> Any:
    from .registry import Reranker, method_options

    options: dict[str, Any] = {
        "max_length": args.max_length,
        "batch_size": args.batch_size,
        "dtype": args.dtype,
        "device": args.device,
        "threads": args.threads,
    }
    method_specific = {  # option name -> (flag, value)
        "template": ("--prompt-file", args.prompt_file),
        "tokens": ("--tokens", _parse_tokens(args.tokens)),
        "normalisation": ("--normalisation", args.normalisation),
        "reduction": ("--reduction", args.reduction),
        "window_size": ("--window-size", args.window_size),
        "step": ("--step", args.step),
        "passes": ("--passes", args.passes),
        "decoding": ("--decoding", args.decoding),
        "identifiers": ("--identifiers", args.identifiers),
        "passage_tokens": ("--passage-tokens", args.passage_tokens),
        "max_new_tokens": ("--max-new-tokens", args.max_new_tokens),
        "aggregation": ("--aggregation", args.aggregation),
        "sort_top_k": ("--sort-top-k", args.sort_top_k),
        "pair_top_k": ("--pair-top-k", args.pair_top_k),
        "set_size": ("--set-size", args.set_size),
    }
    accepted = method_options(args.method)
    for name, (flag, value) in method_specific.items():
        if value is None:
            continue
        if name not in accepted:
            raise ValueError(f"{flag} does not apply to --method {args.method}")
        options[name] = value
    for name in ("threads", "max_length"):  # unset: each method's own default
        if options[name] is None:
            del options[name]
    return Reranker(args.method, model=args.model, **options)


def _parse_tokens(value: str | None) -> Any:
    if value is None or "," not in value:
        return value
    return tuple(w for w in value.split(","))


def cmd_retrieve(args: argparse.Namespace) -> None:
    from .data import load_beir, write_run
    from .retrieve import bm25_search

    ds = load_beir(args.data, split=args.split)
    run = bm25_search(ds.corpus, ds.queries, top_k=args.top_k, k1=args.k1, b=args.b)
    write_run(args.out, run, tag="bm25")
    print(f"wrote {args.out}: {len(run)} queries, top {args.top_k}", file=sys.stderr)


def _load_run_arg(args: argparse.Namespace) -> Path:
    from .data import find_run

    if args.run:
        return Path(args.run)
    found = find_run(args.data)
    if found is None:
        raise SystemExit(f"error: no --run given and {args.data} does not hold exactly one .trec file")
    return found


def cmd_rerank(args: argparse.Namespace) -> None:
    from .data import load_beir, load_run
    from .pipeline import rerank_run

    ds = load_beir(args.data, split=args.split)
    run_path = _load_run_arg(args)
    run = load_run(run_path)
    ranker = _ranker_from_args(args)
    report = rerank_run(
        ranker,
        ds.queries,
        ds.corpus,
        run,
        args.out,
        top_k=args.top_k,
        resume=args.resume,
        queries_per_batch=args.queries_per_batch,
        progress=not args.quiet,
        sidecar={"data": str(args.data), "split": args.split, "input_run": str(run_path)},
    )
    print(f"wrote {args.out}: {report.summary()}", file=sys.stderr)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .data import load_beir, load_qrels, load_run
    from .evaluate import DEFAULT_MEASURES, evaluate_runs, format_per_query, format_table, plot_per_query

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


def cmd_demo(args: argparse.Namespace) -> None:
    from .data import find_run, load_beir, load_run, sample_path
    from .evaluate import evaluate_runs, format_table
    from .pipeline import rerank_run

    folder = sample_path()
    ds = load_beir(folder, split="test")
    run_path = find_run(folder)
    if run_path is None:
        raise SystemExit(f"error: the bundled sample at {folder} has no run file")
    run = load_run(run_path)
    print(
        f"demo: {len(ds.queries)} TREC DL19 queries, BM25 top-{max(len(v) for v in run.values())} each; "
        f"reranking with --method {args.method} --model {args.model}",
        file=sys.stderr,
    )
    ranker = _ranker_from_args(args)
    out_dir = Path(args.out_dir) if args.out_dir else Path(tempfile.mkdtemp(prefix="llmrerank-demo-"))
    out = out_dir / f"{args.method}.trec"
    report = rerank_run(ranker, ds.queries, ds.corpus, run, out, top_k=args.top_k, progress=not args.quiet)
    print(f"{report.summary()}", file=sys.stderr)
    ev = evaluate_runs(ds.qrels, {"BM25": run, f"{args.method} ({args.model})": load_run(out)})
    print(format_table(ev))
    print(f"\nreranked run: {out}")


def cmd_train(args: argparse.Namespace) -> None:
    from .train.config import TrainConfig
    from .train.trainer import Trainer

    config = TrainConfig.load(args.config, output_dir=args.output_dir, max_steps=args.max_steps)
    result = Trainer(config).train(resume=not args.no_resume, progress=not args.quiet)
    for entry in result.dev:
        print(json.dumps(entry))
    if result.best is not None:
        print(f"keep_best: the weights of step {result.best['step']} (dev nDCG@10 {result.best['nDCG@10']:.4f})")
    print(f"trained model: {result.model_dir} (use --model {result.model_dir} --method {config.method})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmrerank", description="Rerank documents with LLMs.", epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"llmrerank {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("retrieve", help="BM25 first stage over a BEIR folder -> TREC run")
    p.add_argument("--data", required=True, help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/)")
    p.add_argument("--split", default="test")
    p.add_argument("--top-k", type=int, default=100)
    p.add_argument("--k1", type=float, default=0.9)
    p.add_argument("--b", type=float, default=0.4)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_retrieve)

    p = sub.add_parser("rerank", help="rerank the top k of a TREC run with an LLM")
    p.add_argument("--data", required=True, help="BEIR folder with the corpus and queries")
    p.add_argument("--split", default="test", help="qrels split whose queries are reranked")
    p.add_argument("--run", default=None, help="input TREC run (default: the one .trec file in --data)")
    p.add_argument("--top-k", type=int, default=100, help="rerank this many per query; the rest follow unchanged")
    p.add_argument("--out", required=True, help="output TREC run; a JSON sidecar is written next to it")
    p.add_argument("--resume", action="store_true", help="keep the queries already complete in --out")
    p.add_argument("--queries-per-batch", type=int, default=4, help="batch the documents of this many queries")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_model_args(p, "pointwise")
    p.set_defaults(func=cmd_rerank)

    p = sub.add_parser("evaluate", help="evaluate runs (the first is the baseline for significance)")
    p.add_argument("--data", default=None, help="BEIR folder whose qrels/<split>.tsv is used")
    p.add_argument("--split", default="test")
    p.add_argument("--qrels", default=None, help="a qrels file instead of --data")
    p.add_argument(
        "--metrics", nargs="+", default=None, help="ir_measures names (default: nDCG@10 RR@10 R@100 AP Judged@10)"
    )
    p.add_argument("--rel", type=int, default=None, help="relevance threshold, binary measures (default: 2 if graded)")
    p.add_argument("--json", action="store_true", help="machine-readable output (with per-query values)")
    p.add_argument("--per-query", action="store_true", help="also print the first metric per query")
    p.add_argument("--plot", default=None, help="write a per-query difference plot (PNG) for the first metric")
    p.add_argument("runs", nargs="+", help="TREC run files")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("train", help="fine-tune a ranker (LoRA or full) from a TOML/YAML config")
    p.add_argument("--config", required=True, help="a .toml, .yaml or .json file (see examples/)")
    p.add_argument("--output-dir", default=None, help="overrides output_dir of the config")
    p.add_argument("--max-steps", type=int, default=None, help="overrides max_steps of the config")
    p.add_argument("--no-resume", action="store_true", help="start over even if checkpoints exist")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="rerank a bundled DL19 sample with the default model and show nDCG@10")
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument("--out-dir", default=None)
    p.add_argument("--quiet", action="store_true")
    _add_model_args(p, "likelihood")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "evaluate" and not args.data and not args.qrels:
        parser.error("evaluate needs --data or --qrels")
    try:
        args.func(args)
    except (ValueError, TypeError, KeyError, FileNotFoundError, ImportError) as e:
        # Bad input: one clear line, no traceback.
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
