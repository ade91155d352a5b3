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

# RankLLaMA (Ma et al., 2023, "Fine-Tuning LLaMA for Multi-Stage Text Retrieval"): the input and score of the
# castorini/rankllama-v1-7b-lora-passage model card, `tokenizer(f'query: {query}', f'document: {title} {passage}</s>')`
# (a text pair: Llama-2's tokenizer puts BOS before each text; `</s>` is Llama-2's EOS, which the dense head
# appends as the tokenizer's EOS id) through LlamaForSequenceClassification: the final hidden state of the last
# token through its linear `score` layer (no bias), `logits[0][0]`. The card writes the title even when it is
# empty ("document:  passage"), as tevatron's training data did for MS MARCO passages.
RANKLLAMA = PromptTemplate(
    name="rankllama",
    user="query: {query}",
    text_pair="document: {document}",
    title_format="{title} {text}",
    empty_title=True,
)

register(PromptTemplate, RANKLLAMA)

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
            name="rankllama",
            method="pointwise",
            options={"template": RANKLLAMA, "head": "dense"},
            reference="the castorini/rankllama-v1-7b-lora-passage model card's example (tevatron's RankLLaMA)",
            models="castorini/rankllama-v1-7b-lora-passage (a peft adapter over Llama-2-7b)",
        ),
    )
}


def get_family(name: str) -> Family:
    """The family of a name; an unknown name is a ValueError listing the families."""
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}: choose one of {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]
