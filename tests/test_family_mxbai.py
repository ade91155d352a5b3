"""The mxbai-rerank-v2 family, held to the mxbai-rerank library's ``MxbaiRerankV2`` itself.

mxbai-rerank 0.1.6 calls ``tokenizer.prepare_for_model``, which transformers 5 removed, so it runs in the
peers' virtualenv (``bash benchmarks/peers/setup.sh``, transformers 4) as a subprocess
(``benchmarks/peers/family_reference.py``) on a tiny random Qwen2 model written here, over SmolLM2's packaged
tokenizer. The rendered ids must equal the library's and the scores agree within 1e-4. The test skips where the
virtualenv is absent, unless ``LLMRERANK_REQUIRE_PEERS`` is set (CI).
"""

from __future__ import annotations

import math

import pytest
import torch

from conftest import family_model, smollm2_tokenizer
from llmrerank.prompts import PromptRenderer, get_template
from llmrerank.prompts.families import MXBAI_RERANK_V2, MXBAI_RERANK_V2_TASK
from llmrerank.rankers.pointwise import PointwiseOptions, PointwiseRanker
from test_family_bge import LONG_QUERY, PAIRS, run_reference

PREFIX = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n"
)
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
CASES = [(None, 512), ("Find the passage that answers the question", 512), (None, 40)]


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    """A tiny random Qwen2 model over SmolLM2's packaged tokenizer, and its folder for the library."""
    from llmrerank.backends.hf import HFBackend

    tokenizer = smollm2_tokenizer()
    model = family_model("qwen2", len(tokenizer), max_position_embeddings=32768, tie_word_embeddings=False)
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)  # so that the answer logits differ clearly
    folder = tmp_path_factory.mktemp("tiny-qwen2")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, tokenizer, folder, HFBackend(model, tokenizer, batch_size=2, name="tiny-qwen2")


@pytest.fixture(scope="module")
def mxbai(qwen2):
    """MxbaiRerankV2's ids and scores for each case (one subprocess)."""
    runs = [{"pairs": PAIRS, "max_length": m, "instruction": i} for i, m in CASES]
    return run_reference({"reference": "mxbai_v2", "model": str(qwen2[2]), "runs": runs})


@pytest.mark.model
@pytest.mark.parametrize(("case", "instruction", "max_length"), [(n, *c) for n, c in enumerate(CASES)])
def test_mxbai_rerank_v2_renders_and_scores_as_the_library(qwen2, mxbai, case, instruction, max_length):
    model, tokenizer, folder, backend = qwen2
    want = mxbai[case]
    options = {"instruction": instruction} if instruction else {}
    ranker = PointwiseRanker(backend, family="mxbai-rerank-v2", max_length=max_length, **options)
    got_ids = [list(e.prompt) for q, d in PAIRS for e in ranker.encode(q, [d])]
    assert got_ids == want["ids"]  # token for token, the cut ones included
    prefix = tokenizer(PREFIX, add_special_tokens=False)["input_ids"]
    if max_length == 40:
        query_line = tokenizer("query: " + LONG_QUERY, add_special_tokens=False)["input_ids"]
        assert got_ids[-1][len(prefix) : len(prefix) + 30] == query_line[:30]  # cut to 3/4 of max_length
        assert all(ranker.encode(q, [d])[0].truncated for q, d in PAIRS[3:])
        assert all(len(ids) <= 40 + len(ranker.renderer.parts("q").tail) + len(prefix) for ids in got_ids)
    if instruction:
        shown = tokenizer(f"instruction: {instruction}\n", add_special_tokens=False)["input_ids"]
        assert got_ids[0][len(prefix) : len(prefix) + len(shown)] == shown
    assert [ranker.yes_id, ranker.no_id] == [want["yes_id"], want["no_id"]]
    got = [s for q, d in PAIRS for s in ranker.score(q, [d])]
    assert max(abs(a - b) for a, b in zip(got, want["scores"])) <= 1e-4
    # the relevance the server answers: the sigmoid of the logit difference, P("1") over the pair ("0", "1")
    ranking = ranker.rank(PAIRS[0][0], [PAIRS[0][1]])
    assert abs(ranker.relevance(ranking)[0] - 1 / (1 + math.exp(-want["scores"][0]))) <= 1e-4


def test_the_family_sets_the_librarys_options():
    options = PointwiseOptions.build({"family": "mxbai-rerank-v2"})
    assert options.template == MXBAI_RERANK_V2 and options.tokens == ("1", "0")
    assert (options.answer_ids, options.normalisation, options.head) == ("encoded", "logit", "tokens")
    assert PointwiseOptions.build(options.to_dict()) == options
    assert get_template("mxbai-rerank-v2", "prompt") == MXBAI_RERANK_V2
    with_instruction = PointwiseOptions.build({"family": "mxbai-rerank-v2", "instruction": "Find code"})
    assert PointwiseOptions.build(with_instruction.to_dict()) == with_instruction
    with pytest.raises(ValueError, match="family 'mxbai-rerank-v2' fixes tokens"):
        PointwiseOptions.build({"family": "mxbai-rerank-v2", "tokens": "yes_no"})


def test_the_instruction_line_is_shown_only_when_given(tokenizer):
    renderer = PromptRenderer(MXBAI_RERANK_V2, tokenizer, max_length=512)
    head, tail = renderer.text_around_document("how")
    assert (head, tail) == (PREFIX + "query: how\ndocument: ", "\n" + MXBAI_RERANK_V2_TASK + SUFFIX)
    options = PointwiseOptions.build({"family": "mxbai-rerank-v2", "instruction": "Find code"})
    head, _ = PromptRenderer(options.template, tokenizer, max_length=512).text_around_document("how")
    assert head == PREFIX + "instruction: Find code\nquery: how\ndocument: "
