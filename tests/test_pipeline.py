"""Reranking a run: the head/tail rule, strictly decreasing scores, sidecar, resume."""

from __future__ import annotations

import json
import math

import pytest

from conftest import TINY
from llmrerank.data import load_beir, load_run
from llmrerank.pipeline import chain_scores, rerank, rerank_run, sidecar_path
from llmrerank.rankers import LikelihoodRanker, PointwiseRanker


def test_chain_scores_worked_examples():
    assert chain_scores([3.0, 2.5, 1.0], 2) == [3.0, 2.5, 1.0, 0.0, -1.0]
    ties = chain_scores([2.0, 2.0, 2.0], 1)
    assert ties[0] == 2.0 and ties[1] == math.nextafter(2.0, -math.inf)
    assert ties[2] == math.nextafter(ties[1], -math.inf) and ties[3] == ties[2] - 1.0
    assert chain_scores([], 3) == [0.0, -1.0, -2.0]
    huge = chain_scores([1e20], 2)  # subtracting 1 does nothing at this magnitude: still strictly decreasing
    assert huge[0] > huge[1] > huge[2]
    with pytest.raises(ValueError, match="non-finite"):
        chain_scores([float("nan")], 0)


def _scores_strictly_decrease(run):
    return all(all(a[1] > b[1] for a, b in zip(items, items[1:])) for items in run.values())


def test_rerank_run_head_tail_and_sidecar(tmp_path, qwen_backend):
    ds = load_beir(TINY)
    run = load_run(TINY / "run.trec")
    ranker = LikelihoodRanker(qwen_backend)
    out = tmp_path / "out.trec"
    report = rerank_run(ranker, ds.queries, ds.corpus, run, out, top_k=2, progress=False)
    written = load_run(out)
    assert list(written) == list(run)
    for qid, items in run.items():
        head = [d for d, _ in items[:2]]
        expected_head = [head[i] for i in ranker.rank(ds.queries[qid], [ds.corpus[d] for d in head]).indices]
        assert [d for d, _ in written[qid]] == expected_head + [d for d, _ in items[2:]]
    assert _scores_strictly_decrease(written)
    assert report.documents == 2 * len(run) and report.queries == len(run) and report.tokens > 0
    meta = json.loads(sidecar_path(out).read_text())
    assert meta["ranker"]["method"] == "likelihood" and meta["top_k"] == 2
    assert meta["backend"]["resolved_dtype"] == "float32"  # what dtype "auto" would have become is recorded
    assert meta["report"]["documents"] == report.documents
    assert "tokens_per_second" in meta["report"] and meta["ranker"]["template"]["target"] == "{query}"
    per_query = meta["report"]["per_query"]
    assert set(per_query) == set(run)
    assert sum(q["tokens"] for q in per_query.values()) == meta["report"]["counts"]["tokens"] == report.tokens


def test_resume_skips_complete_queries_and_redoes_a_cut_one(tmp_path, qwen_backend):
    ds = load_beir(TINY)
    run = load_run(TINY / "run.trec")
    ranker = LikelihoodRanker(qwen_backend)
    fresh = tmp_path / "fresh.trec"
    rerank_run(ranker, ds.queries, ds.corpus, run, fresh, top_k=3, progress=False)
    text = fresh.read_text()
    lines = text.splitlines(keepends=True)
    n_first = len(run[next(iter(run))])
    partial = tmp_path / "partial.trec"
    # a crash: the first query complete, the second cut in the middle of its second line
    partial.write_text("".join(lines[: n_first + 1]) + lines[n_first + 1][:7])
    sidecar_path(partial).write_text(sidecar_path(fresh).read_text())
    before = qwen_backend.stats.sequences
    report = rerank_run(ranker, ds.queries, ds.corpus, run, partial, top_k=3, resume=True, progress=False)
    assert report.queries_skipped_resume == 1 and report.queries == len(run) - 1
    assert qwen_backend.stats.sequences - before == 3 * (len(run) - 1)
    assert partial.read_text() == text
    meta = json.loads(sidecar_path(partial).read_text())
    assert meta["status"] == "complete" and set(meta["report"]["per_query"]) == set(run)


