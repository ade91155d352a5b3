"""Query likelihood (UPR): how likely the model finds the query, given the document.

score = mean over the query's tokens of log P(query token_t | prompt with the document, query tokens before t),
from one teacher-forced forward pass per document; no generation. ``reduction="sum"`` gives the total
log-probability instead (which favours short queries less evenly, so mean is the default).

Reference: Sachan et al., 2022, "Improving Passage Retrieval with Zero-Shot Question Generation" (UPR).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..backends.base import Backend
from ..prompts import QUERY_LIKELIHOOD, PromptParts, PromptTemplate, get_template
from ..types import Document
from .base import Encoded, PointScorer

REDUCTIONS = ("mean", "sum")


class LikelihoodRanker(PointScorer):
    """Scores a document by the (mean) log-probability of the query's tokens after a prompt holding it."""

    method = "likelihood"

    def __init__(
        self,
        backend: Backend,
        reduction: str = "mean",
        template: str | PromptTemplate | None = None,
        max_length: int = 512,
    ):
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}: choose one of {', '.join(REDUCTIONS)}")
        tmpl = get_template(template) if template is not None else QUERY_LIKELIHOOD
        if tmpl.target is None:
            raise ValueError(
                f"template {tmpl.name!r} has no target: a query-likelihood template needs target='{{query}}'"
            )
        super().__init__(backend, tmpl, max_length)
        self.reduction = reduction

    def encode_pair(self, query: str, doc: Document, parts: PromptParts) -> Encoded:
        doc_ids, cut = self.renderer.document_ids(doc, parts)
        return Encoded(prompt=(*parts.head, *doc_ids, *parts.tail), target=parts.target, truncated=cut)

    def score_encoded(self, items: Sequence[Encoded], grad: bool = False) -> torch.Tensor:
        if not items:
            return torch.empty(0)
        per_token = self.backend.target_logprobs([e.prompt for e in items], [e.target for e in items], grad=grad)
        reduce = torch.mean if self.reduction == "mean" else torch.sum
        return torch.stack([reduce(lp) for lp in per_token])

    def options(self) -> dict[str, Any]:
        return {"reduction": self.reduction}
