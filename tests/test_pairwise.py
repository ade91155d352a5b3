"""Pairwise reranking end to end: a scripted model with known preferences, tiny random models, runs, the CLI.

The scripted backend is a test double for the model: it implements the Backend protocol's ``last_logits`` by
reading which documents a prompt shows under which label and answering with label logits from a known
preference table, so the averaging of both orders, the aggregation and the accounting are checked against
exactly known numbers.
"""

from __future__ import annotations

import json
import math
import string
from collections.abc import Callable, Sequence

import pytest
import torch

from conftest import TINY, make_model, make_tokenizer
from llmrerank import Document, Reranker
from llmrerank.backends.base import BackendStats
from llmrerank.backends.hf import HFBackend
from llmrerank.data import load_beir, load_run
from llmrerank.pipeline import rerank_run, sidecar_path
from llmrerank.prompts import PromptTooLongError
from llmrerank.rankers import LikelihoodRanker, PairwiseRanker
from llmrerank.registry import method_options

QUERY = "how do honey bees make honey"
EXTRA = [*string.ascii_uppercase, *(f"d{i}" for i in range(100))]
REL = [1, 4, 0, 3, 2]  # the worked examples of test_pairwise_sorting: item 1 best, then 3, 4, 0, 2


def letters_tokenizer():
    """conftest's word-level tokenizer with the labels A..Z and document words d0..d99 added."""
    return make_tokenizer(extra=EXTRA)


@pytest.fixture(scope="module")
def tok():
    return letters_tokenizer()


def docs_numbered(n: int) -> list[Document]:
    return [Document(f"d{i}", id=f"d{i}") for i in range(n)]


class ScriptedBackend:
    """The model replaced by a script: ``logits(shown)`` gives the label logits (A, B, ...) for a prompt that
    shows the documents ``shown`` (their numbers, in label order)."""

    def __init__(self, tokenizer, logits: Callable[[tuple[int, ...]], Sequence[float]]):
        self.tokenizer = tokenizer
        self.stats = BackendStats()
        self.logits = logits
        self.prompts: list[list[int]] = []
        self.calls: list[int] = []  # sequences per call

    def shown(self, seq: Sequence[int]) -> tuple[int, ...]:
        """The document numbers a prompt shows, in label order (``Passage A : " d3 " ...``)."""
        t = self.tokenizer.convert_ids_to_tokens(list(seq))
        found = []
        for i in range(len(t) - 2):
            if t[i] == "Passage" and t[i + 1] in string.ascii_uppercase and t[i + 2] == ":":
                word = next(w for w in t[i + 3 :] if w.startswith("d") and w[1:].isdigit())
                found.append(int(word[1:]))
        return tuple(found)

    def last_logits(self, sequences, grad: bool = False, columns=None) -> torch.Tensor:
        self.calls.append(len(sequences))
        rows = torch.zeros(len(sequences), len(self.tokenizer))
        for row, seq in zip(rows, sequences):
            self.prompts.append(list(seq))
            for label, z in zip(string.ascii_uppercase, self.logits(self.shown(seq))):
                row[self.tokenizer.convert_tokens_to_ids(label)] = float(z)
        return rows if columns is None else rows[:, list(columns)]

    def target_logprobs(self, prompts, targets, grad=False):  # pragma: no cover - not used here
        raise NotImplementedError

    def last_hidden(self, sequences, grad=False):  # pragma: no cover - not used here
        raise NotImplementedError

    def generate(self, sequences, max_new_tokens, stop_ids=None):  # pragma: no cover - not used here
        raise NotImplementedError


def table_logits(p_a: dict[tuple[int, int], float]) -> Callable[[tuple[int, ...]], list[float]]:
    """Label logits such that P(A | x shown as A, y as B) = ``p_a[(x, y)]`` exactly."""
    return lambda shown: [math.log(p_a[shown]), math.log(1.0 - p_a[shown])]


def relevance_logits(rel: Sequence[float], sure: float = 0.9) -> Callable[[tuple[int, ...]], list[float]]:
    """An unbiased judge: the more relevant of the two gets P = ``sure``, whichever position it is in."""

    def logits(shown):
        x, y = shown
        p = sure if rel[x] > rel[y] else 1.0 - sure
        return [math.log(p), math.log(1.0 - p)]

    return logits


# --- all pairs: exact arithmetic ----------------------------------------------------------------------------