def test_resume_refuses_an_output_made_otherwise(tmp_path, qwen_backend):
    ds = load_beir(TINY)
    run = load_run(TINY / "run.trec")
    out = tmp_path / "out.trec"
    rerank_run(LikelihoodRanker(qwen_backend), ds.queries, ds.corpus, run, out, top_k=3, progress=False)
    with pytest.raises(ValueError, match="other ranker"):
        rerank_run(PointwiseRanker(qwen_backend), ds.queries, ds.corpus, run, out, top_k=3, resume=True)
    with pytest.raises(ValueError, match="other top_k"):
        rerank_run(LikelihoodRanker(qwen_backend), ds.queries, ds.corpus, run, out, top_k=2, resume=True)
    sidecar_path(out).unlink()
    with pytest.raises(ValueError, match="is missing"):
        rerank_run(LikelihoodRanker(qwen_backend), ds.queries, ds.corpus, run, out, top_k=3, resume=True)


def test_bad_arguments(tmp_path, qwen_backend):
    ds = load_beir(TINY)
    run = load_run(TINY / "run.trec")
    ranker = LikelihoodRanker(qwen_backend)
    with pytest.raises(ValueError, match="top_k"):
        rerank_run(ranker, ds.queries, ds.corpus, run, tmp_path / "o", top_k=0, progress=False)
    with pytest.raises(ValueError, match="no query of the run"):
        rerank_run(ranker, {"zz": "q"}, ds.corpus, run, tmp_path / "o", progress=False)
    corpus = dict(ds.corpus)
    first_doc = run[next(iter(run))][0][0]
    del corpus[first_doc]
    with pytest.raises(KeyError, match=first_doc):
        rerank_run(ranker, ds.queries, corpus, run, tmp_path / "o", progress=False)


def test_queries_of_another_split_are_left_out_and_counted(tmp_path, qwen_backend):
    ds = load_beir(TINY)
    run = load_run(TINY / "run.trec")
    first = next(iter(run))
    queries = {q: t for q, t in ds.queries.items() if q != first}
    out = tmp_path / "split.trec"
    report = rerank_run(LikelihoodRanker(qwen_backend), queries, ds.corpus, run, out, top_k=2, progress=False)
    assert report.queries_not_loaded == 1 and report.queries == len(run) - 1
    assert first not in load_run(out) and "not in the split" in report.summary()


class CountingRanker:
    """A real ranker, with the batches it is asked to rank recorded."""

    def __init__(self, ranker):
        self.ranker = ranker
        self.batches: list[list[str]] = []

    def rank_many(self, queries, docs):
        self.batches.append(list(queries))
        return self.ranker.rank_many(queries, docs)


def test_rerank_iterator_yields_each_query_in_run_order_batched_across_queries(qwen_backend):
    ds = load_beir(TINY)
    run = load_run(TINY / "run.trec")
    ranker = CountingRanker(LikelihoodRanker(qwen_backend))
    qids = list(run)
    got = list(rerank(ranker, ds.queries, ds.corpus, run, top_k=3, skip={qids[0]}, queries_per_batch=2))
    assert [q for q, _ in got] == qids[1:]
    # the batches are the run's queries two by two, fixed before the skipped one is left out (as a resume needs)
    assert ranker.batches == [[ds.queries[qids[1]]], [ds.queries[qids[2]]]]
    for qid, ranking in got:
        head = [d for d, _ in run[qid][:3]]
        alone = ranker.ranker.rank(ds.queries[qid], [ds.corpus[d] for d in head])
        assert ranking.ids == tuple(head[i] for i in alone.indices)
        assert ranking.scores == pytest.approx(alone.scores, abs=1e-5)
    only = {qids[1]: ds.queries[qids[1]]}  # queries of another split are passed over
    assert [q for q, _ in rerank(ranker, only, ds.corpus, run, top_k=2)] == [qids[1]]


