"""Prompt templates as data, and their rendering into token ids.

- :mod:`.base`: the template base, template files, the registry of built-ins (:func:`get_template`), placeholder
  filling, encoding, answer tokens, and the per-passage token budget of multi-passage prompts;
- :mod:`.pointwise`: one-document prompts (``yes_no``, ``true_false``, ``query_likelihood``);
- :mod:`.listwise`: a window of passages to put in order (``rankgpt``, ``rankzephyr-paraphrase``);
- :mod:`.comparison`: a few passages to pick the best of, pairwise and setwise (``prp``, ``setwise``);
- :mod:`.families`: trained rerankers' exact prompts and scores by family name (``qwen3-reranker``, ``rankllama``,
  ``rankzephyr``, ``rankvicuna``, ``first``).
"""

from __future__ import annotations

from .base import (
    LABELS,
    PassageRenderer,
    PassagesTemplate,
    PromptTooLongError,
    RenderedPassages,
    Renderer,
    Template,
    builtin_names,
    continuation_ids,
    encode,
    fill,
    fit_passages,
    get_template,
    load_template,
    word_openers,
)
from .comparison import PRP, SETWISE, ComparisonRenderer, ComparisonTemplate
from .families import FAMILIES, RANKZEPHYR, Family, get_family
from .listwise import RANKGPT, RANKZEPHYR_PARAPHRASE, ListwiseRenderer, ListwiseTemplate, example_answer
from .pointwise import QUERY_LIKELIHOOD, TRUE_FALSE, YES_NO, PromptParts, PromptRenderer, PromptTemplate

__all__ = [
    "FAMILIES",
    "LABELS",
    "PRP",
    "QUERY_LIKELIHOOD",
    "RANKGPT",
    "RANKZEPHYR",
    "RANKZEPHYR_PARAPHRASE",
    "SETWISE",
    "TRUE_FALSE",
    "YES_NO",
    "ComparisonRenderer",
    "ComparisonTemplate",
    "Family",
    "ListwiseRenderer",
    "ListwiseTemplate",
    "PassageRenderer",
    "PassagesTemplate",
    "PromptParts",
    "PromptRenderer",
    "PromptTemplate",
    "PromptTooLongError",
    "RenderedPassages",
    "Renderer",
    "Template",
    "builtin_names",
    "continuation_ids",
    "encode",
    "example_answer",
    "fill",
    "fit_passages",
    "get_family",
    "get_template",
    "load_template",
    "word_openers",
]