def test_allpairs_averages_both_orders_and_sums_win_probabilities(tok):
    p_a = {(0, 1): 0.9, (1, 0): 0.3, (0, 2): 0.6, (2, 0): 0.6, (1, 2): 0.2, (2, 1): 0.7}
    backend = ScriptedBackend(tok, table_logits(p_a))
    r = PairwiseRanker(backend).rank(QUERY, docs_numbered(3))
    # P(0 beats 1) = (0.9 + 1 - 0.3) / 2 = 0.8; P(0 beats 2) = (0.6 + 0.4) / 2 = 0.5 (both orders said A: a
    # position conflict); P(1 beats 2) = (0.2 + 0.3) / 2 = 0.25.
    # sums: d0 = 0.8 + 0.5 = 1.3; d1 = 0.2 + 0.25 = 0.45; d2 = 0.5 + 0.75 = 1.25
    assert r.indices == (0, 2, 1) and r.ids == ("d0", "d2", "d1")
    assert r.scores == pytest.approx((1.3, 1.25, 0.45), abs=1e-6)
    assert sorted(backend.shown(p) for p in backend.prompts) == sorted(p_a)  # every pair in both orders
    assert backend.calls == [6]  # one batch
    m = r.metadata
    assert (m["comparisons"], m["llm_calls"], m["rounds"], m["memo_hits"], m["position_conflicts"]) == (3, 6, 1, 0, 1)
    assert m["prompt_tokens"] == m["tokens"] == sum(len(p) for p in backend.prompts)
    assert m["truncated"] == 0


def test_allpairs_pair_top_k_keeps_the_rest_below_in_input_order(tok):
    backend = ScriptedBackend(tok, relevance_logits([0, 1, 2, 9, 9]))
    r = PairwiseRanker(backend, pair_top_k=3).rank(QUERY, docs_numbered(5))
    # only d0..d2 are compared (0.9 / 0.1 both ways): d2 wins 1.8, d1 1.0, d0 0.2; d3, d4 follow at -1, -2
    assert r.indices == (2, 1, 0, 3, 4)
    assert r.scores == pytest.approx((1.8, 1.0, 0.2, -1.0, -2.0), abs=1e-6)
    assert r.metadata["comparisons"] == 3 and r.metadata["position_conflicts"] == 0


def test_position_bias_alone_cancels_out(tok):
    # a judge that says A with P = 0.8 whatever it is shown: every pair averages to 0.5, every pair conflicts
    r = PairwiseRanker(ScriptedBackend(tok, lambda shown: [math.log(0.8), math.log(0.2)])).rank(QUERY, docs_numbered(4))
    assert r.scores == pytest.approx((1.5,) * 4) and r.indices == (0, 1, 2, 3)
    assert r.metadata["position_conflicts"] == 6


def test_score_is_in_input_order(tok):
    ranker = PairwiseRanker(ScriptedBackend(tok, relevance_logits([0, 2, 1])))
    assert ranker.score(QUERY, docs_numbered(3)) == pytest.approx([0.2, 1.8, 1.0], abs=1e-6)


# --- sorting through the model ------------------------------------------------------------------------------


def shown_pairs(backend: ScriptedBackend) -> list[tuple[int, ...]]:
    """The comparisons asked, in order: every other prompt (the second is the same pair reversed)."""
    pairs = [backend.shown(p) for p in backend.prompts]
    assert all(b == a[::-1] for a, b in zip(pairs[::2], pairs[1::2]))
    return pairs[::2]


def test_heapsort_matches_the_worked_example(tok):
    backend = ScriptedBackend(tok, relevance_logits(REL))
    r = PairwiseRanker(backend, aggregation="heapsort", sort_top_k=2).rank(QUERY, docs_numbered(5))
    assert shown_pairs(backend) == [(1, 3), (1, 4), (0, 1), (1, 2), (0, 3), (3, 4), (3, 2), (4, 0)]
    assert r.indices == (1, 3, 0, 2, 4) and r.scores == (5.0, 4.0, 3.0, 2.0, 1.0)
    m = r.metadata
    # 8 comparisons, 16 prompts, each in its own round (a binary heap of 5 has one node per level); the
    # extraction's (4, 3) is answered from the memo
    assert (m["comparisons"], m["llm_calls"], m["rounds"], m["memo_hits"]) == (8, 16, 8, 1)
    assert backend.calls == [2] * 8


