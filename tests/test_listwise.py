"""Listwise reranking end to end: a scripted model with exactly known answers, tiny random models, the CLI.

The scripted backend is a test double for the model (it implements the Backend protocol's ``generate`` and
``last_logits`` from fixed answers or from a known relevance), so the sliding loop, the repairs and the
accounting are checked against exactly known final orders.
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence

import pytest
import torch

from conftest import TINY, make_model, make_tokenizer
from llmrerank import Document, Reranker
from llmrerank.backends.base import BackendStats
from llmrerank.backends.hf import HFBackend
from llmrerank.prompts import PromptTooLongError
from llmrerank.rankers.listwise import COUNTERS, ListwiseRanker
from llmrerank.rankers.permutation import find_identifiers, plan_windows
from llmrerank.registry import method_options

QUERY = "how do honey bees make honey"
EXTRA = ["[", "]", ">", *(str(i) for i in range(1, 21)), *string.ascii_uppercase, *(f"d{i}" for i in range(100))]


def listwise_tokenizer():
    """conftest's word-level tokenizer with brackets, identifiers and document words d0..d99 added."""
    return make_tokenizer(extra=EXTRA)


@pytest.fixture(scope="module")
def tok():
    return listwise_tokenizer()


def docs_numbered(n: int) -> list[Document]:
    return [Document(f"d{i}", id=f"d{i}") for i in range(n)]


class ScriptedBackend:
    """The model replaced by fixed answers (``answers``, one per window in call order) or, without them, by an
    oracle that orders each window by ``relevance`` of the document words it finds after each identifier."""

    def __init__(self, tokenizer, answers: Sequence[str] | None = None, relevance=None):
        self.tokenizer = tokenizer
        self.stats = BackendStats()
        self.answers = list(answers) if answers is not None else None
        self.relevance = relevance or (lambda word: int(word[1:]))
        self.prompts: list[list[int]] = []
        self.outputs: list[list[int]] = []
        self.calls: list[int] = []  # batch size of each call

    def window(self, seq: Sequence[int]) -> list[tuple[str, str]]:
        """(identifier, document word) pairs shown in a prompt, in order."""
        t = self.tokenizer.convert_ids_to_tokens(list(seq))
        return [
            (t[i + 1], t[i + 3])
            for i in range(len(t) - 3)
            if t[i] == "[" and t[i + 2] == "]" and t[i + 3].startswith("d") and t[i + 3][1:].isdigit()
        ]

    def generate(self, sequences, max_new_tokens, stop_ids=None) -> list[list[int]]:
        caps = [max_new_tokens] * len(sequences) if isinstance(max_new_tokens, int) else list(max_new_tokens)
        self.calls.append(len(sequences))
        out = []
        for seq, cap in zip(sequences, caps):
            if self.answers is not None:
                text = self.answers.pop(0)
            else:
                shown = sorted(self.window(seq), key=lambda pair: -self.relevance(pair[1]))
                text = " > ".join(f"[{label}]" for label, _ in shown)
            ids = [*self.tokenizer(text, add_special_tokens=False)["input_ids"], self.tokenizer.eos_token_id][:cap]
            self.prompts.append(list(seq))
            self.outputs.append(ids)
            out.append(ids)
        return out

    def last_logits(self, sequences, grad: bool = False, columns=None) -> torch.Tensor:
        self.calls.append(len(sequences))
        rows = torch.zeros(len(sequences), len(self.tokenizer))
        for row, seq in zip(rows, sequences):
            self.prompts.append(list(seq))
            for label, word in self.window(seq):
                row[self.tokenizer.convert_tokens_to_ids(label)] = float(self.relevance(word))
        return rows if columns is None else rows[:, list(columns)]

    def target_logprobs(self, prompts, targets, grad=False):  # pragma: no cover - not used by listwise
        raise NotImplementedError

    def last_hidden(self, sequences, grad=False):  # pragma: no cover - not used by listwise
        raise NotImplementedError


# --- the sliding loop against exactly known orders ----------------------------------------------------------


