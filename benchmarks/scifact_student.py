"""A SciFact student (issue 17): the 135M distilled on synthetic queries from SciFact's corpus, chosen, evaluated.

The chain, each step a command of its own (docs/benchmarks.md lists them): ``llmrerank generate-queries`` over
SciFact's corpus (few-shot examples from SciFact *train*), the 0.5B likelihood teacher's ``rerank`` of each kept
query's BM25 top 20, the consistency filter, and students trained by ``benchmarks/finetune.py --variant distill
--dev scifact`` (their dev curve: 50 fixed SciFact *train* queries, none trained on). This script then

1. chooses the student with the best final dev nDCG@10, reading only the training records (no test set);
2. has the chosen one evaluated on the SciFact test sample (100 queries, ``max_length`` 256) and DL19 (43), with
   ``finetune.py``'s own evaluation, when its record lacks them (the recorded command, with those datasets);
3. compares it, with paired two-sided t-tests on per-query nDCG@10, against BM25, the core benchmark's zero-shot
   likelihood runs of the 135M and the 0.5B (the teacher; ``max_length`` 256) and the shipped DL21 student
   (``smollm2-135m-distilled``, whose record holds the same two evaluations).

Usage (from the repository root)::

    python benchmarks/scifact_student.py     # benchmarks/results/scifact-student.json
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys

from _common import REPO, RESULTS, Report, header, markdown_table, p_round, read_json, student_rows, zero_shot_per_query

STUDENTS = ("distill-likelihood-ranknet-scifact", "distill-likelihood-ranknet-scifact-2ep")
SHIPPED = "distill-likelihood-ranknet"  # the record of the shipped DL21 student (smollm2-135m-distilled)
ZERO_SHOT = {"zero-shot 135M": "smollm2-135m", "zero-shot 0.5B (teacher)": "qwen2.5-0.5b"}
DATASETS = ("scifact", "dl19")
STUDENT = "SciFact student"


def record(name: str) -> dict:
    data = read_json(RESULTS / f"finetune-{name}.json")
    if data is None:
        raise SystemExit(f"benchmarks/results/finetune-{name}.json is missing: train that student first")
    return data


def final_dev(result: dict) -> float:
    dev = [e for e in result.get("training", {}).get("dev", []) if e.get("final")]
    if result.get("status") != "complete" or not dev:
        raise SystemExit(f"{result.get('name')}: training is not complete (no final dev evaluation)")
    return dev[-1]["nDCG@10"]


def evaluated(name: str, result: dict) -> dict:
    """The student's record with both test sets evaluated: its recorded command rerun with them if need be (it
    reuses the trained folder and scores only the missing runs)."""
    if set(DATASETS) <= set(result.get("datasets", {})):
        return result
    cmd = [*shlex.split(result["command"]), "--datasets", *DATASETS]
    cmd[0] = sys.executable
    print("+ " + shlex.join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)
    return record(name)


def per_query(entry: dict, run: str) -> dict[str, float]:
    return dict(zip(entry["query_ids"], entry["per_query_nDCG@10"][run]))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", nargs="+", default=list(STUDENTS), help="finetune.py run names")
    args = parser.parse_args(argv)
    devs = {name: final_dev(record(name)) for name in args.students}
    chosen = max(devs, key=lambda name: devs[name])
    first = {"issue": 17, "choice": "best final dev nDCG@10 (50 SciFact train queries)", "dev": devs}
    report = Report(RESULTS / "scifact-student.json", header("scifact_student", chosen=chosen, **first))
    result = evaluated(chosen, record(chosen))
    shipped = record(SHIPPED)
    lines = []
    for dataset in DATASETS:
        entry = result["datasets"][dataset]
        qids = entry["query_ids"]
        per = {"BM25": per_query(entry, "bm25")}
        per.update({label: zero_shot_per_query(dataset, model) for label, model in ZERO_SHOT.items()})
        per["shipped DL21 student"] = per_query(shipped["datasets"][dataset], "finetuned")
        per[STUDENT] = per_query(entry, "finetuned")
        rows = student_rows(per, qids, STUDENT)
        report.result[dataset] = {"queries": len(qids), "max_length": entry["max_length"], "runs": rows}
        table = [["run", "nDCG@10", "student − run", "p", "student wins/losses"]]
        for name, row in rows.items():
            if name == STUDENT:
                table.append([f"**{name}**", f"**{row['nDCG@10']:.4f}**", "", "", ""])
            else:
                table.append([name, f"{row['nDCG@10']:.4f}", f"{row['student_minus_this']:+.4f}",
                              str(p_round(row["p"])), f"{row['wins']}/{row['losses']}"])  # fmt: skip
        lines += [f"{dataset} ({len(qids)} queries, max_length {entry['max_length']})", *markdown_table(table), ""]
    report.result["status"] = "complete"
    report.write()
    print(f"chosen by dev: {chosen} ({', '.join(f'{n} {v:.4f}' for n, v in devs.items())})")
    print("\n".join(lines))
    return report.result


if __name__ == "__main__":
    main()