def test_bubblesort_matches_the_worked_example(tok):
    backend = ScriptedBackend(tok, relevance_logits(REL))
    r = PairwiseRanker(backend, aggregation="bubblesort", sort_top_k=2).rank(QUERY, docs_numbered(5))
    assert shown_pairs(backend) == [(3, 4), (2, 3), (1, 3), (0, 1), (2, 4), (0, 3)]
    assert r.indices == (1, 3, 0, 2, 4)
    assert (r.metadata["comparisons"], r.metadata["memo_hits"], r.metadata["rounds"]) == (6, 1, 6)


def test_rank_many_sends_every_querys_round_together(tok):
    backend = ScriptedBackend(tok, relevance_logits(list(range(20))))
    ranker = PairwiseRanker(backend, aggregation="heapsort", sort_top_k=3)
    sizes = [7, 5, 1, 0]
    many = ranker.rank_many([QUERY] * 4, [docs_numbered(n) for n in sizes])
    singles = []
    for n in sizes:
        alone = ScriptedBackend(tok, relevance_logits(list(range(20))))
        singles.append(
            (PairwiseRanker(alone, aggregation="heapsort", sort_top_k=3).rank(QUERY, docs_numbered(n)), alone)
        )
    for r, (single, _) in zip(many, singles):
        assert r.indices == single.indices and r.metadata == single.metadata
    # the first round: the 7-list's heap level of nodes 1 and 2 and the 5-list's node 1, both orders each
    assert backend.calls[0] == 2 * (2 + 1)
    assert len(backend.calls) == max(len(alone.calls) for _, alone in singles) < sum(len(a.calls) for _, a in singles)
    assert many[2].indices == (0,) and many[2].metadata["comparisons"] == 0 and many[3].indices == ()


# --- prompts, labels, options -------------------------------------------------------------------------------


def test_prompt_shows_the_query_both_passages_and_ends_with_the_answer_prefix(tok):
    backend = ScriptedBackend(tok, relevance_logits([0, 1]))
    PairwiseRanker(backend).rank(QUERY, [Document("d0", title="honey"), Document("d1 {query}")])
    text = tok.decode(backend.prompts[0])
    assert text.startswith("<|user|> Query : how do honey bees make honey Passage A")
    assert "Passage A : <unk> honey d0 <unk> Passage B : <unk> d1 <unk> query <unk> <unk>" in text
    assert text.endswith("<|assistant|> Passage")


def test_passages_are_cut_to_their_budget_and_lowered_to_fit(tok):
    long_docs = [Document(" ".join(f"d{i}" for i in range(j, j + 10))) for j in range(2)]
    backend = ScriptedBackend(tok, relevance_logits([0, 1]))
    r = PairwiseRanker(backend, passage_tokens=3).rank(QUERY, long_docs)
    assert r.metadata["truncated"] == 4  # both passages in both prompts
    fixed = len(backend.prompts[0]) - 2 * 3
    tight = PairwiseRanker(ScriptedBackend(tok, relevance_logits([0, 1])), passage_tokens=3, max_length=fixed + 4)
    rendered = tight.renderer.render(QUERY, [tight.renderer.passage_ids(d.text) for d in long_docs])
    assert len(rendered.ids) == fixed + 4 and rendered.truncated == 2  # each passage lowered to 2 tokens
    with pytest.raises(PromptTooLongError, match="no room for the passages"):
        PairwiseRanker(backend, max_length=fixed).rank(QUERY, long_docs)


def test_labels_must_be_single_distinct_tokens():
    plain = make_tokenizer()  # no A / B: both are the unknown token
    with pytest.raises(ValueError, match="single, distinct tokens.*'A', 'B' not single known tokens"):
        PairwiseRanker(ScriptedBackend(plain, lambda shown: [0.0, 0.0]))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"aggregation": "tournament"}, "unknown aggregation"),
        ({"sort_top_k": 5}, "sort_top_k applies to"),
        ({"aggregation": "heapsort", "pair_top_k": 5}, "pair_top_k applies to"),
        ({"aggregation": "heapsort", "sort_top_k": 0}, "at least 1"),
        ({"pair_top_k": 0}, "at least 1"),
        ({"passage_tokens": 0}, "passage_tokens must be positive"),
        ({"template": "nonesuch"}, "unknown comparison template"),
        ({"template": {"intro": "{query}", "outro": "?", "chat": "yes"}}, "field 'chat' must be bool, got str"),
        ({"template": {"intro": "{query}", "outro": 3}}, "field 'outro' must be str, got int"),
        ({"template": {"intro": "{query}", "outro": "?", "passage": "{passage}"}}, "must contain {id}"),
    ],
)
def test_bad_options(tok, options, message):
    with pytest.raises(ValueError, match=message):
        PairwiseRanker(ScriptedBackend(tok, lambda shown: [0.0, 0.0]), **options)