def test_rerank_iterator_checks_its_arguments_before_ranking(qwen_backend):
    ds = load_beir(TINY)
    run = load_run(TINY / "run.trec")
    ranker = CountingRanker(LikelihoodRanker(qwen_backend))
    corpus = dict(ds.corpus)
    last = next(reversed(run))
    del corpus[run[last][0][0]]
    with pytest.raises(KeyError, match=f"query {last}: 1 candidate"):
        rerank(ranker, ds.queries, corpus, run)  # raised at the call, not at the last query
    with pytest.raises(ValueError, match="top_k must be at least 1"):
        rerank(ranker, ds.queries, ds.corpus, run, top_k=0)
    with pytest.raises(ValueError, match="queries_per_batch must be at least 1"):
        rerank(ranker, ds.queries, ds.corpus, run, queries_per_batch=0)
    assert ranker.batches == []


class BareRanker:
    """A ranker of another library: its rankings carry no ids, or (``drop``) leave a candidate out."""

    method = "bare"

    def __init__(self, drop: bool = False):
        self.drop = drop

    def describe(self):
        return {"method": self.method}

    def rank_many(self, queries, docs):
        from llmrerank.types import Ranking

        out = []
        for ds in docs:
            order = tuple(reversed(range(len(ds))))[: len(ds) - self.drop]
            out.append(Ranking(order, tuple(float(-i) for i in range(len(order)))))
        return out


def test_the_iterator_gives_every_ranking_the_runs_ids_and_refuses_an_incomplete_one(tmp_path):
    ds = load_beir(TINY)
    run = load_run(TINY / "run.trec")
    for qid, ranking in rerank(BareRanker(), ds.queries, ds.corpus, run, top_k=3):
        assert ranking.ids == tuple(d for d, _ in run[qid][:3])[::-1]
    rerank_run(BareRanker(), ds.queries, ds.corpus, run, tmp_path / "o.trec", top_k=3, tag="bare", progress=False)
    assert {q: [d for d, _ in items] for q, items in load_run(tmp_path / "o.trec").items()} == {
        q: [*(d for d, _ in items[:3])][::-1] + [d for d, _ in items[3:]] for q, items in run.items()
    }
    with pytest.raises(ValueError, match="does not order each of the 3 candidates once"):
        list(rerank(BareRanker(drop=True), ds.queries, ds.corpus, run, top_k=3))


def test_a_resume_compares_the_dtype_a_run_ran_in_not_the_option_that_chose_it(tmp_path, tiny_model_dir):
    from llmrerank import Reranker
    from llmrerank.backends.hf import native_bf16

    ds = load_beir(TINY)
    run = load_run(TINY / "run.trec")
    out = tmp_path / "out.trec"
    fp32 = Reranker("likelihood", model=str(tiny_model_dir), max_length=64, dtype="float32")
    rerank_run(fp32, ds.queries, ds.corpus, run, out, top_k=3, progress=False)
    written = out.read_text()
    # a sidecar whose "auto" became float32 (a machine without native bfloat16): float32 resumes it
    meta = json.loads(sidecar_path(out).read_text())
    meta["backend"]["dtype"] = "auto"
    sidecar_path(out).write_text(json.dumps(meta))
    report = rerank_run(fp32, ds.queries, ds.corpus, run, out, top_k=3, resume=True, progress=False)
    assert report.queries_skipped_resume == len(run) and out.read_text() == written
    if not native_bf16("cpu"):
        return
    # a run written in float32 (likelihood's default before it became auto) and resumed under today's default:
    # refused, naming both dtypes and the flag that continues it
    default = Reranker("likelihood", model=str(tiny_model_dir), max_length=64)
    with pytest.raises(ValueError, match=r"other backend \(.*resolved_dtype: 'float32' then, 'bfloat16' now\).*"
                                         r"\(it ran in float32: the dtype option float32 continues it\)"):
        rerank_run(default, ds.queries, ds.corpus, run, out, top_k=3, resume=True, progress=False)


