"""A few checks with the real packaged models on clear cases (marked `model`; CI installs the presets)."""

from __future__ import annotations

import os

import pytest

from conftest import require_preset
from llmrerank import Reranker
from llmrerank.models import cache_dir, resolve

pytestmark = pytest.mark.model

CASES = [
    (
        "how long is the life cycle of a flea",
        "The flea life cycle, from egg to adult, takes between two weeks and eight months depending on "
        "temperature and humidity.",
    ),
    (
        "what is the boiling point of water at sea level",
        "At sea level, pure water boils at 100 degrees Celsius (212 degrees Fahrenheit).",
    ),
    (
        "who wrote the novel pride and prejudice",
        "Pride and Prejudice is an 1813 novel of manners written by the English author Jane Austen.",
    ),
]


@pytest.fixture(scope="module")
def small():
    require_preset("smollm2-135m")
    return Reranker("likelihood", model="smollm2-135m", max_length=256, threads=min(2, os.cpu_count() or 1))


def test_preset_is_cached_as_a_plain_folder(small):
    src = resolve("smollm2-135m")
    assert src.gguf_file is None and (src.folder / "config.json").is_file()
    assert src.folder.parent == cache_dir()


@pytest.mark.parametrize("case", range(len(CASES)))
def test_likelihood_puts_the_relevant_passage_first(small, case):
    query, relevant = CASES[case]
    others = [p for i, (_, p) in enumerate(CASES) if i != case]
    ranking = small.rank(query, [*others, relevant])
    assert ranking.indices[0] == len(others), ranking


def test_answer_tokens_are_read_where_the_model_writes_them(small):
    """After a newline the model writes "yes"; after "Answer:" it writes " yes", another token."""
    from llmrerank.prompts import PromptTemplate

    tok = small.backend.tokenizer
    plain = Reranker("pointwise", backend=small.backend)
    assert tok.decode([plain.yes_id]) == "yes" and tok.decode([plain.no_id]) == "no"
    prefixed = Reranker(
        "pointwise",
        backend=small.backend,
        template=PromptTemplate(name="p", user="{query}\n{document}", assistant="Answer:"),
    )
    assert tok.decode([prefixed.yes_id]) == " yes" and tok.decode([prefixed.no_id]) == " no"
    assert prefixed.yes_id != plain.yes_id


def test_default_model_likelihood_ordering():
    require_preset("qwen2.5-0.5b")
    ranker = Reranker("likelihood", model="default", max_length=256)
    query, relevant = CASES[2]
    ranking = ranker.rank(query, [CASES[0][1], CASES[1][1], relevant])
    assert ranking.indices[0] == 2, ranking


@pytest.mark.parametrize("method", ["pointwise", "likelihood"])
def test_prefix_reuse_keeps_the_135m_scores_in_float32(method):
    """The 135M preset on DL19-like passages: the shared prefix (system prompt, instruction and query for the
    query-first pointwise template; the fixed instruction for likelihood) computed once gives the plain path's
    scores within 1e-4, and really is reused."""
    require_preset("smollm2-135m")
    threads = min(2, os.cpu_count() or 1)
    plain = Reranker(method, model="smollm2-135m", dtype="float32", reuse_prefix=False, threads=threads)
    reused = Reranker(method, model="smollm2-135m", dtype="float32", threads=threads)
    passages = [p for _, p in CASES] * 2
    for query, _ in CASES:
        assert reused.score(query, passages) == pytest.approx(plain.score(query, passages), abs=1e-4)
    assert reused.backend.stats.reused_tokens > 0 and plain.backend.stats.reused_tokens == 0


def test_compile_keeps_the_135m_scores_in_float32():
    """The 135M preset with its 30 layers' feed-forward blocks and norms compiled (and the final norm): the eager
    scores within 1e-4, passes with a reused prefix included."""
    require_preset("smollm2-135m")
    threads = min(2, os.cpu_count() or 1)
    eager = Reranker("pointwise", model="smollm2-135m", dtype="float32", threads=threads)
    compiled = Reranker("pointwise", model="smollm2-135m", dtype="float32", threads=threads, compile=True)
    assert compiled.backend.compiled == 30 * 3 + 1
    passages = [p for _, p in CASES] * 2
    for query, _ in CASES:
        assert compiled.score(query, passages) == pytest.approx(eager.score(query, passages), abs=1e-4)
    assert compiled.backend.stats.reused_tokens > 0
