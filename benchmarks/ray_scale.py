"""The Ray engine against the local engine on this machine: queries/s with 1 and 2 workers, the start-up cost,
and whether the output agrees.

Each configuration writes the same rerank of DL19's first ``--queries`` queries (BM25 top ``--top-k``) with
``rerank_run``, as ``llmrerank rerank`` does:

- ``local``: this process, ``--threads`` torch threads (the model loaded here first);
- ``ray-1``: one Ray worker reserving ``--threads`` CPUs (so the same threads as local);
- ``ray-2``: two Ray workers of ``--threads / 2`` CPUs each.

A Ray configuration starts its own local cluster and stops it after the run (as the CLI does without
``--address``). Reported: the start-up seconds (local: loading the model; Ray: the cluster, the workers and their
models), the ranking seconds and queries/s (the run's own loop, ``RerankReport.seconds``), the wall time, and
the largest score difference against the local run. The configurations run in turn, ``--rounds`` times
interleaved; each finished run is written to the JSON at once.

    python benchmarks/ray_scale.py                  # writes benchmarks/results/ray_scale-smollm2-135m.json
    python benchmarks/ray_scale.py --queries 4 --rounds 1   # a quick look
    python benchmarks/ray_scale.py --plot-only      # redraw docs/ray_scale.png from the JSON
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from _common import (
    REPO,
    RESULTS,
    Report,
    add_data_option,
    environment,
    header,
    load_dataset,
    markdown_table,
    save_png,
    text_table,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_option(p, "dl19/")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--method", default="likelihood")
    p.add_argument("--queries", type=int, default=6)
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument("--queries-per-batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="torch threads of the local run; CPUs of the Ray runs")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--png", type=Path, default=REPO / "docs" / "ray_scale.png", help="the drawing ('' for none)")
    p.add_argument("--plot-only", action="store_true", help="redraw the PNG from the JSON, measure nothing")
    return p.parse_args(argv)


def draw(result: dict, png: Path) -> None:
    """Two panels per configuration: queries/s of the ranking loop (each round a dot, the median a bar), and the
    wall time split into start-up and ranking."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = result["summary"]
    names = [s["config"] for s in summary]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    left.barh(names, [s["queries_per_s"] for s in summary], color="tab:blue", alpha=0.6)
    for i, name in enumerate(names):
        rates = [r["queries_per_s"] for r in result["runs"] if r["config"] == name]
        left.plot(rates, [i] * len(rates), "k.", markersize=6)
    left.set_xlabel("queries/s while ranking (dots: rounds)")
    left.invert_yaxis()
    start = [s["startup_s"] for s in summary]
    ranking = [s["wall_s"] - s["startup_s"] for s in summary]
    right.barh(names, start, color="tab:grey", label="start-up (model load; Ray: cluster + workers)")
    right.barh(names, ranking, left=start, color="tab:blue", alpha=0.6, label="ranking")
    right.set_xlabel("wall seconds (median)")
    right.invert_yaxis()
    right.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, frameon=False)
    fig.suptitle(
        f"{result['model']} {result['method']}: DL19 {result['queries']} queries x top {result['top_k']}, "
        f"{result['threads']} CPUs",
        fontsize=9,
    )
    fig.tight_layout()
    save_png(fig, png, 110)


def read_top(path: Path, top_k: int) -> dict[str, dict[str, float]]:
    rows: dict[str, dict[str, float]] = {}
    for line in path.read_text().splitlines():
        q, _, d, rank, score, _ = line.split()
        if int(rank) <= top_k:
            rows.setdefault(q, {})[d] = float(score)
    return rows


def max_difference(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]]) -> float:
    if a.keys() != b.keys() or any(a[q].keys() != b[q].keys() for q in a):
        return float("inf")  # another set of documents in some top k
    return max(abs(a[q][d] - b[q][d]) for q in a for d in a[q])


def one_run(name: str, args: argparse.Namespace, data, out: Path) -> dict:
    from llmrerank import Reranker
    from llmrerank.distributed import RayEngine
    from llmrerank.pipeline import rerank_run

    # float32, as recorded (likelihood's own default is auto)
    config = {"method": args.method, "model": args.model, "backend": {"dtype": "float32"}, "options": {}}
    start = time.perf_counter()
    if name == "local":
        local = {**config, "backend": {**config["backend"], "threads": args.threads}}
        ranker, engine = Reranker.from_config(local), None
    else:
        workers = int(name.split("-")[1])
        ranker = config
        engine = RayEngine(num_workers=workers, cpus_per_worker=args.threads / workers)
    loaded = time.perf_counter() - start
    report = rerank_run(
        ranker, data.queries, data.corpus, data.run, out, top_k=args.top_k, progress=True,
        queries_per_batch=args.queries_per_batch, engine=engine,
    )
    wall = time.perf_counter() - start
    return {
        "config": name,
        "startup_s": round(wall - report.seconds, 2) if engine is not None else round(loaded, 2),
        "ranking_s": round(report.seconds, 2),
        "wall_s": round(wall, 2),
        "queries": report.queries,
        "queries_per_s": round(report.queries / report.seconds, 3),
        "docs_per_s": round(report.docs_per_second, 2),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out_json = args.out or RESULTS / f"ray_scale-{args.model}.json"
    if args.plot_only:
        draw(json.loads(out_json.read_text()), args.png)
        return
    data = load_dataset("dl19", args.data, top_k=args.top_k, limit=args.queries)
    result = header(
        "ray_scale", model=args.model, method=args.method, queries=len(data.queries), top_k=args.top_k,
        threads=args.threads, rounds=args.rounds, environment=environment(), runs=[],
    )
    report = Report(out_json, result)
    configs = ["local", "ray-1", "ray-2"]
    from llmrerank import Reranker

    Reranker(args.method, model=args.model)  # the model's first load fills its cache: not counted in any run
    with tempfile.TemporaryDirectory() as tmp:
        reference = None
        for round_ in range(args.rounds):
            for name in configs:
                out = Path(tmp) / f"{name}-{round_}.trec"
                print(f"round {round_ + 1}/{args.rounds}: {name} ...", flush=True)
                row = one_run(name, args, data, out)
                top = read_top(out, args.top_k)
                reference = reference or top
                row["round"] = round_ + 1
                row["max_score_difference_vs_local"] = max_difference(reference, top)
                result["runs"].append(row)
                report.write()
    summary = []
    local_rate = statistics.median(r["queries_per_s"] for r in result["runs"] if r["config"] == "local")
    for name in configs:
        runs = [r for r in result["runs"] if r["config"] == name]
        rate = statistics.median(r["queries_per_s"] for r in runs)
        summary.append(
            {
                "config": name,
                "queries_per_s": rate,
                "vs_local": round(rate / local_rate, 3),
                "startup_s": statistics.median(r["startup_s"] for r in runs),
                "wall_s": statistics.median(r["wall_s"] for r in runs),
                "max_score_difference_vs_local": max(r["max_score_difference_vs_local"] for r in runs),
            }
        )
    result["summary"] = summary
    head = ["config", "queries/s", "vs local", "start-up s", "wall s", "max |score diff|"]
    rows = [head] + [
        [s["config"], f"{s['queries_per_s']:.3f}", f"{s['vs_local']:.2f}x", f"{s['startup_s']:.1f}",
         f"{s['wall_s']:.1f}", f"{s['max_score_difference_vs_local']:.1e}"]
        for s in summary
    ]
    result["table"] = markdown_table(rows)
    report.finish("\n".join(text_table(rows, 1)))
    if args.png.name:
        draw(result, args.png)


if __name__ == "__main__":
    main()
