"""The Ranker contract, and the shared machinery of rankers that score each document on its own."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from ..backends.base import Backend
from ..prompts import PromptRenderer, PromptTemplate
from ..types import DocLike, Document, Ranking, as_documents, ranking_from_scores


@runtime_checkable
class Ranker(Protocol):
    """What every method offers: scores in input order, and rankings best first."""

    method: str

    def score(self, query: str, docs: Sequence[DocLike]) -> list[float]: ...

    def rank(self, query: str, docs: Sequence[DocLike]) -> Ranking: ...

    def rank_many(self, queries: Sequence[str], docs: Sequence[Sequence[DocLike]]) -> list[Ranking]: ...

    def describe(self) -> dict[str, Any]: ...


def check_batch(queries: Sequence[str], docs: Sequence[Sequence[DocLike]]) -> list[tuple[str, list[Document]]]:
    """The (query, documents) pairs of a ``rank_many`` call, checked: a sequence of str and as many lists."""
    if isinstance(queries, str):
        raise TypeError("queries must be a sequence of str, not a single str")
    if len(queries) != len(docs):
        raise ValueError(f"got {len(queries)} queries but {len(docs)} candidate lists")
    return [(check_query(q, i), as_documents(ds)) for i, (q, ds) in enumerate(zip(queries, docs))]


class ListRanker:
    """Base of methods that order a whole candidate list at once (listwise, pairwise, setwise).

    Subclasses implement ``rank_many``; ``rank`` and ``score`` follow from it.
    """

    def rank_many(self, queries: Sequence[str], docs: Sequence[Sequence[DocLike]]) -> list[Ranking]:
        raise NotImplementedError

    def rank(self, query: str, docs: Sequence[DocLike]) -> Ranking:
        """The documents best first."""
        return self.rank_many([query], [docs])[0]

    def score(self, query: str, docs: Sequence[DocLike]) -> list[float]:
        """Scores in input order (higher is better): each document's score in :meth:`rank`."""
        ranking = self.rank(query, docs)
        scores = [0.0] * len(ranking.indices)
        for i, s in zip(ranking.indices, ranking.scores):
            scores[i] = s
        return scores


@dataclass(frozen=True)
class Encoded:
    """One (query, document) pair as token ids: the prompt, and the target for teacher forcing if any."""

    prompt: tuple[int, ...]
    target: tuple[int, ...] = ()
    truncated: bool = False

    @property
    def length(self) -> int:
        return len(self.prompt) + len(self.target)


def check_query(query: Any, position: int | None = None) -> str:
    if not isinstance(query, str):
        where = f" (query {position})" if position is not None else ""
        raise TypeError(f"query must be a str, got {type(query).__name__}{where}")
    return query


class PointScorer:
    """Base of methods that give each (query, document) pair a score independently of the others.

    Subclasses implement :meth:`encode_pair` (tokens for one pair) and :meth:`score_encoded` (a float tensor of
    scores for a list of encoded pairs, differentiable when ``grad`` is true). Everything else — input checks,
    batching across queries, stable ranking, accounting — lives here, so inference, training
    (:meth:`score_tensor`) and the server all run the same scoring function.
    """

    method = "pointscorer"

    def __init__(self, backend: Backend, template: PromptTemplate, max_length: int = 512):
        self.backend = backend
        self.template = template
        self.max_length = max_length
        self.renderer = PromptRenderer(template, backend.tokenizer, max_length)

    # -- to implement ----------------------------------------------------------------------------------------

    def encode_pair(self, query: str, doc: Document, parts: Any) -> Encoded:
        raise NotImplementedError

    def score_encoded(self, items: Sequence[Encoded], grad: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        return {}

    # -- shared ----------------------------------------------------------------------------------------------

    def encode(self, query: str, docs: Sequence[DocLike]) -> list[Encoded]:
        check_query(query)
        documents = as_documents(docs)
        if not documents:
            return []
        parts = self.renderer.parts(query)
        return [self.encode_pair(query, d, parts) for d in documents]

    def score_tensor(self, query: str, docs: Sequence[DocLike]) -> torch.Tensor:
        """The differentiable scores of ``docs`` for ``query`` (one batch, autograd on): what training optimises."""
        return self.score_encoded(self.encode(query, docs), grad=True)

    def score(self, query: str, docs: Sequence[DocLike]) -> list[float]:
        """Scores in input order; higher means more relevant."""
        return self._score_many([query], [docs])[0][0]

    def rank(self, query: str, docs: Sequence[DocLike]) -> Ranking:
        """The documents best first; equal scores keep their input order."""
        return self.rank_many([query], [docs])[0]

    def rank_many(self, queries: Sequence[str], docs: Sequence[Sequence[DocLike]]) -> list[Ranking]:
        """Rank several queries' candidate lists, batching all their pairs together."""
        rankings = []
        for scores, items, documents in self._score_many(queries, docs):
            meta = {"tokens": sum(e.length for e in items), "truncated": sum(e.truncated for e in items)}
            rankings.append(ranking_from_scores(scores, documents, meta))
        return rankings

    def _score_many(
        self, queries: Sequence[str], docs: Sequence[Sequence[DocLike]]
    ) -> list[tuple[list[float], list[Encoded], list[Document]]]:
        items: list[Encoded] = []
        spans = []
        for q, documents in check_batch(queries, docs):
            start = len(items)
            items.extend(self.encode(q, documents))
            spans.append((start, len(items), documents))
        flat = self.score_encoded(items).tolist() if items else []
        nan = sum(math.isnan(s) for s in flat)
        if nan:
            raise FloatingPointError(f"the model produced NaN scores for {nan} document(s); check the dtype")
        return [(flat[a:b], items[a:b], documents) for a, b, documents in spans]

    def describe(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "model": getattr(self.backend, "name", None),
            "max_length": self.max_length,
            "template": self.template.to_dict(),
            "chat_template_applied": self.renderer.use_chat,
            **self.options(),
        }