def test_registry_describe_and_template_file(tok, tmp_path):
    assert {"aggregation", "sort_top_k", "pair_top_k", "passage_tokens", "template"} <= set(method_options("pairwise"))
    backend = ScriptedBackend(tok, relevance_logits([0, 1, 2]))
    d = Reranker("pairwise", backend=backend, aggregation="bubblesort").describe()
    assert (d["method"], d["aggregation"], d["sort_top_k"], d["labels"], d["label_opener"]) == (
        "pairwise",
        "bubblesort",
        10,
        ["A", "B"],
        " ",
    )
    assert d["template"]["name"] == "prp" and "pair_top_k" not in d
    f = tmp_path / "mine.toml"
    f.write_text('intro = "Query: {query}"\noutro = "Which of the {num} is better?"\nchat = false\n')
    ranker = Reranker("pairwise", backend=backend, template=str(f))
    assert ranker.rank(QUERY, docs_numbered(3)).indices == (2, 1, 0)
    assert tok.decode(backend.prompts[-1]).startswith("Query : how do honey")
    assert ranker.renderer.text_pieces(QUERY, 2)[-1].endswith("Which of the 2 is better?\nPassage")


# --- tiny random models -------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def tiny(request, tok):
    return HFBackend(make_model(len(tok), request.param), tok, batch_size=4, name=f"tiny-{request.param}")


def test_tiny_model_probability_is_the_label_softmax_of_both_orders(tiny):
    ranker = PairwiseRanker(tiny)
    docs = [Document("honey bees make honey"), Document("the cat sat on the mat")]
    ids = [ranker.renderer.passage_ids(d.text) for d in docs]
    p_a = []
    for shown in (ids, ids[::-1]):
        prompt = ranker.renderer.render(QUERY, shown).ids
        with torch.no_grad():
            z = tiny.model(input_ids=torch.tensor([prompt])).logits[0, -1, ranker.label_token_ids]
        p_a.append(torch.softmax(z.double(), -1)[0].item())
    expected = (p_a[0] + 1 - p_a[1]) / 2
    assert ranker.score(QUERY, docs) == pytest.approx([expected, 1 - expected], abs=1e-5)


@pytest.mark.parametrize("aggregation", ["allpairs", "heapsort", "bubblesort"])
def test_tiny_model_batching_invariance(tiny, tok, aggregation):
    docs = [
        Document(t) for t in ("honey bees make honey", "why does a volcano erupt", "the cat sat", "bread rise", "d7")
    ]
    queries = [QUERY, "why does a volcano erupt"]
    options = (
        {"aggregation": aggregation} if aggregation == "allpairs" else {"aggregation": aggregation, "sort_top_k": 3}
    )
    together = PairwiseRanker(tiny, **options).rank_many(queries, [docs, docs[:4]])
    one_by_one = HFBackend(tiny.model, tok, batch_size=1)
    for q, ds, r in zip(queries, [docs, docs[:4]], together):
        alone = PairwiseRanker(one_by_one, **options).rank(q, ds)
        assert alone.indices == r.indices
        assert alone.scores == pytest.approx(r.scores, abs=1e-5)
        assert {k: v for k, v in alone.metadata.items() if k != "rounds"} == {
            k: v for k, v in r.metadata.items() if k != "rounds"
        }


@pytest.mark.parametrize(
    ("method", "options"), [("pairwise", {}), ("setwise", {"sort_top_k": 3, "set_size": 2})]
)
def test_a_reused_prefix_keeps_the_comparison_scores(tiny, tok, method, options):
    """The comparison prompts of one query share the instruction and the query: computed once and reused, the
    comparisons give the plain path's scores (within 1e-4) and the same order."""
    docs = [Document(t) for t in ("honey bees make honey", "why does a volcano erupt", "the cat sat", "bread", "d7")]
    docs += [Document(f"d{i} d{i + 1} honey") for i in range(10, 17)]  # heapsort's first rounds compare several sets
    reused = HFBackend(tiny.model, tok, batch_size=4, reuse_prefix=True)
    plain = HFBackend(tiny.model, tok, batch_size=4, reuse_prefix=False)
    query = " ".join([QUERY] * 8)  # a prefix long enough to be worth sharing between a round's two prompts
    got = Reranker(method, backend=reused, **options).rank(query, docs)
    want = Reranker(method, backend=plain, **options).rank(query, docs)
    assert reused.stats.reused_tokens > 0 and plain.stats.reused_tokens == 0
    assert got.indices == want.indices and got.scores == pytest.approx(want.scores, abs=1e-4)


