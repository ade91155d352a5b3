"""Listwise reranking on TREC DL19: permutation generation vs FIRST, with nDCG@10, repairs, time and LLM calls.

Two settings (candidates from the distributed ``dl19/bm25-top100.trec``, queries in the order of
``queries.jsonl``):

- ``top50``: the first 10 queries, BM25 top 50, window 20 / step 10, so the window really slides
  (windows (30,50) (20,40) (10,30) (0,20): 4 LLM calls per query and pass);
- ``top20``: all 43 queries, BM25 top 20: one window, one LLM call per query.

Each setting runs both decodings on one loaded model: ``generate`` (the model writes ``[2] > [1] > ...``,
greedy, capped to a full permutation, parsed and repaired) and ``first`` (FIRST: the window ordered by the
first answer token's logits over the identifiers, one forward pass). Per run: nDCG@10 (and the BM25 value
on the same queries, with a paired t-test), the repair rate (windows whose answer needed any repair / LLM
calls), repairs by kind, seconds per query (wall time of the ranking calls only), LLM calls, prompt and
generated tokens per query.

The JSON is rewritten after every query (``status``, ``queries_done``), so a run stopped early keeps what it
measured. ``--max-minutes-per-run`` (default 15, 0 = none) stops starting new queries in a run once its time is
spent, which bounds the whole benchmark to about an hour; the table then says how many queries each run did,
and BM25 is evaluated on those same queries.

Usage (from the repository root)::

    python benchmarks/listwise.py                                  # both settings, both decodings, 0.5B
    python benchmarks/listwise.py --settings top20 --queries 1 --out /tmp/listwise-smoke.json   # smoke run
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
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

SETTINGS = {
    "top50": {"queries": 10, "top_k": 50, "window_size": 20, "step": 10},
    "top20": {"queries": None, "top_k": 20, "window_size": 20, "step": 10},
}
DECODINGS = ("generate", "first")
REPAIR_KINDS = ("repairs_missing", "repairs_duplicate", "repairs_unknown")


class Bench(PerQueryReport):
    def __init__(self, args: argparse.Namespace, data: Any):
        super().__init__(
            args,
            data,
            {
                **header("listwise"),
                "dataset": "dl19",
                "first_stage": "dl19/bm25-top100.trec (the distributed BM25 run), cut to top_k",
                "model": args.model,
                "passage_tokens": args.passage_tokens,
                "template": args.template,
                "max_minutes_per_run": args.max_minutes_per_run,
                "environment": environment(),
                "runs": {},
            },
        )

    def adopt(self, old: dict[str, Any], keep_running: bool = False) -> set[str]:
        """Take over the runs of an earlier JSON made with the same model, template and passage budget:
        finished ones (complete or stopped by the time budget), and with ``keep_running`` also unfinished
        ones. Returns the names of the runs taken over; each is summarised again with the current code."""
        for key in ("model", "template", "passage_tokens"):
            if old.get(key) != self.result[key]:
                raise SystemExit(f"{self.out}: made with {key}={old.get(key)!r}, not {self.result[key]!r}")
        kept = {n: r for n, r in old["runs"].items() if keep_running or r.get("status") != "running"}
        self.result["runs"].update(kept)
        self.result["resumed_from"] = old.get("started")
        for name in kept:
            if kept[name].get("queries_done"):
                self.summarise(name)
        return set(kept)

    def qids(self, setting: str) -> list[str]:
        limit = SETTINGS[setting]["queries"]
        qids = self.data.qids[:limit] if limit else self.data.qids
        return qids[: self.args.queries] if self.args.queries else qids

    def run(self, setting: str, decoding: str, backend: Any) -> None:
        from llmrerank import Reranker

        s = SETTINGS[setting]
        ranker = Reranker(
            "listwise",
            backend=backend,
            window_size=s["window_size"],
            step=s["step"],
            decoding=decoding,
            passage_tokens=self.args.passage_tokens,
            template=self.args.template,
        )
        fields = {
            "setting": setting,
            "decoding": decoding,
            "top_k": s["top_k"],
            "ranker": describe(ranker),
            "template": ranker.template.name,
        }

        def record(ranking: Any) -> dict[str, Any]:
            return {
                **numbers(ranking.metadata),
                "order": list(ranking.ids or ()),
                "outputs": [t.get("output") for t in ranking.metadata["trace"] if "output" in t],
                "window_orders": [t["order"] for t in ranking.metadata["trace"]],
            }

        name = f"{setting}.{decoding}"
        self.measure(name, fields, ranker, self.qids(setting), s["top_k"], self.args.max_minutes_per_run, record)

    def postfix(self, entry: dict[str, Any]) -> dict[str, str]:
        return {**super().postfix(entry), "repair": f"{entry['repair_rate']:.2f}"}

    def summarise(self, name: str) -> None:
        """Means over the queries done so far, and nDCG@10 against BM25 on those same queries."""
        entry = self.result["runs"][name]
        per_query = entry["per_query"]
        done = self.timing(entry)
        n = len(done)
        total = {
            k: sum(per_query[q].get(k, 0) for q in done)
            for k in ("llm_calls", "windows_repaired", "windows_unchanged", "repairs")
        }
        for key in ("llm_calls", "prompt_tokens", "generated_tokens", "repairs", *REPAIR_KINDS):
            entry[f"{key}_per_query"] = round(sum(per_query[q].get(key, 0) for q in done) / n, 2)
        calls = total["llm_calls"]
        entry["repair_rate"] = round(total["windows_repaired"] / calls, 4) if calls else 0.0
        entry["unchanged_rate"] = round(total["windows_unchanged"] / calls, 4) if calls else 0.0
        entry["rel"] = self.against_bm25(name, entry["top_k"]).rel


def table(result: dict[str, Any]) -> str:
    """A markdown table, one row per run."""
    header = [
        "setting",
        "decoding",
        *RUN_COLUMNS,
        "repair rate",
        "unchanged",
        "s/query",
        "LLM calls/q",
        "prompt tok/q",
        "gen tok/q",
        "missing/q",
        "dup/q",
        "unknown/q",
    ]
    rows = [header]
    for r in result["runs"].values():
        if not r.get("queries_done"):
            continue
        rows.append(
            [
                f"{r['setting']} (w{r['ranker']['window_size']}/s{r['ranker']['step']})",
                r["decoding"],
                *run_cells(r),
                f"{r['repair_rate']:.2f}",
                f"{r['unchanged_rate']:.2f}",
                f"{r['seconds_per_query']:.1f}",
                f"{r['llm_calls_per_query']:.1f}",
                f"{r['prompt_tokens_per_query']:.0f}",
                f"{r['generated_tokens_per_query']:.0f}",
                f"{r['repairs_missing_per_query']:.2f}",
                f"{r['repairs_duplicate_per_query']:.2f}",
                f"{r['repairs_unknown_per_query']:.2f}",
            ]
        )
    lines = markdown_table(rows)
    title = (
        f"DL19, {result['model']}, template {result['template']}, passages cut to {result['passage_tokens']} "
        f"tokens; p: paired t-test vs BM25 on nDCG@10 over the same queries"
    )
    return title + "\n\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_option(parser, "dl19/")
    parser.add_argument("--model", default="qwen2.5-0.5b", help="a preset or a model path")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--decodings", nargs="+", choices=DECODINGS, default=list(DECODINGS))
    parser.add_argument(
        "--template", default="rankzephyr-paraphrase", help="listwise template (rankzephyr-paraphrase, rankgpt, a file)"
    )
    parser.add_argument("--passage-tokens", type=int, default=100, help="each passage cut to this many tokens")
    parser.add_argument("--queries", type=int, default=None, help="only the first N queries of each setting (smoke)")
    parser.add_argument("--max-minutes-per-run", type=float, default=15.0, help="stop a run after this (0: never)")
    add_backend_options(parser)
    parser.add_argument("--out", default=None, help="JSON (default benchmarks/results/listwise-dl19-{model}.json)")
    parser.add_argument("--resume", action="store_true", help="keep the finished runs of an existing --out JSON")
    parser.add_argument("--report", action="store_true", help="only summarise an existing --out JSON and print it")
    args = parser.parse_args(argv)
    if args.out is None:
        safe = Path(args.model).name.replace(".gguf", "")
        args.out = str(RESULTS / f"listwise-dl19-{safe}.json")

    from llmrerank.backends.hf import HFBackend

    bench = Bench(args, load_dataset("dl19", args.data))
    done: set[str] = set()
    if args.resume or args.report:
        done = bench.adopt(json.loads(Path(args.out).read_text(encoding="utf-8")), keep_running=args.report)
    if args.report:
        print(table(bench.result))
        return bench.result
    t0 = time.perf_counter()
    backend = HFBackend.load(
        args.model, dtype=args.dtype, device=args.device, threads=args.threads, batch_size=args.batch_size
    )
    bench.result.update(
        model_name=backend.name,
        dtype=args.dtype,
        device=str(backend.device),
        load_seconds=round(time.perf_counter() - t0, 1),
    )
    bench.result["environment"]["torch_threads"] = __import__("torch").get_num_threads()
    bench.write()
    for setting in args.settings:
        for decoding in args.decodings:
            if f"{setting}.{decoding}" not in done:
                bench.run(setting, decoding, backend)
    return bench.finish(table(bench.result) + "\n")


if __name__ == "__main__":
    main()
