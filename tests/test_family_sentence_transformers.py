"""The qwen3-reranker family, held to sentence-transformers' causal-LM CrossEncoder (checked with 6.3.0).

How sentence-transformers 6.3.0 scores a (query, document) pair with a causal LM, read from its source:

- ``CrossEncoder(folder)`` over a ``*ForCausalLM`` config builds a ``Transformer`` module with
  ``transformer_task="text-generation"`` (the tokenizer padded on the left) and ``LogitScore(true, false)``
  with the vocabulary ids of the tokens ``"yes"`` and ``"no"``: the score is ``logit[yes] - logit[no]`` at the
  last position, and ``predict`` applies its default activation, a sigmoid (num_labels is 1).
- Where the tokenizer has a chat template, a text pair becomes two messages, ``{"role": "query"}`` and
  ``{"role": "document"}``, rendered by that template and tokenised whole (no special tokens added,
  ``add_generation_prompt`` not set): sentence-transformers adds no text of its own, so the model's template
  *is* its prompt. A ``prompt`` given to ``predict`` becomes a ``{"role": "system"}`` message before them.
- Truncation cuts the rendered ids to ``max_length`` and then writes the template's tail (the common token
  suffix of two renders with different fillers) back over the last tokens of every cut row.

Qwen/Qwen3-Reranker-0.6B ships that template (``chat_template.jinja``, its sentence-transformers integration;
sentence-transformers' documentation loads that model this way): the model card's system message and
``<Instruct>/<Query>/<Document>`` user message with the system message's content as the instruction (the card's
default instruction without one) and the empty think block after the assistant turn.
``QWEN3_RERANKER_ST_TEMPLATE`` below is that file, reproduced as interface data. With it
installed on SmolLM2's packaged tokenizer over a tiny random Qwen3 model, sentence-transformers serves the
qwen3-reranker family exactly: the rendered ids are equal token for token (a cut document included), its raw
``LogitScore`` is our ``logit`` normalisation ``z_yes - z_no``, our ``pair_softmax`` score is the log-sigmoid
of it, and its default ``predict`` (the sigmoid) is the P(yes) our ``relevance`` answers. (Its cut, like the
card's, is the rendered text's, so it differs from the family's, which cuts only the document, when the query
alone leaves no room for the document; these pairs do not test that case.)
"""

from __future__ import annotations

import math

import pytest
import torch

from conftest import family_model, needs, smollm2_tokenizer
from llmrerank.prompts.families import QWEN3_RERANKER_INSTRUCTION
from llmrerank.rankers.pointwise import PointwiseRanker
from test_families import PAIRS

needs(
    "sentence_transformers.cross_encoder.modules.logit_score",
    "parity with sentence-transformers' causal-LM CrossEncoder",
    "pip install sentence-transformers (a release with cross_encoder.modules.LogitScore; checked with 6.3.0)",
)

# Qwen/Qwen3-Reranker-0.6B's chat_template.jinja (its sentence-transformers integration), character for
# character as two public copies quote it (the repository itself is not reachable offline). Jinja drops the one
# trailing newline, so a render ends with the card's "</think>\n\n".
QWEN3_RERANKER_ST_TEMPLATE = (
    '{%- set instruction = messages | selectattr("role", "eq", "system") | map(attribute="content") | first '
    '| default("Given a web search query, retrieve relevant passages that answer the query") -%}\n'
    '{%- set query_text = messages | selectattr("role", "eq", "query") | map(attribute="content") | first -%}\n'
    '{%- set document_text = messages | selectattr("role", "eq", "document") | map(attribute="content") '
    "| first -%}\n"
    "<|im_start|>system\n"
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. Note that "
    'the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n"
    "<Instruct>: {{ instruction }}\n"
    "<Query>: {{ query_text }}\n"
    "<Document>: {{ document_text }}<|im_end|>\n"
    "<|im_start|>assistant\n"
    "<think>\n\n</think>\n\n\n"
)

# max_length 105 cuts the longest pair (112 tokens) only: a batch where one row's suffix is written back.
CASES = [(None, 512), ("Find the passage that answers it", 512), (None, 105)]


