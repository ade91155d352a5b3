"""Fusion of a reranked run with its first stage (``llmrerank rerank --fuse bm25:W``), measured at several weights.

Reads a run written by ``llmrerank rerank`` (its sidecar names the input run, the split and ``top_k``), fuses its
reranked head with the first stage's scores at each weight exactly as ``--fuse`` does
(:func:`llmrerank.fusion.fuse_ranking` over the written head scores, which are the ranker's own), and reports
nDCG@10 with paired tests against the first stage and against the unfused reranking::

    python benchmarks/fusion.py --reranked runs/dl21-dev-likelihood-0.5b.trec --name dl21-dev
    python benchmarks/fusion.py --reranked runs/dl19-test-likelihood-0.5b.trec --name dl19 --weights 0.2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _common import RESULTS, Report, header, markdown_table, p_round

from llmrerank.data import load_qrels, load_run
from llmrerank.evaluate import evaluate_runs, paired_p
from llmrerank.fusion import Fusion, fuse_ranking
from llmrerank.pipeline import chain_scores
from llmrerank.types import Ranking


def fused_run(reranked: dict, first: dict, top_k: int, weight: float) -> dict:
    """``reranked``'s head fused with the first stage at ``weight``; its tail (the first stage's) below."""
    out = {}
    for qid, items in reranked.items():
        head = items[:top_k]
        ranking = Ranking(tuple(range(len(head))), tuple(s for _, s in head), tuple(d for d, _ in head))
        fused = fuse_ranking(ranking, dict(first[qid][:top_k]), Fusion(weight))
        tail = [d for d, _ in items[top_k:]]
        out[qid] = list(zip([*fused.ids, *tail], chain_scores(fused.scores, len(tail))))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reranked", required=True, help="a run written by llmrerank rerank (with its sidecar)")
    parser.add_argument("--name", required=True, help="names the results file: results/fusion-NAME.json")
    parser.add_argument("--weights", default="0,0.1,0.2,0.3,0.4,0.5,0.7,1", help="first-stage weights W")
    args = parser.parse_args(argv)
    path = Path(args.reranked)
    side = json.loads(Path(str(path) + ".json").read_text())
    top_k, split = side["top_k"], side["split"]
    data = Path(side["data"])
    qrels = load_qrels(data / "qrels" / f"{split}.tsv")
    first = load_run(side["input_run"])
    reranked = load_run(path)
    first = {q: first[q] for q in reranked}
    weights = [float(w) for w in args.weights.split(",")]
    runs = {"bm25": first, **{f"W={w:g}": fused_run(reranked, first, top_k, w) for w in weights}}
    ev = evaluate_runs(qrels, runs, measures=["nDCG@10"])
    unfused = "W=0" if 0.0 in weights else None
    report = Report(
        RESULTS / f"fusion-{args.name}.json",
        header("fusion", reranked=str(path), ranker=side["ranker"], split=split, top_k=top_k, queries=len(reranked)),
    )
    rows, table = {}, [["run", "nDCG@10", "Δ vs BM25", "p vs BM25", "p vs unfused"]]
    for name in runs:
        per_query = [ev.per_query[name]["nDCG@10"][q] for q in ev.query_ids]
        base = [ev.per_query["bm25"]["nDCG@10"][q] for q in ev.query_ids]
        p_bm25 = None if name == "bm25" else p_round(paired_p(per_query, base))
        p_unfused = None
        if unfused and name not in ("bm25", unfused):
            p_unfused = p_round(paired_p(per_query, [ev.per_query[unfused]["nDCG@10"][q] for q in ev.query_ids]))
        value = ev.aggregate[name]["nDCG@10"]
        rows[name] = {"nDCG@10": round(value, 4), "p_vs_bm25": p_bm25, "p_vs_unfused": p_unfused}
        delta = value - ev.aggregate["bm25"]["nDCG@10"]
        table.append([name, f"{value:.4f}", f"{delta:+.4f}", str(p_bm25 or "-"), str(p_unfused or "-")])
    report.result["runs"] = rows
    report.result["query_ids"] = list(ev.query_ids)
    report.result["per_query_nDCG@10"] = {n: [ev.per_query[n]["nDCG@10"][q] for q in ev.query_ids] for n in runs}
    print(f"{len(ev.query_ids)} queries of {split}, {side['ranker']['method']} on {side['ranker']['model']}, "
          f"top {top_k}", file=sys.stderr)
    report.finish("\n".join(markdown_table(table)))


if __name__ == "__main__":
    main()
