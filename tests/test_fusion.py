"""Fusing the reranker's scores with the first stage's (``--fuse bm25:W``): hand-computed values, the run writer,
its sidecar and resume, and the flag's refusals."""

from __future__ import annotations

import json

import pytest

from conftest import TINY
from llmrerank.data import load_beir, load_run
from llmrerank.fusion import Fusion, fuse_ranking, fuse_runs, min_max, parse_fusion
from llmrerank.pipeline import rerank_run, sidecar_path
from llmrerank.rankers import LikelihoodRanker
from llmrerank.types import Ranking

# the reranker's order a, b, c (scores 3, 1, 0); the first stage prefers b, then c, then a
RANKED = Ranking(indices=(0, 1, 2), scores=(3.0, 1.0, 0.0), ids=("a", "b", "c"), metadata={"tokens": 7})
BM25 = {"a": 10.0, "b": 30.0, "c": 20.0}


def test_fused_scores_by_hand():
    # normalised: reranker a=1, b=1/3, c=0; first stage a=0, b=1, c=0.5
    half = fuse_ranking(RANKED, BM25, Fusion(0.5))
    assert half.ids == ("b", "a", "c") and half.indices == (1, 0, 2)
    assert half.scores == pytest.approx((0.5 * 1 + 0.5 / 3, 0.5, 0.25))
    assert half.metadata == {"tokens": 7, "fused": {"stage": "bm25", "weight": 0.5}}
    assert fuse_ranking(RANKED, BM25, Fusion(0.0)).ids == ("a", "b", "c")  # the reranker's order
    assert fuse_ranking(RANKED, BM25, Fusion(1.0)).ids == ("b", "c", "a")  # the first stage's
    assert fuse_ranking(RANKED, BM25, Fusion(0.2)).scores == pytest.approx((0.8, 0.2 + 0.8 / 3, 0.1))


def test_a_constant_side_does_not_reorder_and_ties_keep_the_rerankers_order():
    assert min_max([2.0, 2.0]) == [0.0, 0.0] and min_max([]) == [] and min_max([1.0, 3.0]) == [0.0, 1.0]
    flat = fuse_ranking(RANKED, {"a": 5.0, "b": 5.0, "c": 5.0}, Fusion(0.9))
    assert flat.ids == ("a", "b", "c") and flat.scores == pytest.approx((0.1, 0.1 / 3, 0.0))
    tied = Ranking(indices=(0, 1), scores=(1.0, 0.0), ids=("x", "y"))
    assert fuse_ranking(tied, {"x": 0.0, "y": 1.0}, Fusion(0.5)).ids == ("x", "y")  # 0.5 each: as ranked


def test_several_runs_fuse_by_hand():
    first = {"q": [("a", 3.0), ("b", 1.0), ("c", 0.0), ("d", -5.0)], "r": [("x", 1.0), ("y", 0.0)]}
    second = {"q": [("d", 7.0), ("c", 5.0), ("b", 10.0), ("a", 0.0)], "r": [("y", 2.0), ("x", 1.0)]}
    # top 3 of the first run (a, b, c): normalised a=1, b=1/3, c=0 and a=0, b=1, c=0.5; d is left out
    head = fuse_runs([first, second], top_k=3)
    assert [d for d, _ in head["q"]] == ["b", "a", "c"]
    assert [s for _, s in head["q"]] == pytest.approx([2 / 3, 0.5, 0.25])
    assert head["r"] == [("x", 0.5), ("y", 0.5)]  # a tie keeps the first run's order
    # all four: (1, 0.75, 0.625, 0) and (0, 1, 0.5, 0.7) over a, b, c, d
    whole = fuse_runs([first, second])
    assert [d for d, _ in whole["q"]] == ["b", "c", "a", "d"]
    assert [s for _, s in whole["q"]] == pytest.approx([0.875, 0.5625, 0.5, 0.35])
    assert fuse_runs([first], top_k=3)["q"] == [("a", 1.0), ("b", pytest.approx(1 / 3)), ("c", 0.0)]


