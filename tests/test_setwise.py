"""Setwise reranking: the scripted model of test_pairwise (label logits from known relevance), tiny random models."""

from __future__ import annotations

import string

import pytest
import torch

from conftest import make_model, make_tokenizer
from llmrerank import Document, Reranker
from llmrerank.backends.hf import HFBackend
from llmrerank.rankers import SetwiseRanker
from llmrerank.registry import method_options
from test_pairwise import QUERY, REL, ScriptedBackend, docs_numbered, letters_tokenizer


@pytest.fixture(scope="module")
def tok():
    return letters_tokenizer()


def judge(rel):
    """Label logits = the shown documents' relevance: the most relevant wins, wherever it is shown."""
    return lambda shown: [float(rel[i]) for i in shown]


def test_heapsort_matches_the_worked_example(tok):
    backend = ScriptedBackend(tok, judge(REL))
    r = SetwiseRanker(backend, set_size=3, sort_top_k=2).rank(QUERY, docs_numbered(5))
    assert [backend.shown(p) for p in backend.prompts] == [(1, 3, 4), (0, 1, 2), (0, 3, 4), (4, 3, 2), (4, 0)]
    assert r.indices == (1, 3, 0, 2, 4) and r.ids == ("d1", "d3", "d0", "d2", "d4")
    assert r.scores == (5.0, 4.0, 3.0, 2.0, 1.0)
    m = r.metadata
    assert (m["comparisons"], m["llm_calls"], m["rounds"], m["memo_hits"]) == (5, 5, 5, 0)
    assert m["prompt_tokens"] == m["tokens"] == sum(len(p) for p in backend.prompts)
    assert "position_conflicts" not in m


def test_bubblesort_matches_the_worked_example(tok):
    backend = ScriptedBackend(tok, judge(REL))
    r = SetwiseRanker(backend, set_size=3, aggregation="bubblesort", sort_top_k=2).rank(QUERY, docs_numbered(5))
    assert [backend.shown(p) for p in backend.prompts] == [(2, 3, 4), (0, 1, 3), (0, 3)]
    assert r.indices == (1, 3, 0, 2, 4)
    assert (r.metadata["comparisons"], r.metadata["memo_hits"]) == (3, 1)


@pytest.mark.parametrize("aggregation", ["heapsort", "bubblesort"])
def test_default_set_of_four_sorts_the_top_ten_of_twenty(tok, aggregation):
    rel = [(7 * i) % 20 for i in range(20)]  # a shuffled relevance
    backend = ScriptedBackend(tok, judge(rel))
    r = SetwiseRanker(backend, aggregation=aggregation).rank(QUERY, docs_numbered(20))
    best = sorted(range(20), key=lambda i: -rel[i])[:10]
    assert list(r.indices) == [*best, *(i for i in range(20) if i not in best)]
    assert all(len(backend.shown(p)) <= 4 for p in backend.prompts)
    if aggregation == "heapsort":
        # arity 3: internal nodes 0..6; the deepest of them (4, 5, 6) are one batch of 3 prompts
        assert backend.calls[0] == 3 and r.metadata["rounds"] < r.metadata["comparisons"]


def test_a_tie_goes_to_the_passage_shown_first(tok):
    backend = ScriptedBackend(tok, lambda shown: [0.0] * len(shown))
    r = SetwiseRanker(backend, aggregation="bubblesort", sort_top_k=3).rank(QUERY, docs_numbered(6))
    assert r.indices == tuple(range(6))


def test_rank_many_matches_single_queries(tok):
    rel = list(range(30))
    backend = ScriptedBackend(tok, judge(rel))
    ranker = SetwiseRanker(backend, set_size=4, sort_top_k=3)
    sizes = [12, 6, 2]
    many = ranker.rank_many([QUERY] * 3, [docs_numbered(n) for n in sizes])
    for n, r in zip(sizes, many):
        alone = SetwiseRanker(ScriptedBackend(tok, judge(rel)), set_size=4, sort_top_k=3).rank(QUERY, docs_numbered(n))
        assert r.indices == alone.indices and r.metadata == alone.metadata
    assert backend.calls[0] == 3 + 1 + 1  # the first heap level of each query, together


def test_labels_must_be_single_tokens_up_to_the_set_size():
    few = make_tokenizer(extra=["A", "B", "C"])
    SetwiseRanker(ScriptedBackend(few, judge([0])), set_size=3)
    with pytest.raises(ValueError, match="A, B, C, D to be single, distinct tokens.*' D' not single known tokens"):
        SetwiseRanker(ScriptedBackend(few, judge([0])), set_size=4)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"set_size": 1}, "set_size must be 2 to 26"),
        ({"set_size": 27}, "set_size must be 2 to 26"),
        ({"aggregation": "allpairs"}, "unknown aggregation 'allpairs' for setwise"),
        ({"sort_top_k": 0}, "at least 1"),
    ],
)
def test_bad_options(tok, options, message):
    with pytest.raises(ValueError, match=message):
        SetwiseRanker(ScriptedBackend(tok, judge([0])), **options)


def test_prompt_and_describe(tok):
    assert {"set_size", "aggregation", "sort_top_k", "passage_tokens"} <= set(method_options("setwise"))
    backend = ScriptedBackend(tok, judge(list(range(5))))
    ranker = Reranker("setwise", backend=backend, set_size=5)
    ranker.rank(QUERY, docs_numbered(5))
    text = tok.decode(backend.prompts[0])
    assert "Passage E : <unk> d4 <unk>" in text and text.endswith("<|assistant|> Passage")
    assert (
        'Which of the 5 passages is the most relevant to the query "how do' in ranker.renderer.text_pieces(QUERY, 5)[-1]
    )
    d = ranker.describe()
    assert (d["method"], d["set_size"], d["aggregation"], d["sort_top_k"]) == ("setwise", 5, "heapsort", 10)
    assert d["labels"] == list(string.ascii_uppercase[:5]) and d["template"]["name"] == "setwise"


# --- tiny random models -------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def tiny(request, tok):
    return HFBackend(make_model(len(tok), request.param), tok, batch_size=4, name=f"tiny-{request.param}")


def test_tiny_model_winner_is_the_argmax_label(tiny):
    ranker = SetwiseRanker(tiny, set_size=3, sort_top_k=1)
    docs = [Document("honey bees make honey"), Document("the cat sat on the mat"), Document("bread rise")]
    prompt = ranker.renderer.render(QUERY, [ranker.renderer.passage_ids(d.text) for d in docs]).ids
    with torch.no_grad():
        z = tiny.model(input_ids=torch.tensor([prompt])).logits[0, -1, ranker.label_token_ids]
    r = ranker.rank(QUERY, docs)  # three passages, one set: one comparison picks the top
    assert r.indices[0] == int(z.argmax()) and r.metadata["comparisons"] == 1


def test_tiny_model_batching_invariance(tiny, tok):
    docs = [Document(f"d{i} honey") for i in range(9)]
    queries = [QUERY, "why does a volcano erupt", "how does sourdough bread rise"]
    lists = [docs, docs[:5], docs[2:]]
    for aggregation in ("heapsort", "bubblesort"):
        together = SetwiseRanker(tiny, set_size=3, aggregation=aggregation, sort_top_k=4).rank_many(queries, lists)
        one_by_one = HFBackend(tiny.model, tok, batch_size=1)
        for q, ds, r in zip(queries, lists, together):
            alone = SetwiseRanker(one_by_one, set_size=3, aggregation=aggregation, sort_top_k=4).rank(q, ds)
            assert alone.indices == r.indices and alone.metadata == r.metadata
