"""Speed modes against float32 on DL19: does a faster mode change the ranking? Decides the defaults.

For each preset and method (``pointwise``, ``likelihood``), every DL19 query's BM25 top 20 is scored in each
mode, the modes interleaved query by query (so they share whatever else the machine is doing):

- ``float32``: the reference, float32 weights, shared prefixes computed once;
- ``float32-plain``: float32 without prefix reuse (must equal the reference within 1e-4);
- ``bfloat16``: bfloat16 weights (prefix reuse on);
- ``int8``: dynamic int8 linear layers on float32 (prefix reuse on);
- ``float32-compile``, ``bfloat16-compile``: those weights with the feed-forward blocks and norms compiled
  (``compile=True``; prefix reuse on). Their docs/s include the compiling done in the first query's passes, not
  the warm-up at load.

Reported per mode: nDCG@10 and its change against float32, the mean per-query Kendall tau-b of the scores
against float32, the largest score difference, docs/s and the speed-up. The rule for a default (issue 14):
nDCG@10 within 0.005 of float32 and a mean tau of at least 0.95.

    python benchmarks/precision.py                      # both presets: writes benchmarks/results/precision.json
    python benchmarks/precision.py --models smollm2-135m --queries 5   # a quick look
    python benchmarks/precision.py --models smollm2-135m --modes float32 bfloat16 float32-compile bfloat16-compile \
        --out benchmarks/results/precision-compile.json

Each finished (model, method) row is written at once; a rerun skips the rows the JSON already holds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import RESULTS, add_data_option, command_line, environment, load_dataset, stamp, write_json
from tqdm.auto import tqdm

MODES = {
    "float32": {"dtype": "float32"},
    "float32-plain": {"dtype": "float32", "reuse_prefix": False},
    "bfloat16": {"dtype": "bfloat16"},
    "int8": {"dtype": "float32", "quantize": "int8"},
    "float32-compile": {"dtype": "float32", "compile": True},
    "bfloat16-compile": {"dtype": "bfloat16", "compile": True},
}
REFERENCE = "float32"
MAX_DELTA = 0.005
MIN_TAU = 0.95


def kendall_tau_b(x: list[float], y: list[float]) -> float:
    """Kendall's tau-b of two score lists over the same items (ties in either list counted as ties)."""
    concordant = discordant = ties_x = ties_y = 0
    n = len(x)
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denominator = ((concordant + discordant + ties_x) * (concordant + discordant + ties_y)) ** 0.5
    return (concordant - discordant) / denominator if denominator else 1.0


def main(argv: list[str] | None = None) -> None:
    from llmrerank import Reranker
    from llmrerank.evaluate import evaluate_runs

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_option(ap, "dl19/")
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "qwen2.5-0.5b"])
    ap.add_argument("--methods", nargs="+", default=["pointwise", "likelihood"])
    ap.add_argument("--modes", nargs="+", default=["float32", "float32-plain", "bfloat16", "int8"], choices=list(MODES))
    ap.add_argument("--queries", type=int, default=None, help="the first N DL19 queries (default: all 43)")
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument("--max-length", type=int, default=256, help="0: each method's own (listwise: a whole window)")
    ap.add_argument("--out", type=Path, default=RESULTS / "precision.json")
    args = ap.parse_args(argv)
    if REFERENCE not in args.modes:
        ap.error(f"--modes must include the reference, {REFERENCE}")

    ds = load_dataset("dl19", args.data, args.top_k, args.queries)
    old = json.loads(args.out.read_text()) if args.out.exists() else {}
    rows = [r for r in old.get("rows", []) if r.get("queries") == len(ds.qids) and r.get("top_k") == args.top_k]
    result = {
        "benchmark": "precision",
        "command": command_line(),
        "started": stamp(),
        "environment": environment(),
        "data": {"dataset": "dl19", "queries": len(ds.qids), "top_k": args.top_k, "max_length": args.max_length},
        "rule": {"max_ndcg_delta": MAX_DELTA, "min_mean_tau": MIN_TAU},
        "rows": rows,
    }
    done = {(r["model"], r["method"]) for r in rows}
    for model in args.models:
        for method in args.methods:
            if (model, method) in done:
                continue
            length = {"max_length": args.max_length} if args.max_length else {}
            rankers = {m: Reranker(method, model=model, **length, **MODES[m]) for m in args.modes}
            scores: dict[str, dict[str, list[float]]] = {m: {} for m in args.modes}
            seconds = dict.fromkeys(args.modes, 0.0)
            for q in tqdm(ds.qids, desc=f"{model} {method}", unit="query"):
                docs = [ds.corpus[d] for d, _ in ds.run[q]]
                for m, ranker in rankers.items():
                    start = time.perf_counter()
                    scores[m][q] = ranker.score(ds.queries[q], docs)
                    seconds[m] += time.perf_counter() - start
            # a run lists each query's documents best first (ties: BM25 order, as the library breaks them)
            runs = {
                m: {q: sorted(((d, s) for (d, _), s in zip(ds.run[q], scores[m][q])), key=lambda p: -p[1])
                    for q in ds.qids}
                for m in scores
            }
            ev = evaluate_runs(ds.qrels, runs, measures=["nDCG@10"])
            ref = scores[REFERENCE]
            modes = {}
            for m in args.modes:
                taus = [kendall_tau_b(ref[q], scores[m][q]) for q in ds.qids]
                ndcg = ev.aggregate[m]["nDCG@10"]
                delta = ndcg - ev.aggregate[REFERENCE]["nDCG@10"]
                mean_tau = sum(taus) / len(taus)
                modes[m] = {
                    "nDCG@10": round(ndcg, 4),
                    "delta_nDCG@10": round(delta, 4),
                    "mean_tau": round(mean_tau, 4),
                    "min_tau": round(min(taus), 4),
                    "max_abs_score_diff": max(abs(a - b) for q in ds.qids for a, b in zip(ref[q], scores[m][q])),
                    "docs_per_s": round(len(ds.qids) * args.top_k / seconds[m], 2),
                    "speedup": round(seconds[REFERENCE] / seconds[m], 2),
                    "meets_default_rule": abs(delta) <= MAX_DELTA and mean_tau >= MIN_TAU,
                    "resolved_dtype": rankers[m].backend.dtype,
                }
            rows.append({"model": model, "method": method, "queries": len(ds.qids), "top_k": args.top_k,
                         "modes": modes})
            write_json(args.out, result)
            del rankers
    result["finished"] = stamp()
    write_json(args.out, result)
    print(f"{'model':14} {'method':11} {'mode':14} {'nDCG@10':>8} {'Δ':>7} {'tau':>6} {'max|Δs|':>8} "
          f"{'docs/s':>7} {'×':>5} default?")
    for r in rows:
        for m, v in r["modes"].items():
            print(f"{r['model']:14} {r['method']:11} {m:14} {v['nDCG@10']:8.4f} {v['delta_nDCG@10']:+7.4f} "
                  f"{v['mean_tau']:6.3f} {v['max_abs_score_diff']:8.4f} {v['docs_per_s']:7.2f} {v['speedup']:5.2f} "
                  f"{'yes' if v['meets_default_rule'] else 'no'}")


if __name__ == "__main__":
    main()