@pytest.mark.parametrize(("per_batch", "first"), [(1, 1), (2, 2)])
def test_a_time_bound_stops_at_a_batch_end_and_a_resume_ends_as_an_uninterrupted_run(
    tmp_path, qwen_backend, per_batch, first
):
    """max_seconds stops the run after the first batch that ends past it: its queries are in the partial file,
    whose sidecar says stopped and holds their report; out is not written; a resume writes the same file, byte for
    byte, as a run that never stopped, with every query's report."""
    from llmrerank.outputs import partial_path

    ds = load_beir(TINY)
    run = load_run(TINY / "run.trec")
    ranker = LikelihoodRanker(qwen_backend)
    fresh = tmp_path / "fresh.trec"
    rerank_run(ranker, ds.queries, ds.corpus, run, fresh, top_k=3, queries_per_batch=per_batch, progress=False)
    out = tmp_path / "out.trec"
    report = rerank_run(ranker, ds.queries, ds.corpus, run, out, top_k=3, queries_per_batch=per_batch,
                        progress=False, max_seconds=1e-9)
    assert (report.queries, report.queries_left) == (first, len(run) - first)
    assert "stopped at the time bound with" in report.summary()
    assert not out.exists() and list(load_run(partial_path(out))) == list(run)[:first]
    meta = json.loads(sidecar_path(partial_path(out)).read_text())
    assert meta["status"] == "stopped" and list(meta["report"]["per_query"]) == list(run)[:first]
    report = rerank_run(ranker, ds.queries, ds.corpus, run, out, top_k=3, queries_per_batch=per_batch,
                        progress=False, resume=True, max_seconds=3600)
    assert (report.queries_skipped_resume, report.queries, report.queries_left) == (first, len(run) - first, 0)
    assert out.read_text() == fresh.read_text() and not partial_path(out).exists()
    meta = json.loads(sidecar_path(out).read_text())
    assert meta["status"] == "complete" and set(meta["report"]["per_query"]) == set(run)


@pytest.mark.parametrize("bad", [0, -1.0, True, "5", float("nan")])
def test_a_time_bound_must_be_a_positive_number(tmp_path, qwen_backend, bad):
    ds = load_beir(TINY)
    with pytest.raises(ValueError, match="max_seconds must be a positive number of seconds"):
        rerank_run(LikelihoodRanker(qwen_backend), ds.queries, ds.corpus, load_run(TINY / "run.trec"),
                   tmp_path / "o.trec", progress=False, max_seconds=bad)
    assert not (tmp_path / "o.trec").exists()


def test_a_slice_killed_after_a_stop_keeps_the_earlier_slices_accounting(tmp_path, qwen_backend):
    """A resumed slice's partial sidecar carries the kept queries' per-query report from the start, so a slice
    that dies keeps the earlier slices' accounting for the next resume (only its own queries' is lost)."""
    from llmrerank.outputs import partial_path

    ds = load_beir(TINY)
    run = load_run(TINY / "run.trec")
    out = tmp_path / "out.trec"
    args = (ds.queries, ds.corpus, run, out)
    rerank_run(LikelihoodRanker(qwen_backend), *args, top_k=3, progress=False, max_seconds=1e-9)  # q1

    class DiesAtQ3(LikelihoodRanker):
        def rank_many(self, queries, docs):
            if ds.queries["q3"] in queries:
                raise RuntimeError("killed")
            return super().rank_many(queries, docs)

    with pytest.raises(RuntimeError, match="killed"):
        rerank_run(DiesAtQ3(qwen_backend), *args, top_k=3, progress=False, resume=True)  # q2, then dies
    meta = json.loads(sidecar_path(partial_path(out)).read_text())
    assert meta["status"] == "running" and list(meta["report"]["per_query"]) == ["q1"]
    rerank_run(LikelihoodRanker(qwen_backend), *args, top_k=3, progress=False, resume=True)
    per_query = json.loads(sidecar_path(out).read_text())["report"]["per_query"]
    assert set(per_query) == {"q1", "q3"}  # q2's accounting died with its slice; q1's did not
