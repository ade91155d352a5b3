"""float32 against bfloat16 on this machine's CPU, side by side in one process: speed and agreement.

Both presets score the BM25 top 20 of the first ``--queries`` DL19 queries with ``pointwise`` and
``likelihood``; each (model, method) is timed in float32 and bfloat16 alternately, ``--repeats`` times, so the
two dtypes share whatever else the machine is doing. Reported: tokens/s and docs/s of the best repeat, the
speed-up, nDCG@10 of each dtype, the largest score difference, and the share of queries whose top-10 order is
the same in both dtypes.

    python benchmarks/dtype_speed.py                      # writes benchmarks/results/dtype_speed.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from _common import RESULTS, add_data_option, load_dataset, write_json
from tqdm.auto import tqdm


def main(argv: list[str] | None = None) -> None:
    from llmrerank import Reranker
    from llmrerank.evaluate import evaluate_runs
    from llmrerank.pipeline import rerank

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_option(ap, "dl19/")
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "qwen2.5-0.5b"])
    ap.add_argument("--methods", nargs="+", default=["pointwise", "likelihood"])
    ap.add_argument("--queries", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "dtype_speed.json")
    args = ap.parse_args(argv)

    ds = load_dataset("dl19", args.data, args.top_k, args.queries)
    qids = ds.qids
    heads = {q: [d for d, _ in ds.run[q]] for q in qids}
    qrels = ds.qrels
    rows = []
    for model in args.models:
        for method in args.methods:
            rankers = {
                dt: Reranker(method, model=model, dtype=dt, max_length=args.max_length)
                for dt in ("float32", "bfloat16")
            }
            best: dict[str, dict[str, Any]] = {}
            for _ in range(args.repeats):
                for dt, ranker in rankers.items():
                    before = ranker.backend.stats.snapshot()
                    start = time.perf_counter()
                    each = rerank(ranker, ds.queries, ds.corpus, ds.run, args.top_k, queries_per_batch=1)
                    rankings = dict(tqdm(each, total=len(qids), desc=f"{model} {method} {dt}", leave=False))
                    seconds = time.perf_counter() - start
                    tokens = ranker.backend.stats.since(before)["tokens"]
                    if dt not in best or seconds < best[dt]["seconds"]:
                        best[dt] = {"seconds": seconds, "tokens": tokens, "rankings": rankings}
            runs = {
                dt: {q: [(heads[q][i], s) for i, s in zip(r.indices, r.scores)] for q, r in b["rankings"].items()}
                for dt, b in best.items()
            }
            ev = evaluate_runs(qrels, runs, measures=["nDCG@10"])

            def by_input(r):
                return dict(zip(r.indices, r.scores))

            diff = max(
                abs(by_input(best["float32"]["rankings"][q])[i] - by_input(best["bfloat16"]["rankings"][q])[i])
                for q in qids
                for i in range(len(heads[q]))
            )
            same_top10 = sum(
                best["float32"]["rankings"][q].indices[:10] == best["bfloat16"]["rankings"][q].indices[:10]
                for q in qids
            ) / len(qids)
            row = {"model": model, "method": method, "queries": len(qids), "docs": len(qids) * args.top_k}
            for dt, b in best.items():
                row[f"{dt}_tokens_per_s"] = round(b["tokens"] / b["seconds"], 1)
                row[f"{dt}_docs_per_s"] = round(row["docs"] / b["seconds"], 2)
                row[f"{dt}_ndcg10"] = round(ev.aggregate[dt]["nDCG@10"], 4)
            row["speedup_bf16"] = round(best["float32"]["seconds"] / best["bfloat16"]["seconds"], 2)
            row["max_score_diff"] = round(diff, 4)
            row["same_top10_order"] = round(same_top10, 3)
            rows.append(row)
            write_json(args.out, {"command": "python benchmarks/dtype_speed.py", "rows": rows})
            del rankers
    header = [
        "model",
        "method",
        "fp32 tok/s",
        "bf16 tok/s",
        "speed-up",
        "fp32 nDCG@10",
        "bf16 nDCG@10",
        "max |Δscore|",
        "same top-10",
    ]
    print(" | ".join(header))
    for r in rows:
        print(
            " | ".join(
                str(x)
                for x in (
                    r["model"],
                    r["method"],
                    r["float32_tokens_per_s"],
                    r["bfloat16_tokens_per_s"],
                    r["speedup_bf16"],
                    r["float32_ndcg10"],
                    r["bfloat16_ndcg10"],
                    r["max_score_diff"],
                    r["same_top10_order"],
                )
            )
        )


if __name__ == "__main__":
    main()
