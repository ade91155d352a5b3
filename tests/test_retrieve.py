from __future__ import annotations

from pathlib import Path

import pytest

from llmrerank.data import load_beir
from llmrerank.retrieve import bm25_search
from llmrerank.types import Document

TINY = Path(__file__).parent / "fixtures" / "tiny"


@pytest.fixture(scope="module")
def tiny():
    return load_beir(TINY)


def test_obvious_top_documents(tiny):
    run = bm25_search(tiny.corpus, tiny.queries, top_k=3, show_progress=False)
    assert list(run) == ["q1", "q2", "q3"]
    # "how do honey bees make honey" -> the one passage about honey bees making honey
    assert run["q1"][0][0] == "d1"
    assert run["q2"][0][0] == "d5"  # volcano erupts
    assert run["q3"][0][0] == "d9"  # sourdough bread rises
    for items in run.values():
        assert len(items) == 3
        scores = [s for _, s in items]
        assert scores == sorted(scores, reverse=True)
        assert all(isinstance(s, float) for s in scores)


def test_top_k_is_capped_at_corpus_size(tiny):
    run = bm25_search(tiny.corpus, tiny.queries, top_k=100, show_progress=False)
    for items in run.values():
        assert len(items) == 12
        assert {d for d, _ in items} == set(tiny.corpus)


def test_title_is_indexed():
    corpus = {"a": Document("nothing here", id="a", title="zebra"), "b": Document("plain words", id="b")}
    run = bm25_search(corpus, {"q": "zebra"}, top_k=1, show_progress=False)
    assert run["q"][0][0] == "a"
    assert run["q"][0][1] > 0


def test_equal_scores_follow_corpus_order():
    texts = {"x": "alpha beta", "y": "alpha beta", "z": "gamma delta"}
    forward = {k: Document(v, id=k) for k, v in texts.items()}
    backward = {k: forward[k] for k in reversed(list(forward))}
    a = bm25_search(forward, {"q": "alpha"}, top_k=2, show_progress=False)["q"]
    b = bm25_search(backward, {"q": "alpha"}, top_k=2, show_progress=False)["q"]
    assert a[0][1] == a[1][1] > 0
    assert [d for d, _ in a] == ["x", "y"]
    assert [d for d, _ in b] == ["y", "x"]


def test_stemming_matches_inflections(tiny):
    # "erupting" only matches "erupts" after stemming
    on = bm25_search(tiny.corpus, {"q": "erupting"}, top_k=1, show_progress=False)["q"][0]
    off = bm25_search(tiny.corpus, {"q": "erupting"}, top_k=1, stemmer=None, show_progress=False)["q"][0]
    assert on[0] == "d5" and on[1] > 0
    assert off[1] == 0.0


def test_query_without_known_terms_scores_zero(tiny):
    run = bm25_search(tiny.corpus, {"q": "xylophone", "e": ""}, top_k=2, show_progress=False)
    assert run["q"] == [("d1", 0.0), ("d2", 0.0)]
    assert run["e"] == [("d1", 0.0), ("d2", 0.0)]


def test_unknown_stemmer(tiny):
    with pytest.raises(ValueError, match="klingon"):
        bm25_search(tiny.corpus, tiny.queries, stemmer="klingon", show_progress=False)


def test_bad_arguments(tiny):
    with pytest.raises(ValueError, match="top_k"):
        bm25_search(tiny.corpus, tiny.queries, top_k=0, show_progress=False)
    with pytest.raises(ValueError, match="empty"):
        bm25_search({}, tiny.queries, show_progress=False)
