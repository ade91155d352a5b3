"""Query likelihood (UPR): how likely the model finds the query, given the document.

score = mean over the query's tokens of log P(query token_t | prompt with the document, query tokens before t),
from one teacher-forced forward pass per document; no generation. ``reduction="sum"`` gives the total
log-probability instead (which favours short queries less evenly, so mean is the default).

Reference: Sachan et al., 2022, "Improving Passage Retrieval with Zero-Shot Question Generation" (UPR).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..options import Options, option, template_option
from ..prompts import QUERY_LIKELIHOOD, PromptParts
from ..types import Document, Ranking
from .base import Encoded, PointScorer

REDUCTIONS = ("mean", "sum")


@dataclass(frozen=True)
class LikelihoodOptions(Options):
    """The options of :class:`LikelihoodRanker`."""

    method: ClassVar[str] = "likelihood"

    reduction: str = option("mean", "mean or total log-probability of the query's tokens", choices=REDUCTIONS)
    template: Any = template_option("a query-likelihood template (a name or a .toml/.json file)", "prompt")
    max_length: int = option(512, "token budget of one prompt (documents are cut)", positive=True)

    def check(self) -> None:
        if self.template is None:
            object.__setattr__(self, "template", QUERY_LIKELIHOOD)
        if self.template.target is None:
            raise ValueError(
                f"template {self.template.name!r} has no target: a query-likelihood template needs "
                "target='{query}'"
            )


class LikelihoodRanker(PointScorer):
    """Scores a document by the (mean) log-probability of the query's tokens after a prompt holding it.

    Options (:class:`LikelihoodOptions`): ``reduction`` (``mean``, default, or ``sum``), ``template`` and
    ``max_length``.
    """

    method: ClassVar[str] = "likelihood"
    Options: ClassVar[type[Options]] = LikelihoodOptions
    # bfloat16 where the device computes it natively: on DL19's BM25 top 20 it kept nDCG@10 within 0.005 of float32
    # and a mean Kendall tau of at least 0.95 with the 135M, the 0.5B and the distilled preset, 2.5-3.3x faster on
    # this project's CPU (docs/benchmarks.md, "Speed"; benchmarks/precision.py)
    default_dtype: ClassVar[str] = "auto"

    def encode_pair(self, query: str, doc: Document, parts: PromptParts) -> Encoded:
        doc_ids, cut = self.renderer.document_ids(doc, parts)
        return Encoded(prompt=(*parts.head, *doc_ids, *parts.tail), target=parts.target, truncated=cut)

    def score_encoded(self, items: Sequence[Encoded], grad: bool = False) -> torch.Tensor:
        if not items:
            return torch.empty(0)
        per_token = self.backend.target_logprobs([e.prompt for e in items], [e.target for e in items], grad=grad)
        reduce = torch.mean if self.options.reduction == "mean" else torch.sum
        return torch.stack([reduce(lp) for lp in per_token])

    def relevance(self, ranking: Ranking) -> list[float]:
        """``exp`` of the score: the geometric-mean probability of the query's tokens (``reduction="mean"``), or
        the probability of the whole query (``"sum"``)."""
        return torch.tensor(ranking.scores, dtype=torch.float64).exp().tolist()
