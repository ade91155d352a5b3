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
from dataclasses import dataclass, replace
from typing import Any

from .base import register
from .listwise import ListwiseTemplate
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

# RankZephyr, RankVicuna and FIRST (castorini): rank_llm's prompt templates, word for word, from the package
# rank-llm 0.25.7 (the newest on the package index here), files rank_llm/rerank/prompt_templates/
# rank_zephyr_template.yaml (RankZephyr; RankVicuna too: rank_llm's VicunaReranker and RankListwiseOSLLM load it)
# and rank_zephyr_alpha_template.yaml (FIRST: rank_llm runs castorini/first_mistral with use_alpha and
# use_logits). rank_llm fills them as prefix + one "[{rank}] {candidate}\n" per passage + suffix in one user
# message after the system message, through the model's chat template; the prefix ends with a newline, so it is
# the intro here, joined to the passages and the suffix by "\n". A passage with a title is
# "Title: {title} Content: {text}"; fill_rule="rank_llm" does the rest as rank_llm does (see prompts/listwise.py).
_RANK_LLM_SYSTEM = (
    "You are RankLLM, an intelligent assistant that can rank passages based on their relevancy to the query"
)
RANKZEPHYR = ListwiseTemplate(
    name="rankzephyr",
    system=_RANK_LLM_SYSTEM,
    intro=(
        "I will provide you with {num} passages, each indicated by a numerical identifier []. Rank the passages "
        "based on their relevance to the search query: {query}."
    ),
    passage="[{id}] {passage}",
    outro=(
        "Search Query: {query}.\nRank the {num} passages above based on their relevance to the search query. All "
        "the passages should be included and listed using identifiers, in descending order of relevance. The "
        "output format should be [] > [], e.g., [2] > [1], Answer concisely and directly and only respond with "
        "the ranking results, do not say any word or explain."
    ),
    separator="\n",
    title_format="Title: {title} Content: {text}",
    fill_rule="rank_llm",
)
RANKVICUNA = replace(RANKZEPHYR, name="rankvicuna")
FIRST = replace(
    RANKZEPHYR,
    name="first",
    intro=(
        "I will provide you with {num} passages, each indicated by an alphabetical identifier []. Rank the "
        "passages based on their relevance to the search query: {query}."
    ),
    outro=(
        "Search Query: {query}.\nRank the {num} passages above based on their relevance to the search query. All "
        "the passages should be included and listed using identifiers, in descending order of relevance. The "
        "output format should be [] > [], e.g., [B] > [A], Answer concisely and directly and only respond with "
        "the ranking results, do not say any word or explain."
    ),
)

register(ListwiseTemplate, RANKZEPHYR, RANKVICUNA, FIRST)

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
            name="rankllama",
            method="pointwise",
            options={"template": RANKLLAMA, "head": "dense"},
            reference="the castorini/rankllama-v1-7b-lora-passage model card's example (tevatron's RankLLaMA)",
            models="castorini/rankllama-v1-7b-lora-passage (a peft adapter over Llama-2-7b)",
        ),
        Family(
            name="rankzephyr",
            method="listwise",
            options={"template": RANKZEPHYR, "identifiers": "numbers", "decoding": "generate"},
            reference="rank_llm 0.25.7, rank_llm/rerank/prompt_templates/rank_zephyr_template.yaml",
            models="castorini/rank_zephyr_7b_v1_full",
        ),
        Family(
            name="rankvicuna",
            method="listwise",
            options={"template": RANKVICUNA, "identifiers": "numbers", "decoding": "generate"},
            reference="rank_llm 0.25.7, rank_llm/rerank/prompt_templates/rank_zephyr_template.yaml (VicunaReranker)",
            models="castorini/rank_vicuna_7b_v1",
        ),
        Family(
            name="first",
            method="listwise",
            options={"template": FIRST, "identifiers": "letters", "decoding": "first"},
            reference="rank_llm 0.25.7, rank_llm/rerank/prompt_templates/rank_zephyr_alpha_template.yaml (use_alpha, "
            "use_logits)",
            models="castorini/first_mistral",
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


def get_family(name: str, method: str | None = None) -> Family:
    """The family of a name (of ``method``'s families, when given); an unknown name is a ValueError listing them
    in the order they are declared."""
    known = family_names(method)
    if name not in known:
        of = f" of method {method!r}" if method is not None and name in FAMILIES else ""
        raise ValueError(f"unknown family {name!r}{of}: choose one of {', '.join(known)}")
    return FAMILIES[name]


def family_names(method: str | None = None) -> tuple[str, ...]:
    """The names of the families (of ``method``, when given), in the order they are declared."""
    return tuple(n for n, f in FAMILIES.items() if method is None or f.method == method)
