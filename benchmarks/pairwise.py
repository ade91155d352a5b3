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
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from _common import command_line, environment, peak_rss_mib  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MEASURE = "nDCG@10"
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


def load_dl19(data: Path, queries: int, top_k: int) -> dict[str, Any]:
    from llmrerank.data import load_beir, load_run

    folder = data / "dl19"
    beir = load_beir(folder, "test")
    run = load_run(folder / "bm25-top100.trec")
    qids = [q for q in beir.queries if q in run and beir.qrels.get(q)][:queries]
    return {"beir": beir, "run": {q: list(run[q])[:top_k] for q in qids}, "qids": qids}


class Bench:
    def __init__(self, args: argparse.Namespace, data: dict[str, Any]):
        self.args = args
        self.data = data
        self.out = Path(args.out)
        self.result: dict[str, Any] = {
            "benchmark": "pairwise",
            "command": command_line(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "status": "running",
            "dataset": "dl19",
            "first_stage": f"dl19/bm25-top100.trec (the distributed BM25 run), cut to the top {args.top_k}",
            "queries": data["qids"],
            "top_k": args.top_k,
            "passage_tokens": args.passage_tokens,
            "sort_top_k": args.sort_top_k,
            "set_size": args.set_size,
            "max_minutes_per_run": args.max_minutes_per_run,
            "environment": environment(),
            "models": {},
            "runs": {},
        }

    def write(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_name(self.out.name + ".tmp")
        tmp.write_text(json.dumps(self.result, indent=1) + "\n", encoding="utf-8")
        tmp.replace(self.out)

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
        from tqdm.auto import tqdm

        from llmrerank import Reranker
        from llmrerank.types import Document

        ranker = Reranker(method, backend=backend, **self.options(method, options))
        describe = ranker.describe()
        describe.pop("template", None)
        name = f"{model}/{variant}"
        entry: dict[str, Any] = {
            "model": model,
            "variant": variant,
            "method": method,
            "ranker": describe,
            "status": "running",
            "queries_planned": len(self.data["qids"]),
            "queries_done": 0,
            "per_query": {},
        }
        self.result["runs"][name] = entry
        beir = self.data["beir"]
        budget = self.args.max_minutes_per_run * 60 if self.args.max_minutes_per_run else math.inf
        spent = 0.0
        bar = tqdm(self.data["qids"], desc=name, unit="q", file=sys.stderr)
        for qid in bar:
            if spent >= budget:
                entry["status"] = f"stopped: time budget of {self.args.max_minutes_per_run} min spent"
                break
            head = self.data["run"][qid]
            docs = [Document(beir.corpus[d].text, id=d, title=beir.corpus[d].title) for d, _ in head]
            start = time.perf_counter()
            ranking = ranker.rank(beir.queries[qid], docs)
            seconds = time.perf_counter() - start
            spent += seconds
            counts = {
                k: v for k, v in ranking.metadata.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            }
            entry["per_query"][qid] = {"seconds": round(seconds, 2), **counts, "order": list(ranking.ids or ())}
            entry["queries_done"] += 1
            self.summarise(name)
            self.write()
            postfix = {"s_q": f"{entry['seconds_per_query']:.1f}", "ndcg": f"{entry[MEASURE]:.3f}"}
            if "comparisons_per_query" in entry:
                postfix["cmp"] = f"{entry['comparisons_per_query']:.0f}"
            bar.set_postfix(postfix)
        bar.close()
        if entry["status"] == "running":
            entry["status"] = "complete"
        entry["peak_rss_mib"] = peak_rss_mib()
        self.write()

    def summarise(self, name: str) -> None:
        """Means over the queries done so far, and nDCG@10 against BM25 on those same queries."""
        from llmrerank.evaluate import evaluate_runs

        entry = self.result["runs"][name]
        per_query = entry["per_query"]
        done = list(per_query)
        n = len(done)
        entry["seconds"] = round(sum(per_query[q]["seconds"] for q in done), 1)
        entry["seconds_per_query"] = round(entry["seconds"] / n, 2)
        for key in COUNTS:
            if any(key in per_query[q] for q in done):
                entry[f"{key}_per_query"] = round(sum(per_query[q].get(key, 0) for q in done) / n, 2)
        qrels = {q: dict(self.data["beir"].qrels[q]) for q in done}
        top_k = self.args.top_k
        runs = {
            "bm25": {q: self.data["run"][q] for q in done},
            name: {q: [(d, float(top_k - i)) for i, d in enumerate(per_query[q]["order"])] for q in done},
        }
        ev = evaluate_runs(qrels, runs, measures=[MEASURE])
        p = ev.p_values[name][MEASURE]
        entry[MEASURE] = round(ev.aggregate[name][MEASURE], 4)
        entry[f"bm25_{MEASURE}"] = round(ev.aggregate["bm25"][MEASURE], 4)
        entry[f"p_{MEASURE}"] = None if p is None or math.isnan(p) else float(f"{p:.3g}")


def table(result: dict[str, Any]) -> str:
    """A markdown table, one row per run."""
    header = [
        "model",
        "method",
        "queries",
        "BM25 nDCG@10",
        "nDCG@10",
        "p",
        "s/query",
        "comparisons/q",
        "LLM calls/q",
        "rounds/q",
        "prompt tok/q",
        "memo hits/q",
        "pos. conflicts/q",
    ]
    rows = [header, ["---"] * len(header)]

    def num(r: dict[str, Any], key: str, fmt: str) -> str:
        value = r.get(f"{key}_per_query")
        return "" if value is None else format(value, fmt)

    for r in result["runs"].values():
        if not r.get("queries_done"):
            continue
        p = r.get(f"p_{MEASURE}")
        rows.append(
            [
                r["model"],
                r["variant"],
                f"{r['queries_done']}/{r['queries_planned']}",
                f"{r[f'bm25_{MEASURE}']:.4f}",
                f"{r[MEASURE]:.4f}",
                "" if p is None else f"{p:.3g}",
                f"{r['seconds_per_query']:.1f}",
                num(r, "comparisons", ".1f"),
                num(r, "llm_calls", ".1f"),
                num(r, "rounds", ".1f"),
                num(r, "prompt_tokens", ".0f") or num(r, "tokens", ".0f"),
                num(r, "memo_hits", ".1f"),
                num(r, "position_conflicts", ".1f"),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in rows]
    title = (
        f"DL19, first {len(result['queries'])} judged queries, BM25 top {result['top_k']}, passages cut to "
        f"{result['passage_tokens']} tokens, sort_top_k {result['sort_top_k']}, set_size {result['set_size']}; "
        "p: paired t-test vs BM25 on nDCG@10 over the same queries"
    )
    return title + "\n\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="folder holding dl19/")
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
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "pairwise-dl19.json"))
    args = parser.parse_args(argv)

    import torch

    from llmrerank.backends.hf import HFBackend

    data = load_dl19(args.data, args.queries, args.top_k)
    bench = Bench(args, data)
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
    bench.result["status"] = "complete"
    bench.result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    bench.write()
    print(table(bench.result))
    print(f"\nwrote {bench.out}")
    return bench.result


if __name__ == "__main__":
    main()