def test_fixed_answers_with_repairs_give_the_exact_final_order(tok):
    backend = ScriptedBackend(tok, answers=["[3] > [1] > [2]", "[3] > [3] > [9]"])
    ranker = ListwiseRanker(backend, window_size=3, step=2)
    r = ranker.rank(QUERY, docs_numbered(5))
    # windows (2, 5) then (0, 3). First: [d2 d3 d4] -> [d4 d2 d3]; the list is d0 d1 d4 d2 d3.
    # Second shows [1]=d0 [2]=d1 [3]=d4 and names [3] twice and an unknown [9]: d4, then d0 d1 appended.
    assert [backend.window(p) for p in backend.prompts] == [
        [("1", "d2"), ("2", "d3"), ("3", "d4")],
        [("1", "d0"), ("2", "d1"), ("3", "d4")],
    ]
    assert r.indices == (4, 0, 1, 2, 3)
    assert r.ids == ("d4", "d0", "d1", "d2", "d3")
    assert r.scores == (5.0, 4.0, 3.0, 2.0, 1.0)
    m = r.metadata
    assert (m["llm_calls"], m["repairs_missing"], m["repairs_duplicate"], m["repairs_unknown"]) == (2, 2, 1, 1)
    assert m["repairs"] == 4 and m["windows_repaired"] == 1
    assert m["windows_unchanged"] == 0
    assert m["prompt_tokens"] == sum(len(p) for p in backend.prompts)
    assert m["generated_tokens"] == sum(len(o) for o in backend.outputs)
    assert m["tokens"] == m["prompt_tokens"] + m["generated_tokens"]
    assert m["trace"][1] == {
        "start": 0,
        "end": 3,
        "order": [2, 0, 1],
        "output": "[ 3 ] > [ 3 ] > [ 9 ]",
        "missing": ["1", "2"],
        "duplicates": ["3"],
        "unknown": ["9"],
    }


def test_score_is_n_minus_rank_in_input_order(tok):
    ranker = ListwiseRanker(ScriptedBackend(tok, answers=["[3] > [1] > [2]"]), window_size=3, step=2)
    assert ranker.score(QUERY, docs_numbered(3)) == [2.0, 1.0, 3.0]


def reversed_100() -> list[int]:
    # Input d0..d99, d99 the most relevant. (80,100) sorts 99..80; each next window takes the carried 99..90
    # up and sorts its new ten below them, so the end order is 99..90, 9..0, 19..10, ..., 89..80.
    return [*range(99, 89, -1), *(x for b in range(0, 90, 10) for x in range(b + 9, b - 1, -1))]


@pytest.mark.parametrize("decoding", ["generate", "first"])
@pytest.mark.parametrize("template", ["rankzephyr-paraphrase", "rankgpt"])
def test_100_candidates_one_pass_exact_order(tok, decoding, template):
    backend = ScriptedBackend(tok)
    ranker = ListwiseRanker(backend, window_size=20, step=10, decoding=decoding, template=template)
    r = ranker.rank(QUERY, docs_numbered(100))
    assert list(r.indices) == reversed_100()
    assert r.metadata["llm_calls"] == 9 and r.metadata["repairs"] == 0
    assert [(t["start"], t["end"]) for t in r.metadata["trace"]] == plan_windows(100, 20, 10)
    if decoding == "first":
        assert r.metadata["generated_tokens"] == 0 and ranker.opener == "["


@pytest.mark.parametrize("decoding", ["generate", "first"])
def test_25_candidates_one_and_two_passes(tok, decoding):
    one = ListwiseRanker(ScriptedBackend(tok), decoding=decoding).rank(QUERY, docs_numbered(25))
    # (5,25) sorts 24..5; (0,15) holds d0..d4 and 24..15 -> 24..15, 4..0; 14..5 stay below.
    assert list(one.indices) == [*range(24, 14, -1), *range(4, -1, -1), *range(14, 4, -1)]
    two = ListwiseRanker(ScriptedBackend(tok), decoding=decoding, passes=2).rank(QUERY, docs_numbered(25))
    assert list(two.indices) == list(range(24, -1, -1))
    assert two.metadata["llm_calls"] == 4
    # the second pass's front window (0,15) shows 24..10, already in order: the only window left unchanged
    assert one.metadata["windows_unchanged"] == 0 and two.metadata["windows_unchanged"] == 1