def test_runs_that_cannot_be_fused_are_refused_naming_what_is_missing():
    first = {"q": [("a", 1.0), ("b", 0.0), ("c", -1.0)]}
    with pytest.raises(ValueError, match="run 2 has no query 'q'"):
        fuse_runs([first, {"p": [("a", 1.0)]}])
    with pytest.raises(ValueError, match="run 2 has no score for document 'b' of query 'q'"):
        fuse_runs([first, {"q": [("a", 1.0), ("c", 0.0)]}], top_k=2)
    assert fuse_runs([first, {"q": [("a", 1.0), ("b", 0.0)]}], top_k=2)["q"][0] == ("a", 1.0)  # c is not needed
    with pytest.raises(ValueError, match="no runs to fuse"):
        fuse_runs([])
    for bad in (0, 2.5, True, "3"):
        with pytest.raises(ValueError, match=f"top_k must be a whole number of at least 1 .*got {bad!r}"):
            fuse_runs([first], top_k=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-finite"):
        fuse_runs([first, {"q": [("a", float("nan")), ("b", 0.0), ("c", 1.0)]}])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0.3", "expected STAGE:WEIGHT such as bm25:0.3"),
        ("bm25:x", "the weight of 'bm25:x' is not a number"),
        ("bm25:1.5", r"the weight must be in \[0, 1\], got 1.5"),
        ("bm25:-0.1", r"must be in \[0, 1\]"),
        ("bm25:nan", r"must be in \[0, 1\], got nan"),
        ("rrf:0.3", "unknown first stage 'rrf'; give bm25:WEIGHT"),
    ],
)
def test_bad_fusions_are_refused_naming_the_form(text, message):
    with pytest.raises(ValueError, match=message):
        parse_fusion(text)


def test_what_cannot_be_fused_is_refused():
    with pytest.raises(ValueError, match="document 'c' has no first-stage score"):
        fuse_ranking(RANKED, {"a": 1.0, "b": 2.0}, Fusion(0.5))
    with pytest.raises(ValueError, match="no document ids"):
        fuse_ranking(Ranking(indices=(0,), scores=(1.0,)), BM25, Fusion(0.5))
    with pytest.raises(ValueError, match="non-finite"):
        fuse_ranking(Ranking((0, 1), (float("inf"), 1.0), ("a", "b")), BM25, Fusion(0.5))
    with pytest.raises(TypeError, match="a number"):
        Fusion(True)  # type: ignore[arg-type]


def test_the_run_writer_fuses_the_head_keeps_the_tail_and_records_it(tmp_path, qwen_backend):
    ds = load_beir(TINY)
    run = load_run(TINY / "run.trec")
    ranker = LikelihoodRanker(qwen_backend)
    plain, fused = tmp_path / "plain.trec", tmp_path / "fused.trec"
    rerank_run(ranker, ds.queries, ds.corpus, run, plain, top_k=3, progress=False)
    rerank_run(ranker, ds.queries, ds.corpus, run, fused, top_k=3, progress=False, fuse=Fusion(0.4))
    unfused, written = load_run(plain), load_run(fused)
    for qid, items in run.items():
        first = dict(items[:3])
        reranked = unfused[qid][:3]  # the reranker's own scores (no ties here), best first
        want = fuse_ranking(
            Ranking(tuple(range(3)), tuple(s for _, s in reranked), tuple(d for d, _ in reranked)), first, Fusion(0.4)
        )
        assert [d for d, _ in written[qid][:3]] == list(want.ids)
        assert [s for _, s in written[qid][:3]] == pytest.approx(list(want.scores), abs=1e-12)
        assert [d for d, _ in written[qid][3:]] == [d for d, _ in items[3:]]  # the tail, below, in run order
        assert all(a[1] > b[1] for a, b in zip(written[qid], written[qid][1:]))
    assert json.loads(sidecar_path(fused).read_text())["fuse"] == {"stage": "bm25", "weight": 0.4}
    assert json.loads(sidecar_path(plain).read_text())["fuse"] is None
    # a resume must fuse as the run it continues did, both ways; the same fusion resumes
    with pytest.raises(ValueError, match="other fuse"):
        rerank_run(ranker, ds.queries, ds.corpus, run, fused, top_k=3, resume=True, progress=False)
    with pytest.raises(ValueError, match="other fuse"):
        rerank_run(ranker, ds.queries, ds.corpus, run, plain, top_k=3, resume=True, fuse=Fusion(0.4))
    report = rerank_run(ranker, ds.queries, ds.corpus, run, fused, top_k=3, resume=True, fuse=Fusion(0.4))
    assert report.queries_skipped_resume == len(run) and report.queries == 0


