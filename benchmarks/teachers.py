"""Which teacher for distillation (issue 17): candidate rankers and their fusions on DL21's labelled queries.

Each candidate (``MODEL:METHOD``) reranks the BM25 top 20 of DL21 *train* (42 queries) and *dev* (11), in
bfloat16 as the distillation chain's teacher does; every combination of candidates is then fused
(``llmrerank.fusion.fuse_runs``: each run min-max normalised per query, averaged) and scored by nDCG@10 on the
53 queries, with a paired t-test against the first candidate. No test set is read: the teacher is chosen here,
before DL19 or SciFact is looked at. Runs are written to ``--runs`` as they finish; a rerun resumes.

Usage (from the repository root)::

    python benchmarks/teachers.py        # the 0.5B likelihood, the 1.5B likelihood and the 1.5B yes/no
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path
from typing import Any

from _common import DATA, DL_RUN, MEASURE, REPO, RESULTS, Report, header, markdown_table, p_round, rel, rerank_to

SPLITS = ("train", "dev")
TOP_K = 20
CANDIDATES = ["qwen2.5-0.5b:likelihood", "qwen2.5-1.5b:likelihood", "qwen2.5-1.5b:pointwise"]


def run_path(args: argparse.Namespace, split: str, candidate: str) -> Path:
    model, method = candidate.rsplit(":", 1)
    return args.runs / f"dl21-{split}-{method}-{model}.trec"


def rerank(args: argparse.Namespace, split: str, candidate: str) -> dict[str, Any]:
    """The candidate's run of one split (made or resumed unless complete) and its seconds per query."""
    model, method = candidate.rsplit(":", 1)
    out = run_path(args, split, candidate)
    sidecar = rerank_to(
        out,
        [
            "--data", str(args.data / "dl21"), "--split", split, "--run", str(args.data / "dl21" / DL_RUN),
            "--top-k", str(TOP_K), "--model", model, "--method", method, "--dtype", "bfloat16", "--quiet",
        ],
    )  # fmt: skip
    report = sidecar.get("report", {})
    done = report.get("queries")
    return {"run": rel(str(out)), "seconds_per_query": round(report["seconds"] / done, 2) if done else None}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from llmrerank.data import load_qrels, load_run
    from llmrerank.evaluate import evaluate_runs, paired_p
    from llmrerank.fusion import fuse_runs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="holding dl21/ (default ../shared/data)")
    parser.add_argument("--candidates", nargs="+", default=CANDIDATES, metavar="MODEL:METHOD")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "teachers", help="where the runs are written")
    parser.add_argument("--out", type=Path, default=RESULTS / "teachers-dl21.json")
    args = parser.parse_args(argv)
    for candidate in args.candidates:
        if ":" not in candidate:
            parser.error(f"--candidates: expected MODEL:METHOD, got {candidate!r}")
    bench = Report(args.out, {**header("teachers", issue=17), "top_k": TOP_K, "dtype": "bfloat16"})
    bench.result["candidates"] = {c: {s: rerank(args, s, c) for s in SPLITS} for c in args.candidates}
    bench.write()

    per_query: dict[str, dict[str, float]] = {}  # fusion name -> query -> nDCG@10, over both splits
    for split in SPLITS:
        qrels = load_qrels(args.data / "dl21" / "qrels" / f"{split}.tsv")
        runs = {c: load_run(run_path(args, split, c)) for c in args.candidates}
        fused = {}
        for n in range(1, len(args.candidates) + 1):
            for combo in itertools.combinations(args.candidates, n):
                judged = {q: items for q, items in runs[combo[0]].items() if q in qrels}
                fused[" + ".join(combo)] = fuse_runs([judged, *(runs[c] for c in combo[1:])], top_k=TOP_K)
        ev = evaluate_runs(qrels, fused, [MEASURE])
        for name in fused:
            per_query.setdefault(name, {}).update(
                {f"{split}:{q}": value for q, value in ev.per_query[name][MEASURE].items()}
            )
    first = args.candidates[0]
    queries = sorted(per_query[first])
    rows = {}
    for name, values in per_query.items():
        ours = [values[q] for q in queries]
        base = [per_query[first][q] for q in queries]
        rows[name] = {
            "members": len(name.split(" + ")),
            MEASURE: round(sum(ours) / len(ours), 4),
            **{
                f"{split}_{MEASURE}": round(sum(v for q, v in values.items() if q.startswith(split + ":")) / n, 4)
                for split, n in ((s, sum(q.startswith(s + ":") for q in queries)) for s in SPLITS)
            },
            "p_vs_first": p_round(paired_p(ours, base)) if name != first else None,
            "seconds_per_query": round(
                sum(bench.result["candidates"][c]["train"]["seconds_per_query"] or 0.0 for c in name.split(" + ")), 2
            ),
            "per_query": {q: round(values[q], 4) for q in queries},
        }
    bench.result["queries"] = len(queries)
    bench.result["fusions"] = rows
    lines = markdown_table(
        [
            ["teacher (fused)", "DL21 train+dev", "train (42)", "dev (11)", "p vs the first", "s/query"],
            *[
                [
                    name,
                    f"{r[MEASURE]:.4f}",
                    f"{r[f'train_{MEASURE}']:.4f}",
                    f"{r[f'dev_{MEASURE}']:.4f}",
                    "" if r["p_vs_first"] is None else f"{r['p_vs_first']:.3g}",
                    f"{r['seconds_per_query']:.1f}",
                ]
                for name, r in rows.items()
            ],
        ]
    )
    return bench.finish("\n".join(lines))


if __name__ == "__main__":
    main()