def test_a_model_that_copies_the_input_order_is_counted(tok):
    backend = ScriptedBackend(tok, answers=["[1] > [2] > [3]", "[1] > [2] > [3]"])
    r = ListwiseRanker(backend, window_size=3, step=2).rank(QUERY, docs_numbered(5))
    assert r.indices == (0, 1, 2, 3, 4)
    assert r.metadata["windows_unchanged"] == 2 and r.metadata["repairs"] == 0


def test_rank_many_batches_the_kth_windows_of_all_queries(tok):
    backend = ScriptedBackend(tok)
    ranker = ListwiseRanker(backend, window_size=20, step=10)
    sizes = [100, 25, 1, 0]
    many = ranker.rank_many([QUERY] * 4, [docs_numbered(n) for n in sizes])
    assert backend.calls == [2, 2, *[1] * 7]  # 100 candidates: 9 windows; 25: 2; one or none: no call
    for n, r in zip(sizes, many):
        single = ListwiseRanker(ScriptedBackend(tok), window_size=20, step=10).rank(QUERY, docs_numbered(n))
        assert r.indices == single.indices and r.metadata["llm_calls"] == single.metadata["llm_calls"]
    assert many[2].indices == (0,) and many[2].scores == (1.0,) and many[3].indices == ()


def test_pipeline_reports_the_listwise_accounting(tok, tmp_path):
    from llmrerank.pipeline import rerank_run, sidecar_path

    corpus = {d.id: d for d in docs_numbered(30)}
    run = {"q1": [(f"d{i}", 30.0 - i) for i in range(30)], "q2": [(f"d{i}", 5.0 - i) for i in range(5)]}
    ranker = ListwiseRanker(ScriptedBackend(tok), window_size=4, step=2)
    out = tmp_path / "lw.trec"
    report = rerank_run(ranker, {"q1": QUERY, "q2": QUERY}, corpus, run, out, top_k=10, progress=False)
    # q1: top 10 -> windows (6,10) (4,8) (2,6) (0,4); q2: 5 candidates -> (1,5) (0,3)
    assert report.per_query["q1"]["llm_calls"] == 4 and report.per_query["q2"]["llm_calls"] == 2
    assert report.counts["llm_calls"] == 6 and report.counts["repairs"] == 0
    assert report.tokens == report.counts["prompt_tokens"] + report.counts["generated_tokens"]
    assert "llm_calls=6" in report.summary()
    meta = json.loads(sidecar_path(out).read_text())
    assert meta["ranker"]["method"] == "listwise" and meta["ranker"]["window_size"] == 4
    assert meta["report"]["per_query"]["q2"]["generated_tokens"] > 0
    assert set(COUNTERS) <= set(meta["report"]["counts"])


# --- rendering: identifiers, truncation, budgets ------------------------------------------------------------


def test_prompt_shows_every_passage_with_its_identifier_and_the_example(tok):
    backend = ScriptedBackend(tok)
    ranker = ListwiseRanker(backend, window_size=5, step=2, identifiers="letters")
    pieces = ranker.renderer.text_pieces(QUERY, ranker.labels)
    assert len(pieces) == 6 and pieces[1].startswith("\n[B] ")
    assert "for example [D] > [B]" in pieces[-1] and "Rank the 5 passages" in pieces[-1]
    assert pieces[-1].endswith("<|assistant|> ")
    multi = ListwiseRanker(backend, window_size=3, step=2, template="rankgpt")
    text = "".join(multi.renderer.text_pieces(QUERY, ["1", "2", "3"]))
    assert text.count("<|user|>") == 5 and "Received passage [3]." in text


