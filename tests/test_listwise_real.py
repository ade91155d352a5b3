"""Listwise reranking with the real 0.5B preset on a handful of passages (marked `model`)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from conftest import require_preset
from llmrerank import Reranker
from llmrerank.rankers.listwise import ListwiseRanker
from llmrerank.rankers.permutation import find_identifiers

pytestmark = pytest.mark.model

QUERY = "who wrote the novel pride and prejudice"
PASSAGES = [
    "The flea life cycle, from egg to adult, takes between two weeks and eight months.",
    "Pride and Prejudice is an 1813 novel of manners written by the English author Jane Austen.",
    "At sea level, pure water boils at 100 degrees Celsius (212 degrees Fahrenheit).",
    "Jane Austen also wrote Sense and Sensibility, Emma and Persuasion.",
]


@pytest.fixture(scope="module")
def qwen():
    require_preset("qwen2.5-0.5b")
    return Reranker("listwise", model="qwen2.5-0.5b", window_size=4, step=2, threads=min(2, os.cpu_count() or 1))


def test_generation_parses_into_valid_identifiers_and_repairs_are_the_appended_ones(qwen):
    r = qwen.rank(QUERY, PASSAGES)
    (window,) = r.metadata["trace"]
    named = find_identifiers(window["output"])
    labels = ["1", "2", "3", "4"]
    assert named and all(x in labels for x in named), window["output"]
    appended = [x for x in labels if x not in named]
    assert window["missing"] == appended
    assert r.metadata["repairs_missing"] == len(appended)
    assert sorted(r.indices) == [0, 1, 2, 3]
    assert r.metadata["llm_calls"] == 1 and 0 < r.metadata["generated_tokens"] <= qwen._cap(4)


def test_first_on_the_real_model_is_one_forward_pass(qwen):
    first = Reranker("listwise", backend=qwen.backend, window_size=4, step=2, decoding="first")
    before = qwen.backend.stats.snapshot()
    r = first.rank(QUERY, PASSAGES)
    used = qwen.backend.stats.since(before)
    assert used["forward_calls"] == 1 and used["generated_tokens"] == 0
    assert sorted(r.indices) == [0, 1, 2, 3] and r.metadata["generated_tokens"] == 0


@pytest.mark.parametrize(("preset", "opener"), [("qwen2.5-0.5b", " ["), ("smollm2-135m", "[")])
def test_first_identifier_tokens_for_the_preset_tokenizers(preset, opener):
    from transformers import AutoTokenizer

    from llmrerank.models import resolve

    require_preset(preset)
    stub = SimpleNamespace(tokenizer=AutoTokenizer.from_pretrained(resolve(preset).folder))  # only the tokenizer
    # Qwen merges "[A" into one token at the start of the answer (but not "[O"), so FIRST opens with " [".
    ranker = ListwiseRanker(stub, window_size=20, step=10, decoding="first")
    assert ranker.opener == opener and len(set(ranker.label_token_ids)) == 20
    with pytest.raises(ValueError, match="not single known tokens.*identifiers='letters'"):
        ListwiseRanker(stub, window_size=20, step=10, decoding="first", identifiers="numbers")
