"""Build the bundled demo sample ``src/llmrerank/sample/dl19-sample/`` from the TREC DL 2019 data.

Takes the first 5 queries of ``dl19/queries.jsonl`` (file order) that have at least one document judged
rel >= 2 among their BM25 top 20, and writes for them:

- ``queries.jsonl``: their lines, unchanged;
- ``corpus.jsonl``: the lines of the documents in their BM25 top 20, unchanged, in corpus order;
- ``qrels/test.tsv``: every judgement of those queries (BEIR tsv with header), so nDCG's ideal ranking
  is the real one;
- ``bm25-top20.trec``: their first 20 lines of ``bm25-top100.trec``, unchanged.

Usage (from the repository root)::

    python benchmarks/make_sample.py [--data ../shared/data] [--out src/llmrerank/sample/dl19-sample]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import REPO, add_data_option

NUM_QUERIES = 5
DEPTH = 20
MIN_GRADE = 2


def build(data: Path, out: Path) -> list[str]:
    """Write the sample from ``data/dl19`` into ``out``; return the chosen query ids."""
    source = data / "dl19"
    for name in ("queries.jsonl", "corpus.jsonl", "qrels/test.tsv", "bm25-top100.trec"):
        if not (source / name).exists():
            raise FileNotFoundError(f"{source / name} not found: expected the DL19 BEIR folder under --data")

    query_lines = [line for line in (source / "queries.jsonl").read_text("utf-8").splitlines() if line.strip()]
    qrels_lines = (source / "qrels" / "test.tsv").read_text("utf-8").splitlines()
    header, judgements = qrels_lines[0], [line for line in qrels_lines[1:] if line.strip()]
    grades: dict[tuple[str, str], int] = {}
    for line in judgements:
        qid, doc_id, grade = line.split("\t")
        grades[(qid, doc_id)] = int(grade)

    run_lines: dict[str, list[str]] = {}
    for line in (source / "bm25-top100.trec").read_text("utf-8").splitlines():
        if line.strip():
            run_lines.setdefault(line.split()[0], []).append(line)
    for lines in run_lines.values():
        lines.sort(key=lambda line: int(line.split()[3]))

    chosen: list[str] = []
    for line in query_lines:
        qid = json.loads(line)["_id"]
        top = [row.split()[2] for row in run_lines.get(qid, [])[:DEPTH]]
        if any(grades.get((qid, d), 0) >= MIN_GRADE for d in top):
            chosen.append(qid)
        if len(chosen) == NUM_QUERIES:
            break
    if len(chosen) < NUM_QUERIES:
        raise RuntimeError(f"only {len(chosen)} queries qualify, expected {NUM_QUERIES}")

    wanted = set(chosen)
    docs = {row.split()[2] for q in chosen for row in run_lines[q][:DEPTH]}
    (out / "qrels").mkdir(parents=True, exist_ok=True)

    def write(name: str, lines: list[str]) -> None:
        (out / name).write_text("".join(line + "\n" for line in lines), encoding="utf-8")

    write("queries.jsonl", [line for line in query_lines if json.loads(line)["_id"] in wanted])
    corpus_lines = (source / "corpus.jsonl").read_text("utf-8").splitlines()
    write("corpus.jsonl", [line for line in corpus_lines if line.strip() and json.loads(line)["_id"] in docs])
    write("qrels/test.tsv", [header] + [line for line in judgements if line.split("\t")[0] in wanted])
    write("bm25-top20.trec", [row for q in chosen for row in run_lines[q][:DEPTH]])
    return chosen


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_option(parser, "dl19/")
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "src" / "llmrerank" / "sample" / "dl19-sample",
        help="where to write the sample",
    )
    args = parser.parse_args(argv)
    chosen = build(args.data, args.out)
    print(f"wrote {args.out} with queries {', '.join(chosen)}")


if __name__ == "__main__":
    main()