def test_titles_and_braces_are_shown_literally(tok):
    backend = ScriptedBackend(tok)
    ranker = ListwiseRanker(backend, window_size=2, step=1)
    ranker.rank("d1 {num} {passage}", [Document("d2", title="d1"), Document("{query} d3")])
    text = tok.decode(backend.prompts[0])
    assert "[ 1 ] d1 d2 [ 2 ] <unk> query <unk> d3" in text  # the title, then the text; "{" is an unknown word
    assert "{query}" not in "".join(ranker.renderer.text_pieces("x", ["1", "2"]))
    pieces = ranker.renderer.text_pieces("a {num} b", ["1", "2"])
    assert "a {num} b" in pieces[0] and "a {num} b" in pieces[-1]


def test_passages_are_cut_to_their_budget_and_lowered_to_fit(tok):
    long_docs = [Document(" ".join(f"d{i}" for i in range(j, j + 10))) for j in range(4)]
    backend = ScriptedBackend(tok)
    r = ListwiseRanker(backend, window_size=4, step=2, passage_tokens=3).rank(QUERY, long_docs)
    assert r.metadata["truncated"] == 4
    fixed = len(backend.prompts[0]) - 4 * 3
    cap = ListwiseRanker(backend, window_size=4, step=2)._cap(4)
    tight = ListwiseRanker(ScriptedBackend(tok), window_size=4, step=2, max_length=fixed + cap + 9)
    rendered = tight.renderer.render(QUERY, long_docs, tight.labels, tight._cap(4))
    assert rendered.passage_budget == 2 and len(rendered.ids) + tight._cap(4) <= tight.max_length
    with pytest.raises(PromptTooLongError, match="no room for the passages"):
        ListwiseRanker(ScriptedBackend(tok), window_size=4, step=2, max_length=fixed).rank(QUERY, long_docs)


def test_generation_is_capped_to_a_full_permutation(tok):
    backend = ScriptedBackend(tok, answers=["[1] > [2] > [3] > [4] > [1] > [2] > [3] > [4]"])
    r = ListwiseRanker(backend, window_size=4, step=2).rank(QUERY, docs_numbered(4))
    full = len(tok("[1] > [2] > [3] > [4]", add_special_tokens=False)["input_ids"])
    assert len(backend.outputs[0]) == full + 2 and r.metadata["repairs_duplicate"] == 0  # cut before repeating
    fixed = ListwiseRanker(ScriptedBackend(tok, answers=["[2] > [1]"]), window_size=2, step=1, max_new_tokens=3)
    assert fixed.rank(QUERY, docs_numbered(2)).metadata["trace"][0]["missing"] == ["1"]


# --- start-up checks and options ----------------------------------------------------------------------------


def test_first_needs_single_distinct_identifier_tokens(tok):
    backend = ScriptedBackend(tok)
    ListwiseRanker(backend, window_size=20, step=10, decoding="first", identifiers="numbers")  # 1..20 are words
    with pytest.raises(ValueError, match="single, distinct token.*identifiers='letters'"):
        ListwiseRanker(backend, window_size=25, step=10, decoding="first", identifiers="numbers")  # 21.. unknown
    with pytest.raises(ValueError, match="up to 26"):
        ListwiseRanker(backend, window_size=27, step=10, decoding="first")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"decoding": "beam"}, "unknown decoding"),
        ({"passes": 0}, "passes must be at least 1"),
        ({"step": 30}, "may not exceed"),
        ({"window_size": 1}, "at least 2"),
        ({"identifiers": "roman"}, "unknown identifiers"),
        ({"decoding": "first", "max_new_tokens": 10}, "'generate' only"),
        ({"max_new_tokens": 0}, "at least 1"),
        ({"passage_tokens": 0}, "passage_tokens must be positive"),
        ({"template": "nonesuch"}, "unknown listwise template"),
    ],
)
def test_bad_options(tok, options, message):
    with pytest.raises(ValueError, match=message):
        ListwiseRanker(ScriptedBackend(tok), **options)


def test_registry_and_describe(tok):
    assert {"window_size", "step", "passes", "decoding", "identifiers", "passage_tokens"} <= set(
        method_options("listwise")
    )
    r = Reranker("listwise", backend=ScriptedBackend(tok), window_size=6, step=3, decoding="first")
    d = r.describe()
    assert (d["method"], d["decoding"], d["window_size"], d["step"], d["identifiers"]) == (
        "listwise",
        "first",
        6,
        3,
        "letters",
    )
    assert d["template"]["name"] == "rankzephyr-paraphrase" and d["answer_opener"] == "["


