"""Pairwise and setwise reranking with the real presets on a handful of passages (marked `model`).

The 135M preset cannot tell these passages apart reliably (its pairwise preferences sit near 0.5), so it is
held to the mechanics: label tokens, probabilities, accounting against the backend's own counts. The 0.5B
preset must get a few clear cases right.
"""

from __future__ import annotations

import os

import pytest

from conftest import require_preset
from llmrerank import Reranker

pytestmark = pytest.mark.model

PASSAGES = [
    "Pride and Prejudice is an 1813 novel of manners written by the English author Jane Austen.",
    "At sea level, pure water boils at 100 degrees Celsius (212 degrees Fahrenheit).",
    "Concrete floors cost between two and six dollars per square foot.",
    "The flea life cycle, from egg to adult, takes between two weeks and eight months.",
]
QUERIES = ["who wrote the novel pride and prejudice", "at what temperature does water boil"]  # passages 0 and 1


def threads() -> int:
    return min(2, os.cpu_count() or 1)


@pytest.fixture(scope="module")
def small():
    require_preset("smollm2-135m")
    return Reranker("pairwise", model="smollm2-135m", threads=threads())


def test_small_model_labels_probabilities_and_accounting(small):
    tok = small.backend.tokenizer
    assert small.opener == " " and tok.convert_ids_to_tokens(small.label_token_ids) == ["ĠA", "ĠB"]
    before = small.backend.stats.snapshot()
    r = small.rank(QUERIES[0], PASSAGES[:3])
    used = small.backend.stats.since(before)
    assert sorted(r.indices) == [0, 1, 2]
    assert sum(r.scores) == pytest.approx(3.0) and all(0.0 <= s <= 2.0 for s in r.scores)  # 3 pairs shared out
    m = r.metadata
    assert (m["comparisons"], m["llm_calls"], m["rounds"]) == (3, 6, 1)
    assert used["sequences"] == 6 and used["tokens"] + used["reused_tokens"] == m["prompt_tokens"]


def test_small_model_setwise_heapsort_shares_the_backend(small):
    setwise = Reranker("setwise", backend=small.backend, set_size=3, sort_top_k=2)
    before = small.backend.stats.snapshot()
    r = setwise.rank(QUERIES[1], PASSAGES)
    assert sorted(r.indices) == [0, 1, 2, 3] and r.scores == (4.0, 3.0, 2.0, 1.0)
    assert small.backend.stats.since(before)["sequences"] == r.metadata["llm_calls"] == r.metadata["comparisons"]


def test_base_model_gets_clear_cases_right():
    require_preset("qwen2.5-0.5b")
    pairwise = Reranker("pairwise", model="qwen2.5-0.5b", threads=threads())
    setwise = Reranker("setwise", backend=pairwise.backend, sort_top_k=1)  # four passages, one set: one prompt
    irrelevant = PASSAGES[2]
    pairs = pairwise.rank_many(QUERIES, [[irrelevant, PASSAGES[target]] for target in range(len(QUERIES))])
    assert [r.indices[0] for r in pairs] == [1, 1]
    assert all(r.scores[0] > 0.5 for r in pairs)
    best = setwise.rank_many(QUERIES, [PASSAGES] * len(QUERIES))
    assert [r.indices[0] for r in best] == [0, 1]
    assert [r.metadata["llm_calls"] for r in best] == [1, 1]