def log_sigmoid(d: float) -> float:
    """log P(yes) under the softmax over (no, yes), from d = z_yes - z_no: -log(1 + e^-d)."""
    return -math.log1p(math.exp(-d))


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    """A tiny random Qwen3 model over SmolLM2's tokenizer; its folder carries Qwen3-Reranker's template."""
    from llmrerank.backends.hf import HFBackend

    tokenizer = smollm2_tokenizer()
    model = family_model("qwen3", len(tokenizer), max_position_embeddings=2048)
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)  # so that the answer logits differ clearly
    folder = tmp_path_factory.mktemp("tiny-qwen3-st")
    model.save_pretrained(folder)
    st_tokenizer = smollm2_tokenizer()
    st_tokenizer.chat_template = QWEN3_RERANKER_ST_TEMPLATE
    st_tokenizer.save_pretrained(folder)
    # The family renders its own text, so our backend keeps SmolLM2's own tokenizer and chat template.
    return tokenizer, folder, HFBackend(model, tokenizer, batch_size=3, name="tiny-qwen3")


@pytest.mark.model
@pytest.mark.parametrize(("instruction", "max_length"), CASES)
def test_qwen3_reranker_renders_and_scores_as_sentence_transformers(qwen3, instruction, max_length):
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.modules.logit_score import LogitScore

    tokenizer, folder, backend = qwen3
    cross = CrossEncoder(str(folder), max_length=max_length, device="cpu")
    transformer, head = cross[0], cross[1]
    # The path under test: a causal LM, pairs through the chat template, the vocabulary's "yes" and "no".
    assert transformer.transformer_task == "text-generation" and "message" in transformer.modality_config
    assert isinstance(head, LogitScore) and len(cross) == 2

    options = {"instruction": instruction} if instruction else {}
    ranker = PointwiseRanker(backend, family="qwen3-reranker", max_length=max_length, **options)
    assert (ranker.yes_id, ranker.no_id) == (head.true_token_id, head.false_token_id)

    features = cross.preprocess(PAIRS, prompt=instruction)
    want_ids = [row[mask.bool()].tolist() for row, mask in zip(features["input_ids"], features["attention_mask"])]
    assert (features["attention_mask"][:, -1] == 1).all()  # left padded
    got_ids = [list(e.prompt) for q, d in PAIRS for e in ranker.encode(q, [d])]
    assert got_ids == want_ids
    cut = [ranker.encode(q, [d])[0].truncated for q, d in PAIRS]
    assert cut == [len(ids) == max_length for ids in want_ids] and any(cut) == (max_length == 105)
    if instruction is None:  # the template's default instruction is the family's
        assert tokenizer.decode(want_ids[0]).count(f"<Instruct>: {QWEN3_RERANKER_INSTRUCTION}\n") == 1

    # LogitScore's raw score, z_yes - z_no: our "logit" normalisation.
    raw = cross.predict(PAIRS, prompt=instruction, activation_fn=torch.nn.Identity()).tolist()
    variants = {n: [] for n in ("logit", "pair_softmax")}
    for q, d in PAIRS:
        one = ranker.score_variants(q, [d])
        for n in variants:
            variants[n] += one[n]
    assert max(abs(a - b) for a, b in zip(variants["logit"], raw)) <= 1e-4
    # The family's score, log P(yes) over (no, yes), is the log-sigmoid of it.
    family = [s for q, d in PAIRS for s in ranker.score(q, [d])]
    assert family == pytest.approx(variants["pair_softmax"], abs=1e-6)
    assert max(abs(a - log_sigmoid(b)) for a, b in zip(family, raw)) <= 1e-4
    # predict's default activation, the sigmoid, is the P(yes) the server answers.
    probability = cross.predict(PAIRS, prompt=instruction).tolist()
    relevance = [ranker.relevance(ranker.rank(q, [d]))[0] for q, d in PAIRS]
    assert max(abs(a - b) for a, b in zip(relevance, probability)) <= 1e-4
    assert len({round(p, 4) for p in probability}) == len(PAIRS)  # the pairs score apart: a real comparison