# --- runs and cascades --------------------------------------------------------------------------------------


def _tail_below_head(run, head: int) -> bool:
    return all(
        min(s for _, s in items[:head]) > max((s for _, s in items[head:]), default=-math.inf) for items in run.values()
    )


@pytest.mark.parametrize("aggregation", ["allpairs", "heapsort"])
def test_two_stage_cascade_keeps_the_second_heads_above_the_tail(tmp_path, tok, aggregation):
    ds = load_beir(TINY)
    bm25 = load_run(TINY / "run.trec")
    backend = HFBackend(make_model(len(tok), "llama"), tok, batch_size=4)
    first, second = tmp_path / "mono.trec", tmp_path / "duo.trec"
    rerank_run(LikelihoodRanker(backend), ds.queries, ds.corpus, bm25, first, top_k=4, progress=False)
    mono = load_run(first)
    options = (
        {"aggregation": aggregation} if aggregation == "allpairs" else {"aggregation": aggregation, "sort_top_k": 2}
    )
    report = rerank_run(
        PairwiseRanker(backend, **options), ds.queries, ds.corpus, mono, second, top_k=2, progress=False
    )
    duo = load_run(second)
    for qid, items in mono.items():
        written = duo[qid]
        assert sorted(d for d, _ in written[:2]) == sorted(d for d, _ in items[:2])  # the head is mono's top 2
        assert [d for d, _ in written[2:]] == [d for d, _ in items[2:]]  # the tail is mono's, unchanged
        assert all(a[1] > b[1] for a, b in zip(written, written[1:]))  # strictly decreasing
    assert _tail_below_head(duo, 2)
    assert report.counts["comparisons"] == len(mono)  # one pair per query
    assert report.counts["llm_calls"] == 2 * len(mono)
    meta = json.loads(sidecar_path(second).read_text())
    assert meta["ranker"]["method"] == "pairwise" and meta["ranker"]["aggregation"] == aggregation
    assert set(meta["report"]["per_query"]) == set(mono)
    assert all(q["comparisons"] == 1 and q["prompt_tokens"] > 0 for q in meta["report"]["per_query"].values())


# --- the command line ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def letters_model_dir(tmp_path_factory, tok):
    """A tiny Llama with the letters tokenizer saved as a folder (Llama: see conftest.tiny_model_dir)."""
    folder = tmp_path_factory.mktemp("tiny-letters")
    make_model(len(tok), "llama").save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_cli_pairwise_and_setwise_flags(tmp_path, letters_model_dir, tiny_model_dir, capsys):
    from llmrerank.cli import main

    out = tmp_path / "pw.trec"
    base = ["rerank", "--data", str(TINY), "--run", str(TINY / "run.trec"), "--top-k", "3", "--quiet"]
    model = ["--model", str(letters_model_dir)]
    pw = [*base, *model, "--method", "pairwise"]
    assert (
        main([*pw, "--aggregation", "heapsort", "--sort-top-k", "2", "--passage-tokens", "8", "--out", str(out)]) == 0
    )
    meta = json.loads((tmp_path / "pw.trec.json").read_text())
    r = meta["ranker"]
    assert (r["aggregation"], r["sort_top_k"], r["passage_tokens"], r["max_length"]) == ("heapsort", 2, 8, 4096)
    assert meta["report"]["counts"]["llm_calls"] == 2 * meta["report"]["counts"]["comparisons"] > 0
    assert "comparisons=" in capsys.readouterr().err
    sw = tmp_path / "sw.trec"
    assert main([*base, *model, "--method", "setwise", "--set-size", "3", "--out", str(sw)]) == 0
    meta = json.loads((tmp_path / "sw.trec.json").read_text())
    assert (meta["ranker"]["set_size"], meta["ranker"]["aggregation"]) == (3, "heapsort")
    capsys.readouterr()
    assert main([*pw, "--set-size", "3", "--out", str(out)]) == 2
    assert "--set-size does not apply to --method pairwise" in capsys.readouterr().err
    assert main([*pw, "--aggregation", "heapsort", "--pair-top-k", "2", "--out", str(out)]) == 2
    assert "pair_top_k applies to aggregation='allpairs' only" in capsys.readouterr().err
    assert main([*base, "--model", str(tiny_model_dir), "--method", "pairwise", "--out", str(out)]) == 2
    assert "single, distinct tokens" in capsys.readouterr().err
