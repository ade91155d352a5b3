"""Pointwise scoring from the next-token logits of two fixed answer tokens (yes/no, true/false, ...).

With z_yes and z_no the logits of the two tokens after the prompt, the ranker's logit is s = z_yes - z_no.
Normalisations of the score:

- ``pair_softmax`` (default): log P(yes | {yes, no}) = log sigmoid(s);
- ``vocab_softmax``: log P(yes) with the softmax over the whole vocabulary;
- ``yes_logit``: the raw z_yes.

References: monoT5 (Nogueira et al., 2020, "Document Ranking with a Pretrained Sequence-to-Sequence Model");
Qin et al. / Zhuang et al. (2023) on relevance generation with LLMs; BGE's LLM rerankers (yes-token logit).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..backends.base import Backend
from ..prompts import TRUE_FALSE, YES_NO, PromptParts, PromptTemplate, get_template
from ..types import DocLike, Document
from .base import Encoded, PointScorer

NORMALISATIONS = ("pair_softmax", "vocab_softmax", "yes_logit")
TOKEN_PAIRS = {"yes_no": ("yes", "no"), "true_false": ("true", "false")}


def normalise(logits: torch.Tensor, yes_id: int, no_id: int, normalisation: str) -> torch.Tensor:
    """Scores from last-position logits ``[n, vocab]`` under one normalisation."""
    z_yes, z_no = logits[:, yes_id], logits[:, no_id]
    if normalisation == "pair_softmax":
        return F.logsigmoid(z_yes - z_no)
    if normalisation == "vocab_softmax":
        return z_yes - torch.logsumexp(logits, dim=-1)
    if normalisation == "yes_logit":
        return z_yes
    raise ValueError(f"unknown normalisation {normalisation!r}: choose one of {', '.join(NORMALISATIONS)}")


def single_token_id(tokenizer: Any, word: str) -> int:
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(
            f"answer token {word!r} is {len(ids)} tokens for this tokenizer; pointwise scoring needs a single "
            "token (try another casing or leading space)"
        )
    return int(ids[0])


class PointwiseRanker(PointScorer):
    """Relevance from the logits of two answer tokens after a yes/no style prompt.

    Args:
        backend: the model.
        tokens: ``"yes_no"`` (default), ``"true_false"``, or a pair of single-token words (positive first).
        normalisation: ``pair_softmax`` (default), ``vocab_softmax`` or ``yes_logit``.
        template: a prompt template (name, file path or PromptTemplate); defaults to the one matching the
            token pair.
        max_length: the token budget of a whole prompt; only the document is cut to fit.
    """

    method = "pointwise"

    def __init__(
        self,
        backend: Backend,
        tokens: str | Sequence[str] = "yes_no",
        normalisation: str = "pair_softmax",
        template: str | PromptTemplate | None = None,
        max_length: int = 512,
    ):
        if normalisation not in NORMALISATIONS:
            raise ValueError(f"unknown normalisation {normalisation!r}: choose one of {', '.join(NORMALISATIONS)}")
        if isinstance(tokens, str):
            if tokens not in TOKEN_PAIRS:
                raise ValueError(f"unknown token pair {tokens!r}: give {sorted(TOKEN_PAIRS)} or two words")
            default_template = TRUE_FALSE if tokens == "true_false" else YES_NO
            words = TOKEN_PAIRS[tokens]
        else:
            words = tuple(tokens)
            if len(words) != 2 or not all(isinstance(w, str) for w in words):
                raise ValueError(f"tokens must be a pair of words (positive, negative), got {tokens!r}")
            default_template = YES_NO
        tmpl = get_template(template) if template is not None else default_template
        if tmpl.target is not None:
            raise ValueError(f"template {tmpl.name!r} is a query-likelihood template, not a pointwise one")
        super().__init__(backend, tmpl, max_length)
        self.words = words
        self.yes_id = single_token_id(backend.tokenizer, words[0])
        self.no_id = single_token_id(backend.tokenizer, words[1])
        if self.yes_id == self.no_id:
            raise ValueError(f"answer tokens {words!r} map to the same token id")
        self.normalisation = normalisation

    def encode_pair(self, query: str, doc: Document, parts: PromptParts) -> Encoded:
        doc_ids, cut = self.renderer.document_ids(doc, parts)
        return Encoded(prompt=(*parts.head, *doc_ids, *parts.tail), truncated=cut)

    def score_encoded(self, items: Sequence[Encoded], grad: bool = False) -> torch.Tensor:
        if not items:
            return torch.empty(0)
        logits = self.backend.last_logits([e.prompt for e in items], grad=grad)
        return normalise(logits, self.yes_id, self.no_id, self.normalisation)

    def logit_tensor(self, query: str, docs: Sequence[DocLike]) -> torch.Tensor:
        """The differentiable logit s = z_yes - z_no (every normalisation ranks as it does)."""
        logits = self.backend.last_logits([e.prompt for e in self.encode(query, docs)], grad=True)
        return logits[:, self.yes_id] - logits[:, self.no_id]

    def score_variants(self, query: str, docs: Sequence[DocLike]) -> dict[str, list[float]]:
        """All normalisations from one forward pass, in input order."""
        items = self.encode(query, docs)
        if not items:
            return {n: [] for n in NORMALISATIONS}
        logits = self.backend.last_logits([e.prompt for e in items])
        return {n: normalise(logits, self.yes_id, self.no_id, n).tolist() for n in NORMALISATIONS}

    def options(self) -> dict[str, Any]:
        return {"tokens": list(self.words), "normalisation": self.normalisation}
