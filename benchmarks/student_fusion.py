"""Fusion with BM25 for the issue-17 student and its zero-shot base: W chosen on DL21's labelled queries, then DL19.

Each ranker's first-stage weight ``W`` (``llmrerank rerank --fuse bm25:W``) is chosen on DL21 train + dev (53
labelled queries, none trained on) before DL19 is read; then DL19 at that ``W``, with paired t-tests against the
unfused 0.5B teacher (the core benchmark's zero-shot run) and the unfused 135M zero-shot likelihood. It reads the
``benchmarks/fusion.py`` results of each (ranker, split), which fuse a written run at every weight exactly as
``--fuse`` does::

    python benchmarks/fusion.py --reranked runs/students/shipped-dl21-train.trec --name student-dl21-train
    ... (student / zeroshot) x (dl21-train, dl21-dev, dl19), as docs/benchmarks.md lists
    python benchmarks/student_fusion.py       # benchmarks/results/student-fusion.json
"""

from __future__ import annotations

import argparse
import json
import sys

from _common import RESULTS, Report, header, markdown_table, p_round, zero_shot_per_query

from llmrerank.evaluate import paired_p

RANKERS = {"student": "smollm2-135m-distilled", "zeroshot": "smollm2-135m likelihood, 256 tokens"}
CHOICE = ("dl21-train", "dl21-dev")  # the labelled queries W is chosen on
QUERIES = 53  # DL21 train (42) + dev (11)
TEACHER = "qwen2.5-0.5b"  # the unfused teacher of the aim


def per_query(name: str) -> dict[str, dict[str, float]]:
    """``{run: {qid: nDCG@10}}`` of ``results/fusion-NAME.json``."""
    data = json.loads((RESULTS / f"fusion-{name}.json").read_text())
    qids = data["query_ids"]
    return {run: dict(zip(qids, values)) for run, values in data["per_query_nDCG@10"].items()}


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(argv)
    report = Report(RESULTS / "student-fusion.json", header("student_fusion", rankers=RANKERS, chosen_on=CHOICE))
    teacher = zero_shot_per_query("dl19", TEACHER)
    dl19 = {r: per_query(f"{r}-dl19") for r in RANKERS}
    table = [
        [
            "ranker",
            f"W (chosen on DL21, {QUERIES} q)",
            f"DL21 {QUERIES} q",
            "DL19 nDCG@10",
            "Δ vs teacher",
            "p",
            "Δ vs 135M",
            "p",
        ]
    ]
    rows = {}
    for ranker in RANKERS:
        choice: dict[str, dict[str, float]] = {}
        for split in CHOICE:
            for run, values in per_query(f"{ranker}-{split}").items():
                choice.setdefault(run, {}).update(values)
        weights = [run for run in choice if run.startswith("W=")]
        if "W=0" not in weights:
            raise SystemExit(
                f"{ranker}: the fusion results hold no W=0 (the unfused run): run fusion.py with 0 in --weights"
            )
        counts = {len(choice[run]) for run in weights}
        if counts != {QUERIES}:
            raise SystemExit(f"{ranker}: DL21 train + dev should be {QUERIES} distinct queries, found {sorted(counts)}")
        on_dl21 = {run: mean(list(choice[run].values())) for run in weights}
        best = max(weights, key=lambda run: (on_dl21[run], run == "W=0"))  # a tie keeps the unfused run
        on_dl21 = {run: round(value, 4) for run, value in on_dl21.items()}
        rows[ranker] = {"dl21_53": on_dl21, "chosen": best, "dl19": {}}
        for run in dict.fromkeys((best, "W=0")):  # the chosen weight, then the unfused run
            ours = dl19[ranker][run]
            qids = sorted(ours)
            values = [ours[q] for q in qids]
            base = [dl19["zeroshot"]["W=0"][q] for q in qids]
            teach = [teacher[q] for q in qids]
            entry = {
                "nDCG@10": round(mean(values), 4),
                "minus_teacher": round(mean(values) - mean(teach), 4),
                "p_teacher": p_round(paired_p(values, teach), 3),
                "minus_zeroshot": round(mean(values) - mean(base), 4),
                "p_zeroshot": None if ranker == "zeroshot" and run == "W=0" else p_round(paired_p(values, base), 3),
            }
            rows[ranker]["dl19"][run] = entry
            table.append(
                [
                    ranker,
                    run,
                    f"{on_dl21[run]:.4f}",
                    f"{entry['nDCG@10']:.4f}",
                    f"{entry['minus_teacher']:+.4f}",
                    str(entry["p_teacher"]),
                    f"{entry['minus_zeroshot']:+.4f}",
                    str(entry["p_zeroshot"] or "-"),
                ]
            )
    report.result["rankers"] = rows
    report.result["teacher_dl19"] = round(mean(list(teacher.values())), 4)
    print(f"teacher ({TEACHER} likelihood, unfused) on DL19: {report.result['teacher_dl19']}", file=sys.stderr)
    report.finish("\n".join(markdown_table(table)))


if __name__ == "__main__":
    main()