def test_the_in_memory_iterator_fuses_as_the_run_writer_does(tmp_path, qwen_backend):
    from llmrerank.pipeline import rerank

    ds = load_beir(TINY)
    run = load_run(TINY / "run.trec")
    ranker = LikelihoodRanker(qwen_backend)
    out = tmp_path / "fused.trec"
    rerank_run(ranker, ds.queries, ds.corpus, run, out, top_k=3, progress=False, fuse=Fusion(0.4))
    written = load_run(out)
    plain = dict(rerank(ranker, ds.queries, ds.corpus, run, top_k=3))
    fused = dict(rerank(ranker, ds.queries, ds.corpus, run, top_k=3, fuse=Fusion(0.4)))
    assert set(fused) == set(run)
    for qid, ranking in fused.items():
        assert list(ranking.ids) == [d for d, _ in written[qid][:3]]
        assert list(ranking.scores) == pytest.approx([s for _, s in written[qid][:3]], abs=1e-5)  # the file rounds
        assert ranking.metadata["fused"] == {"stage": "bm25", "weight": 0.4}
        assert ranking == fuse_ranking(plain[qid], dict(run[qid][:3]), Fusion(0.4))
    assert any(fused[q].ids != plain[q].ids for q in run)  # the fusion reorders some query here
    with pytest.raises(TypeError, match="fuse must be a Fusion"):
        rerank(ranker, ds.queries, ds.corpus, run, top_k=3, fuse=0.4)  # type: ignore[arg-type]


def test_a_sidecar_from_before_fusion_resumes_unfused_only(tmp_path, qwen_backend):
    ds = load_beir(TINY)
    run = load_run(TINY / "run.trec")
    ranker = LikelihoodRanker(qwen_backend)
    out = tmp_path / "out.trec"
    rerank_run(ranker, ds.queries, ds.corpus, run, out, top_k=3, progress=False)
    meta = json.loads(sidecar_path(out).read_text())
    del meta["fuse"]  # as written before fusion existed
    sidecar_path(out).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="other fuse"):
        rerank_run(ranker, ds.queries, ds.corpus, run, out, top_k=3, resume=True, fuse=Fusion(0.5))
    report = rerank_run(ranker, ds.queries, ds.corpus, run, out, top_k=3, resume=True, progress=False)
    assert report.queries_skipped_resume == len(run)


def test_the_fuse_flag(tmp_path, tiny_model_dir, capsys):
    from llmrerank.cli import main

    args = ["rerank", "--data", str(TINY), "--model", str(tiny_model_dir), "--method", "likelihood", "--top-k", "3"]
    out = tmp_path / "cli.trec"
    assert main([*args, "--out", str(out), "--fuse", "bm25:1", "--quiet"]) == 0
    run, written = load_run(TINY / "run.trec"), load_run(out)
    for qid, items in run.items():  # weight 1: the first stage's order
        assert [d for d, _ in written[qid]] == [d for d, _ in items]
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--out", str(tmp_path / "x.trec"), "--fuse", "bm25:2"])
    assert exit_.value.code == 2
    assert "argument --fuse: the weight must be in [0, 1], got 2.0" in capsys.readouterr().err
    assert not (tmp_path / "x.trec").exists()
