"""Zero-shot reranking of the BM25 top 20: nDCG@10 before and after, judged@10, speed and memory.

Datasets (from ``--data``, default ``../shared/data`` next to the repository):

- ``dl19``: TREC DL 2019 passage, all 43 judged queries, candidates from ``bm25-top100.trec``. nDCG counts
  every judgement in the ideal ranking (also documents outside the BM25 pool), as trec_eval does.
- ``scifact``: BEIR SciFact test, a fixed sample of 100 queries (``random.Random(0).sample(sorted(test qids),
  100)``, then sorted), candidates from BM25 (bm25s, k1=0.9, b=0.4) over the whole corpus.

Methods: ``pointwise`` (one forward pass per document; the three normalisations ``pair_softmax``,
``vocab_softmax`` and ``yes_logit`` all come from that same pass via ``score_variants``) and ``likelihood``
(query likelihood, mean log-probability of the query tokens). Both share one loaded model, and both rerank
through the library's one reranking loop, ``llmrerank.pipeline.rerank``.

The top 20 is the whole candidate list, so each reranked run is just the reranked head. The JSON is rewritten
after every method (and every few queries while a method runs), so a run cut short keeps what it measured.

Usage (from the repository root)::

    python benchmarks/zero_shot.py --dataset dl19 --model smollm2-135m
    python benchmarks/zero_shot.py --dataset scifact --model qwen2.5-0.5b --methods pointwise likelihood
    python benchmarks/zero_shot.py --dataset dl19 --model smollm2-135m --queries 2 --out results/smoke.json
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from _common import (
    REPO,
    RESULTS,
    Report,
    add_backend_options,
    add_data_option,
    describe,
    environment,
    header,
    load_dataset,
    p_round,
    peak_rss_mib,
    text_table,
    timed,
)

DATASETS = ("dl19", "scifact")
METHOD_NAMES = ("pointwise", "likelihood")
MEASURES = ("nDCG@10", "Judged@10")
# the three normalisations this benchmark reports (score_variants may return more, e.g. "logit", which ranks
# exactly as pair_softmax does)
NORMALISATIONS = ("pair_softmax", "vocab_softmax", "yes_logit")
CHECKPOINT_EVERY = 10  # queries between progress checkpoints in the JSON


# --- measuring ----------------------------------------------------------------------------------------------


def cuda_peak_mib(device: Any) -> float | None:
    import torch

    if getattr(device, "type", None) == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return None


def reset_cuda_peak(device: Any) -> None:
    import torch

    if getattr(device, "type", None) == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


class Variants:
    """The pointwise ranker as the rerank iterator calls it: one forward pass a query (``score_variants``) gives
    every normalisation; the Ranking is the first one's, and ``metadata["variants"]`` holds each one's Ranking
    by run name. Equal scores keep the BM25 order (a stable sort), as in every ranker."""

    def __init__(self, ranker: Any):
        self.ranker = ranker
        self.method = ranker.method

    def rank_many(self, queries: list[str], docs: list[list[Any]]) -> list[Any]:
        from llmrerank.types import ranking_from_scores

        out = []
        for query, documents in zip(queries, docs):
            variants = self.ranker.score_variants(query, documents)
            by_name = {f"pointwise.{n}": ranking_from_scores(variants[n], documents) for n in NORMALISATIONS}
            out.append(replace(next(iter(by_name.values())), metadata={"variants": by_name}))
        return out


class Benchmark(Report):
    def __init__(self, args: argparse.Namespace, data: Any):
        self.args = args
        self.data = data
        self.qids = data.qids
        self.runs: dict[str, dict[str, list[tuple[str, float]]]] = {"bm25": data.run}
        super().__init__(
            args.out,
            {
                **header("zero_shot"),
                "dataset": args.dataset,
                "split": "test",
                "model": args.model,
                "top_k": args.top_k,
                "max_length": args.max_length,
                "batch_size": args.batch_size,
                "n_queries": len(self.qids),
                "query_ids": self.qids,
                "first_stage": data.first_stage,
                "measures": list(MEASURES),
                "environment": environment(),
                "methods": {},
                "runs": {},
            },
        )

    # JSON ---------------------------------------------------------------------------------------------------

    def evaluate(self) -> None:
        from llmrerank.evaluate import evaluate_runs

        ev = evaluate_runs(self.data.qrels, self.runs, measures=list(MEASURES))
        self.evaluation = ev
        self.result["rel"] = ev.rel
        runs = {}
        for name in ev.run_names:
            agg = ev.aggregate[name]
            runs[name] = {
                "nDCG@10": round(agg["nDCG@10"], 4),
                "delta_nDCG@10": round(agg["nDCG@10"] - ev.aggregate["bm25"]["nDCG@10"], 4),
                "p_nDCG@10": p_round(ev.p_values[name]["nDCG@10"]),
                "Judged@10": round(agg["Judged@10"], 4),
                "wins": sum(
                    ev.per_query[name]["nDCG@10"][q] > ev.per_query["bm25"]["nDCG@10"][q] for q in ev.query_ids
                ),
                "losses": sum(
                    ev.per_query[name]["nDCG@10"][q] < ev.per_query["bm25"]["nDCG@10"][q] for q in ev.query_ids
                ),
            }
        self.result["runs"] = runs
        self.result["per_query_nDCG@10"] = {
            name: [round(ev.per_query[name]["nDCG@10"][q], 4) for q in self.qids] for name in ev.run_names
        }

    def write_run_files(self, names: list[str]) -> None:
        if not self.args.runs_dir:
            return
        from llmrerank.data import write_run

        folder = Path(self.args.runs_dir)
        for name in names:
            tag = f"{self.args.model}-{name.replace('.', '-')}"
            write_run(folder / f"{self.args.dataset}-{tag}.trec", self.runs[name], tag=tag)

    # methods ------------------------------------------------------------------------------------------------

    def run_method(self, method: str, ranker: Any) -> None:
        from tqdm.auto import tqdm

        from llmrerank.pipeline import rerank

        data = self.data
        names = [f"pointwise.{n}" for n in NORMALISATIONS] if method == "pointwise" else ["likelihood"]
        built: dict[str, dict[str, list[tuple[str, float]]]] = {n: {} for n in names}
        stats = ranker.backend.stats
        device = getattr(ranker.backend, "device", None)
        reset_cuda_peak(device)
        truncated = 0
        documents = 0
        entry: dict[str, Any] = {"status": "running", "runs": names, "ranker": describe(ranker)}
        entry["template"] = ranker.template.name
        self.result["methods"][method] = entry
        before = stats.snapshot()
        elapsed = 0.0  # the ranking calls only
        step = 1 if method == "pointwise" else self.args.queries_per_batch
        scorer = Variants(ranker) if method == "pointwise" else ranker
        rankings = rerank(scorer, data.queries, data.corpus, data.run, self.args.top_k, queries_per_batch=step)
        bar = tqdm(total=len(self.qids), desc=method, unit="q", file=sys.stderr, mininterval=5.0)
        for done, (q, ranking, seconds) in enumerate(timed(rankings), 1):
            elapsed += seconds
            by_name = ranking.metadata["variants"] if method == "pointwise" else {"likelihood": ranking}
            for name, r in by_name.items():
                built[name][q] = list(zip(r.ids, r.scores))
            documents += len(ranking)
            if method == "pointwise":  # truncation count, outside the timed region
                truncated += sum(
                    e.truncated for e in ranker.encode(data.queries[q], [data.corpus[d] for d, _ in data.run[q]])
                )
            else:
                truncated += int(ranking.metadata.get("truncated", 0))
            bar.update(1)
            used = stats.since(before)
            bar.set_postfix(docs_s=f"{documents / elapsed:.2f}", tok_s=f"{used['tokens'] / elapsed:.0f}")
            if done % step == 0 and done % CHECKPOINT_EVERY < step and done < len(self.qids):  # at a batch's end
                entry.update(self._speed(documents, used, elapsed, truncated, device))
                entry["queries_done"] = done
                self.write()
        bar.close()
        used = stats.since(before)
        entry.update(self._speed(documents, used, elapsed, truncated, device))
        entry["queries_done"] = len(self.qids)
        entry["status"] = "complete"
        self.runs.update(built)
        self.evaluate()
        self.write()
        self.write_run_files(names)

    @staticmethod
    def _speed(documents: int, used: dict[str, int], seconds: float, truncated: int, device: Any) -> dict[str, Any]:
        return {
            "seconds": round(seconds, 1),
            "documents": documents,
            "tokens": used["tokens"],
            "padded_tokens": used["padded_tokens"],
            "forward_calls": used["forward_calls"],
            "truncated": truncated,
            "docs_per_second": round(documents / seconds, 3) if seconds else None,
            "tokens_per_second": round(used["tokens"] / seconds, 1) if seconds else None,
            "peak_rss_mib": peak_rss_mib(),
            "cuda_peak_mib": cuda_peak_mib(device),
        }


# --- report -------------------------------------------------------------------------------------------------


def table(result: dict[str, Any]) -> str:
    header = ["run", "nDCG@10", "delta", "p", "judged@10", "docs/s", "tok/s", "s", "peakRSS MiB"]
    rows = [header]
    for name, r in result["runs"].items():
        method = name.split(".")[0]
        m = result["methods"].get(method, {})
        p = r["p_nDCG@10"]
        rows.append(
            [
                name,
                f"{r['nDCG@10']:.4f}",
                "" if name == "bm25" else f"{r['delta_nDCG@10']:+.4f}",
                "" if p is None else f"{p:.3g}",
                f"{r['Judged@10']:.3f}",
                _num(m.get("docs_per_second"), 2),
                _num(m.get("tokens_per_second"), 0),
                _num(m.get("seconds"), 0),
                _num(m.get("peak_rss_mib"), 0),
            ]
        )
    lines = text_table(rows, left=1)
    title = (
        f"{result['dataset']} ({result['n_queries']} queries), {result['model']}, BM25 top {result['top_k']}, "
        f"max_length {result['max_length']}; p: paired t-test vs bm25 on nDCG@10"
    )
    return title + "\n" + "\n".join(lines)


def _num(value: Any, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


# --- main ---------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_option(parser, "dl19/ and scifact/")
    parser.add_argument("--dataset", choices=DATASETS, required=True)
    parser.add_argument("--model", default="smollm2-135m", help="a preset (smollm2-135m, qwen2.5-0.5b) or a path")
    parser.add_argument("--methods", nargs="+", choices=METHOD_NAMES, default=list(METHOD_NAMES))
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument(
        "--queries-per-batch", type=int, default=4, help="queries whose pairs likelihood batches together (rank_many)"
    )
    add_backend_options(parser)
    parser.add_argument("--queries", type=int, default=None, help="only the first N queries (a smoke run)")
    parser.add_argument(
        "--out", default=None, help="JSON output (default: benchmarks/results/zero_shot-{dataset}-{model}.json)"
    )
    parser.add_argument(
        "--runs-dir",
        default=str(REPO / "results" / "zero_shot"),
        help="where to write the reranked TREC runs ('' for none)",
    )
    args = parser.parse_args(argv)
    if args.out is None:
        safe = Path(args.model).name.replace(".gguf", "")
        args.out = str(RESULTS / f"zero_shot-{args.dataset}-{safe}.json")

    from llmrerank import Reranker

    t0 = time.perf_counter()
    data = load_dataset(args.dataset, args.data, args.top_k, args.queries)
    print(
        f"{args.dataset}: {len(data.queries)} queries, BM25 top {args.top_k} "
        f"({time.perf_counter() - t0:.1f} s to load)",
        file=sys.stderr,
        flush=True,
    )
    bench = Benchmark(args, data)
    bench.evaluate()
    bench.write()

    backend = None
    for method in args.methods:
        t0 = time.perf_counter()
        if backend is None:
            opts = {"dtype": args.dtype, "device": args.device, "batch_size": args.batch_size}
            if args.threads is not None:
                opts["threads"] = args.threads
            ranker = Reranker(method, model=args.model, max_length=args.max_length, **opts)
            backend = ranker.backend
            bench.result["model_name"] = getattr(backend, "name", args.model)
            bench.result["dtype"] = args.dtype
            bench.result["device"] = str(getattr(backend, "device", args.device))
            bench.result["load_seconds"] = round(time.perf_counter() - t0, 1)
            bench.result["rss_after_load_mib"] = peak_rss_mib()
            bench.result["environment"]["torch_threads"] = __import__("torch").get_num_threads()
        else:
            ranker = Reranker(method, backend=backend, max_length=args.max_length)
        bench.run_method(method, ranker)
        print(f"{method} done", file=sys.stderr, flush=True)

    return bench.finish(table(bench.result))


if __name__ == "__main__":
    main()
