"""Trained reranker families: a published model's exact prompt, answer tokens, score and head, by name.

A family is chosen by name (``Reranker("pointwise", model=..., family="qwen3-reranker")``, ``--family``),
never guessed from a model's name. It sets the ranker options its reference code fixes (the template, the answer
tokens, the normalisation, the head); an option given with it that disagrees is an error, so a run that says it
used a family did. The family is recorded with the other options (run sidecars, trained folders, ``config()``).

The prompt strings are interface data, reproduced exactly from each model's reference code, which is credited
beside it. A family's template is also a built-in template of the same name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .base import register
from .pointwise import PromptTemplate


@dataclass(frozen=True)
class Family:
    """A model family: the ranking ``method`` and the ``options`` its reference fixes, where they come from
    (``reference``) and the models it fits (``models``)."""

    name: str
    method: str
    options: Mapping[str, Any]
    reference: str
    models: str


# Qwen3-Reranker (Qwen team, 2025): the prompt and score of the model card's transformers example (the model
# cards of Qwen/Qwen3-Reranker-0.6B, -4B and -8B), which builds the prompt by hand: a system message, a user
# message "<Instruct>: ...\n<Query>: ...\n<Document>: ..." and an empty think block opening the answer; the
# score is P(yes) under the softmax over the logits of "no" and "yes" at the last position.
QWEN3_RERANKER_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
QWEN3_RERANKER = PromptTemplate(
    name="qwen3-reranker",
    user=(
        "<|im_start|>system\n"
        'Judge whether the Document meets the requirements based on the Query and the Instruct provided. Note that '
        'the answer can only be "yes" or "no".<|im_end|>\n'
        "<|im_start|>user\n"
        "<Instruct>: {instruction}\n"
        "<Query>: {query}\n"
        "<Document>: {document}<|im_end|>\n"
        "<|im_start|>assistant\n"
        "<think>\n\n</think>\n\n"
    ),
    verbatim=True,
    extra={"instruction": QWEN3_RERANKER_INSTRUCTION},
)

register(PromptTemplate, QWEN3_RERANKER)

# bge-reranker-v2-gemma (BAAI): FlagEmbedding 1.4.2's FlagLLMReranker
# (FlagEmbedding/inference/reranker/decoder_only/base.py, BaseLLMReranker.compute_score_single_gpu, with the
# "A: "/"B: " defaults of its __init__). No chat template: the BOS id, "A: " + query (cut to 3/4 of its
# max_length), "\n", "B: " + passage (cut to max_length, then so that all before the second "\n" stays within
# max_length plus the length of "\n" + prompt), "\n", its prompt, each piece tokenised apart; the score is the
# raw logit of tokenizer("Yes")["input_ids"][0] at the last position.
BGE_RERANKER_V2_GEMMA_PROMPT = (
    "Given a query A and a passage B, determine whether the passage contains an answer to the query by providing "
    "a prediction of either 'Yes' or 'No'."
)
BGE_RERANKER_V2_GEMMA = PromptTemplate(
    name="bge-reranker-v2-gemma",
    user="A: {query}{break}\n{break}B: {document}{break}\n{break}{instruction}",
    verbatim=True,
    bos=True,
    query_share=0.75,
    budget="pair_and_tail",
    extra={"instruction": BGE_RERANKER_V2_GEMMA_PROMPT},
)

register(PromptTemplate, BGE_RERANKER_V2_GEMMA)

# mxbai-rerank v2 (mixedbread): the mxbai-rerank library 0.1.6's MxbaiRerankV2 (mxbai_rerank/mxbai_rerank_v2.py,
# prepare_inputs and forward). Its own fixed chat text (Qwen's default system message), not the tokenizer's
# template: the prefix, "query: " + query (after "instruction: ...\n" when an instruction is given; cut to 3/4
# of its max_length), "\n", "document: " + document (cut so that query, "\n" and document stay within
# max_length), "\n", its task prompt, the suffix, each piece tokenised apart; the score is the logit of
# tokenizer("1")[0] minus that of tokenizer("0")[0] at the last position.
MXBAI_RERANK_V2_TASK = (
    "You are a search relevance expert who evaluates how well documents match search queries. For each "
    "query-document pair, carefully analyze the semantic relationship between them, then provide your binary "
    "relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:"
)
MXBAI_RERANK_V2 = PromptTemplate(
    name="mxbai-rerank-v2",
    user=(
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n"
        "{break}{instruction}query: {query}{break}\n{break}document: {document}{break}\n{break}"
        + MXBAI_RERANK_V2_TASK
        + "{break}<|im_end|>\n<|im_start|>assistant\n"
    ),
    verbatim=True,
    query_share=0.75,
    budget="pair",
    extra={"instruction": "", "instruction_format": "instruction: {instruction}\n"},
)

register(PromptTemplate, MXBAI_RERANK_V2)

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            name="qwen3-reranker",
            method="pointwise",
            options={
                "template": QWEN3_RERANKER,
                "tokens": ("yes", "no"),
                "answer_ids": "vocabulary",
                "normalisation": "pair_softmax",
                "head": "tokens",
            },
            reference="the Qwen3-Reranker model cards' transformers example (Qwen/Qwen3-Reranker-0.6B, -4B, -8B)",
            models="Qwen3-Reranker 0.6B, 4B, 8B",
        ),
        Family(
            name="bge-reranker-v2-gemma",
            method="pointwise",
            options={
                "template": BGE_RERANKER_V2_GEMMA,
                "tokens": ("Yes", "No"),
                "answer_ids": "encoded",
                "normalisation": "yes_logit",
                "head": "tokens",
            },
            reference="FlagEmbedding 1.4.2's FlagLLMReranker (inference/reranker/decoder_only/base.py)",
            models="BAAI/bge-reranker-v2-gemma (and FlagLLMReranker's other base LLM rerankers)",
        ),
        Family(
            name="mxbai-rerank-v2",
            method="pointwise",
            options={
                "template": MXBAI_RERANK_V2,
                "tokens": ("1", "0"),
                "answer_ids": "encoded",
                "normalisation": "logit",
                "head": "tokens",
            },
            reference="mxbai-rerank 0.1.6's MxbaiRerankV2 (mxbai_rerank/mxbai_rerank_v2.py)",
            models="mixedbread-ai/mxbai-rerank-base-v2, -large-v2",
        ),
    )
}


def get_family(name: str) -> Family:
    """The family of a name; an unknown name is a ValueError listing the families (in the order defined)."""
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}: choose one of {', '.join(FAMILIES)}")
    return FAMILIES[name]
