"""Pairwise and setwise reranking on TREC DL19: nDCG@10, comparisons, LLM calls, rounds and seconds per query.

The setting (issue 4): the first 20 judged queries of DL19 in ``queries.jsonl`` order, candidates the BM25
top 10 of the distributed ``dl19/bm25-top100.trec``, passages cut to 96 tokens. Runs:

- ``smollm2-135m``: pairwise ``allpairs`` (45 pairs, 90 prompts a query, one batch), ``heapsort`` and
  ``bubblesort`` (sort_top_k 10, i.e. the whole list), setwise ``heapsort`` and ``bubblesort`` (set_size 4);
- ``qwen2.5-0.5b``: pairwise ``allpairs`` and setwise ``heapsort``;
- with ``--baselines`` (default on): pointwise (yes/no, pair_softmax) and likelihood on the same queries and
  model, for reference (one forward pass per document).

Per run: nDCG@10 and the BM25 value on the same queries with a paired t-test, seconds per query (wall time of
the ranking calls only), and per query: comparisons asked of the model, LLM calls (prompts), rounds (batched
model calls the query waited for: the sequential depth), prompt tokens, memo hits, and for pairwise the
position conflicts (pairs whose two orders both preferred the same position).

The JSON is rewritten after every query (``status``, ``queries_done``), so a run stopped early keeps what it
measured. ``--max-minutes-per-run`` (default 15, 0 = none) stops starting new queries in a run once its time
is spent, which bounds the whole benchmark to about an hour on two CPU cores (a one-query smoke run of the
135M plan, baselines included, took about a minute); the table says how many queries each run did, and BM25
is evaluated on those same queries.

Usage (from the repository root)::

    python benchmarks/pairwise.py                                    # everything, both models
    python benchmarks/pairwise.py --queries 1 --models smollm2-135m --out /tmp/pairwise-smoke.json  # smoke
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from _common import (
    RESULTS,
    RUN_COLUMNS,
    PerQueryReport,
    add_backend_options,
    add_data_option,
    describe,
    environment,
    header,
    load_dataset,
    markdown_table,
    numbers,
    run_cells,
)

VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "pairwise.allpairs": ("pairwise", {"aggregation": "allpairs"}),
    "pairwise.heapsort": ("pairwise", {"aggregation": "heapsort"}),
    "pairwise.bubblesort": ("pairwise", {"aggregation": "bubblesort"}),
    "setwise.heapsort": ("setwise", {"aggregation": "heapsort"}),
    "setwise.bubblesort": ("setwise", {"aggregation": "bubblesort"}),
}
BASELINES: dict[str, tuple[str, dict[str, Any]]] = {
    "pointwise": ("pointwise", {}),
    "likelihood": ("likelihood", {}),
}
PLAN = {
    "smollm2-135m": list(VARIANTS),
    "qwen2.5-0.5b": ["pairwise.allpairs", "setwise.heapsort"],
}
COUNTS = ("comparisons", "llm_calls", "rounds", "prompt_tokens", "memo_hits", "position_conflicts", "tokens")


class Bench(PerQueryReport):
    def __init__(self, args: argparse.Namespace, data: Any):
        super().__init__(
            args,
            data,
            {
                **header("pairwise"),
                "dataset": "dl19",
                "first_stage": f"dl19/bm25-top100.trec (the distributed BM25 run), cut to the top {args.top_k}",
                "queries": data.qids,
                "top_k": args.top_k,
                "passage_tokens": args.passage_tokens,
                "sort_top_k": args.sort_top_k,
                "set_size": args.set_size,
                "max_minutes_per_run": args.max_minutes_per_run,
                "environment": environment(),
                "models": {},
                "runs": {},
            },
        )

    def options(self, method: str, options: dict[str, Any]) -> dict[str, Any]:
        opts = dict(options)
        if method in ("pairwise", "setwise"):
            opts["passage_tokens"] = self.args.passage_tokens
            if opts.get("aggregation") != "allpairs":
                opts["sort_top_k"] = self.args.sort_top_k
        if method == "setwise":
            opts["set_size"] = self.args.set_size
        if method in ("pointwise", "likelihood"):
            opts["max_length"] = self.args.baseline_max_length
        return opts

    def run(self, model: str, variant: str, method: str, options: dict[str, Any], backend: Any) -> None:
        from llmrerank import Reranker

        ranker = Reranker(method, backend=backend, **self.options(method, options))
        fields = {"model": model, "variant": variant, "method": method, "ranker": describe(ranker)}

        def record(ranking: Any) -> dict[str, Any]:
            return {**numbers(ranking.metadata), "order": list(ranking.ids or ())}

        name = f"{model}/{variant}"
        self.measure(name, fields, ranker, self.data.qids, self.args.top_k, self.args.max_minutes_per_run, record)

    def postfix(self, entry: dict[str, Any]) -> dict[str, str]:
        postfix = super().postfix(entry)
        if "comparisons_per_query" in entry:
            postfix["cmp"] = f"{entry['comparisons_per_query']:.0f}"
        return postfix

    def summarise(self, name: str) -> None:
        """Means over the queries done so far, and nDCG@10 against BM25 on those same queries."""
        entry = self.result["runs"][name]
        per_query = entry["per_query"]
        done = self.timing(entry)
        for key in COUNTS:
            if any(key in per_query[q] for q in done):
                entry[f"{key}_per_query"] = round(sum(per_query[q].get(key, 0) for q in done) / len(done), 2)
        self.against_bm25(name, self.args.top_k)


def table(result: dict[str, Any]) -> str:
    """A markdown table, one row per run."""
    header = [
        "model",
        "method",
        *RUN_COLUMNS,
        "s/query",
        "comparisons/q",
        "LLM calls/q",
        "rounds/q",
        "prompt tok/q",
        "memo hits/q",
        "pos. conflicts/q",
    ]
    rows = [header]

    def num(r: dict[str, Any], key: str, fmt: str) -> str:
        value = r.get(f"{key}_per_query")
        return "" if value is None else format(value, fmt)

    for r in result["runs"].values():
        if not r.get("queries_done"):
            continue
        rows.append(
            [
                r["model"],
                r["variant"],
                *run_cells(r),
                f"{r['seconds_per_query']:.1f}",
                num(r, "comparisons", ".1f"),
                num(r, "llm_calls", ".1f"),
                num(r, "rounds", ".1f"),
                num(r, "prompt_tokens", ".0f") or num(r, "tokens", ".0f"),
                num(r, "memo_hits", ".1f"),
                num(r, "position_conflicts", ".1f"),
            ]
        )
    lines = markdown_table(rows)
    title = (
        f"DL19, first {len(result['queries'])} judged queries, BM25 top {result['top_k']}, passages cut to "
        f"{result['passage_tokens']} tokens, sort_top_k {result['sort_top_k']}, set_size {result['set_size']}; "
        "p: paired t-test vs BM25 on nDCG@10 over the same queries"
    )
    return title + "\n\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_option(parser, "dl19/")
    parser.add_argument("--models", nargs="+", choices=list(PLAN), default=list(PLAN))
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=None, help="default: the plan")
    parser.add_argument("--no-baselines", dest="baselines", action="store_false", help="skip pointwise/likelihood")
    parser.add_argument("--queries", type=int, default=20, help="the first N judged queries")
    parser.add_argument("--top-k", type=int, default=10, help="BM25 candidates reranked per query")
    parser.add_argument("--passage-tokens", type=int, default=96)
    parser.add_argument("--sort-top-k", type=int, default=10)
    parser.add_argument("--set-size", type=int, default=4)
    parser.add_argument("--baseline-max-length", type=int, default=256, help="pointwise/likelihood prompt budget")
    parser.add_argument("--max-minutes-per-run", type=float, default=15.0, help="stop a run after this (0: never)")
    add_backend_options(parser)
    parser.add_argument("--out", default=str(RESULTS / "pairwise-dl19.json"))
    args = parser.parse_args(argv)

    import torch

    from llmrerank.backends.hf import HFBackend

    bench = Bench(args, load_dataset("dl19", args.data, args.top_k, args.queries))
    bench.write()
    for model in args.models:
        t0 = time.perf_counter()
        backend = HFBackend.load(
            model, dtype=args.dtype, device=args.device, threads=args.threads, batch_size=args.batch_size
        )
        bench.result["models"][model] = {
            "name": backend.name,
            "dtype": args.dtype,
            "device": str(backend.device),
            "load_seconds": round(time.perf_counter() - t0, 1),
            "torch_threads": torch.get_num_threads(),
        }
        variants = [v for v in PLAN[model] if args.variants is None or v in args.variants]
        jobs = [(v, *VARIANTS[v]) for v in variants]
        if args.baselines:
            jobs += [(b, *BASELINES[b]) for b in BASELINES]
        for variant, method, options in jobs:
            bench.run(model, variant, method, options, backend)
        del backend
    return bench.finish(table(bench.result) + "\n")


if __name__ == "__main__":
    main()