def test_template_from_a_file(tok, tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text('intro = "Query: {query}"\noutro = "Order the {num} passages, e.g. {example}."\nchat = false\n')
    backend = ScriptedBackend(tok)
    r = ListwiseRanker(backend, template=str(f), window_size=3, step=2).rank(QUERY, docs_numbered(3))
    assert r.indices == (2, 1, 0)
    assert tok.decode(backend.prompts[0]).startswith("Query : how do honey bees")


# --- tiny random models -------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def tiny(request, tok):
    return HFBackend(make_model(len(tok), request.param), tok, batch_size=4, name=f"tiny-{request.param}")


def test_tiny_model_generation_is_a_repaired_permutation_with_exact_accounting(tiny):
    ranker = ListwiseRanker(tiny, window_size=4, step=2)
    docs = docs_numbered(7)
    r = ranker.rank(QUERY, docs)
    assert sorted(r.indices) == list(range(7))
    m, trace = r.metadata, r.metadata["trace"]
    assert m["llm_calls"] == len(trace) == len(plan_windows(7, 4, 2))
    for t in trace:
        labels = ranker.labels[: t["end"] - t["start"]]
        named = find_identifiers(t["output"])
        assert t["unknown"] == [x for x in named if x not in labels]
        assert t["missing"] == [x for x in labels if x not in named]
    assert m["repairs_missing"] == sum(len(t["missing"]) for t in trace)
    assert m["repairs"] == m["repairs_missing"] + m["repairs_duplicate"] + m["repairs_unknown"]
    assert m["generated_tokens"] <= sum(ranker._cap(t["end"] - t["start"]) for t in trace)
    assert ranker.rank_many([QUERY, QUERY], [docs, docs[:3]])[0].indices == r.indices


def test_tiny_model_first_orders_by_the_identifier_logits(tiny):
    ranker = ListwiseRanker(tiny, window_size=5, step=2, decoding="first")
    docs = docs_numbered(5)
    prompt = ranker.renderer.render(QUERY, docs, ranker.labels, 0, ranker.opener).ids
    with torch.no_grad():
        logits = tiny.model(input_ids=torch.tensor([prompt])).logits[0, -1]
    scores = logits[ranker.label_token_ids].tolist()
    r = ranker.rank(QUERY, docs)
    assert list(r.indices) == sorted(range(5), key=lambda i: -scores[i])
    assert r.metadata["prompt_tokens"] == len(prompt) and r.metadata["generated_tokens"] == 0


# --- the command line ---------------------------------------------------------------------------------------


def test_cli_listwise_flags(tmp_path, tiny_model_dir, capsys):
    from llmrerank.cli import main

    out = tmp_path / "lw.trec"
    base = ["rerank", "--data", str(TINY), "--run", str(TINY / "run.trec"), "--model", str(tiny_model_dir)]
    lw = [*base, "--method", "listwise", "--top-k", "4", "--window-size", "3", "--step", "2"]
    assert main([*lw, "--passes", "2", "--max-new-tokens", "4", "--out", str(out), "--quiet"]) == 0
    meta = json.loads((tmp_path / "lw.trec.json").read_text())
    assert (meta["ranker"]["window_size"], meta["ranker"]["passes"], meta["ranker"]["max_length"]) == (3, 2, 4096)
    assert meta["report"]["counts"]["llm_calls"] == 3 * 4  # 3 queries x 2 windows x 2 passes
    assert "llm_calls=12" in capsys.readouterr().err
    # conftest's tokenizer has no letter tokens: FIRST refuses at start-up, in one line
    assert main([*lw, "--decoding", "first", "--out", str(out), "--quiet"]) == 2
    assert "single, distinct token" in capsys.readouterr().err
    assert main([*base, "--window-size", "3", "--out", str(out)]) == 2
    assert "--window-size does not apply to --method pointwise" in capsys.readouterr().err
