"""The Ranker contract, and what every method shares: its options table, ``describe()`` and ``config()``, input
checks, the finite-score check, and the machinery of rankers that score each document on its own."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from ..backends.base import Backend
from ..check import Check, chat_template_check, label_tokens_check, raise_failures, suffix_check
from ..options import BackendOptions, Options
from ..prompts import PromptRenderer
from ..types import DocLike, Document, Ranking, as_documents, is_sequence, ranking_from_scores


@runtime_checkable
class Ranker(Protocol):
    """What every method offers: scores in input order, rankings best first, and the options that rebuild it."""

    method: str
    options: Options

    def score(self, query: str, docs: Sequence[DocLike]) -> list[float]: ...

    def rank(self, query: str, docs: Sequence[DocLike]) -> Ranking: ...

    def rank_many(self, queries: Sequence[str], docs: Sequence[Sequence[DocLike]]) -> list[Ranking]: ...

    def describe(self) -> dict[str, Any]: ...

    def config(self) -> dict[str, Any]: ...


def check_query(query: Any, position: int | None = None) -> str:
    if not isinstance(query, str):
        where = f" (query {position})" if position is not None else ""
        raise TypeError(f"query must be a str, got {type(query).__name__}{where}")
    return query


def check_batch(queries: Sequence[str], docs: Sequence[Sequence[DocLike]]) -> list[tuple[str, list[Document]]]:
    """The (query, documents) pairs of a ``rank_many`` call, checked: a sequence of str and as many lists."""
    if isinstance(queries, str):
        raise TypeError("queries must be a sequence of str, not a single str")
    for what, given in (("queries", queries), ("docs", docs)):
        if isinstance(given, Mapping):
            raise TypeError(
                f"{what} must be a sequence with one entry per query, got a {type(given).__name__} (its keys would "
                f"be used): pass lists in one order of query ids, e.g. [{what}[q] for q in ids]"
            )
        if not is_sequence(given):
            kind = type(given).__name__
            raise TypeError(f"{what} must be a sequence (a list or tuple) with one entry per query, got {kind}")
    if len(queries) != len(docs):
        raise ValueError(f"got {len(queries)} queries but {len(docs)} candidate lists")
    return [(check_query(q, i), as_documents(ds, f"docs[{i}]")) for i, (q, ds) in enumerate(zip(queries, docs))]


def check_finite(values: torch.Tensor, what: str = "scores") -> torch.Tensor:
    """``values`` unchanged, or a FloatingPointError when the model produced NaN or infinite ones."""
    bad = int((~torch.isfinite(values)).sum()) if values.numel() else 0
    if bad:
        raise FloatingPointError(f"the model produced {bad} non-finite {what} (NaN or inf); check the dtype")
    return values


def backend_options(backend: Any) -> dict[str, Any]:
    """How ``backend`` runs, as the backend options table: what it was loaded with, else what it shows."""
    loaded = getattr(backend, "options", None)
    if isinstance(loaded, BackendOptions):
        return loaded.to_dict()
    out: dict[str, Any] = {"batch_size": getattr(backend, "batch_size", BackendOptions.batch_size)}
    for name in ("batch_tokens", "reuse_prefix"):
        if hasattr(backend, name):
            out[name] = getattr(backend, name)
    if getattr(backend, "dtype", None) in ("float32", "bfloat16", "float16"):
        out["dtype"] = backend.dtype
    if getattr(backend, "device", None) is not None:
        out["device"] = str(backend.device)
    if getattr(backend, "compiled", 0):
        out["compile"] = True
    if getattr(backend, "pass_cost_option", None) is not None:
        out["pass_cost"] = backend.pass_cost_option
    return out


class RankerBase:
    """What every ranker shares: the backend, the validated options table (``Options``, declared by each method
    beside its ranker), option values as attributes (``ranker.max_length``), ``describe()`` and ``config()``.

    A ranker is built from keyword options (``PointwiseRanker(backend, normalisation="logit")``) or from an
    options object (``PointwiseRanker(backend, PointwiseOptions(normalisation="logit"))``), not both: an options
    object already holds the method's defaults filled in for its values.
    """

    method: ClassVar[str] = "ranker"
    Options: ClassVar[type[Options]] = Options
    # The backend's dtype when none is given (the ``dtype`` backend option's default, per method): float32 unless
    # a faster one passed the ranking-agreement rule for this method (issue 14; docs/benchmarks.md, "Speed": yes/no,
    # setwise and pairwise failed it in bfloat16, listwise gave no evidence).
    default_dtype: ClassVar[str] = "float32"

    def __init__(self, backend: Backend, options: Options | None = None, **given: Any):
        if options is None:
            options = self.Options.build(given)
        elif not isinstance(options, self.Options):
            raise TypeError(f"{self.method} takes {self.Options.__name__}, got {type(options).__name__}")
        elif given:
            raise TypeError(f"give {self.method} an options object or keyword options, not both: {sorted(given)}")
        self.backend = backend
        self.options = options
        # How this ranker asked its model to run, where that differs from the options the shared backend was loaded
        # with (the server shares one loaded model between rankers whose weights load in the same dtype): what
        # config() reports, so that it rebuilds this ranker as asked. None: the backend's own.
        self.backend_table: dict[str, Any] | None = None
        # The checks that need no forward pass, run at every build (llmrerank.check); subclasses add theirs.
        self.build_checks: list[Check] = []
        template = getattr(options, "template", None)
        if template is not None:
            self.build_checks.append(chat_template_check(template, backend.tokenizer))
            raise_failures(self.build_checks)

    def __getattr__(self, name: str) -> Any:
        # only reached when normal lookup fails: option values read as attributes
        options = self.__dict__.get("options")
        if options is not None and name in type(options).__dataclass_fields__:
            return getattr(options, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def relevance(self, ranking: Ranking) -> list[float]:
        """A relevance in [0, 1] for each document of ``ranking`` (in its order), monotone in the ranking: what the
        service answers as ``relevance_score``. This default, for methods whose scores only order (listwise,
        comparison), is rank-based: ``(n - rank) / n`` for ranks 0..n-1, so the best is 1.0. Methods with a
        probability behind their score override it."""
        n = len(ranking)
        return [(n - r) / n for r in range(n)]

    def check_query(self, query: str) -> None:
        """Raise (a ValueError) what ranking ``query`` would raise before any model call, so that a run over many
        queries refuses one at its start, not half-way through (override; default: nothing to check)."""
        check_query(query)

    def details(self) -> dict[str, Any]:
        """What ``describe()`` adds to the options: values derived at start-up (override)."""
        return {}

    def describe(self) -> dict[str, Any]:
        """The method, the model and every option in force, for run sidecars and logs."""
        renderer = getattr(self, "renderer", None)
        out = {"method": self.method, "model": getattr(self.backend, "name", None), **self.options.to_dict()}
        if renderer is not None:
            out["chat_template_applied"] = renderer.use_chat
        return {**out, **self.details()}

    def config(self) -> dict[str, Any]:
        """What rebuilds this ranker anywhere: ``Reranker.from_config(ranker.config())``.

        ``{"method", "model", "backend": {...}, "options": {...}}``, all plain JSON data.
        """
        return {
            "method": self.method,
            "model": getattr(self.backend, "name", None),
            "backend": dict(self.backend_table) if self.backend_table is not None else backend_options(self.backend),
            "options": self.options.to_dict(),
        }


class ListRanker(RankerBase):
    """Base of methods that order a whole candidate list at once (listwise, pairwise, setwise).

    Subclasses implement ``rank_many``; ``rank`` and ``score`` follow from it.
    """

    def rank_many(self, queries: Sequence[str], docs: Sequence[Sequence[DocLike]]) -> list[Ranking]:
        raise NotImplementedError

    def _label_ids(self, labels: Sequence[str], find: Any) -> tuple[str, list[int]]:
        """The opener and token ids of the passage labels or identifiers ``find`` reads (see
        :func:`~llmrerank.check.label_tokens_check`), kept as the ranker's ``answer_tokens`` build check; labels
        that are not single, distinct tokens raise it."""
        self.build_checks.append(label_tokens_check(self.backend.tokenizer, labels, find))
        raise_failures(self.build_checks)
        found = self.build_checks[-1].values
        return found["opener"], found["ids"]

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


class PointScorer(RankerBase):
    """Base of methods that give each (query, document) pair a score independently of the others.

    Subclasses implement :meth:`encode_pair` (tokens for one pair) and :meth:`score_encoded` (a float tensor of
    scores for a list of encoded pairs, differentiable when ``grad`` is true). Everything else — input checks,
    batching across queries, stable ranking, accounting — lives here, so inference, training
    (:meth:`score_tensor`) and the server all run the same scoring function. Their options hold ``template``
    (a prompt template) and ``max_length``.
    """

    method: ClassVar[str] = "pointscorer"

    def __init__(self, backend: Backend, options: Options | None = None, **given: Any):
        super().__init__(backend, options, **given)
        budget = self.options.max_length - self.appended_tokens()  # what encode_pair adds stays within max_length
        self.renderer = PromptRenderer(self.options.template, backend.tokenizer, budget)
        self.build_checks.append(suffix_check(self.renderer, appended=self.appended_tokens()))
        raise_failures(self.build_checks)

    # -- to implement ----------------------------------------------------------------------------------------

    def appended_tokens(self) -> int:
        """Tokens :meth:`encode_pair` adds after the rendered prompt (the renderer keeps room for them)."""
        return 0

    def encode_pair(self, query: str, doc: Document, parts: Any) -> Encoded:
        raise NotImplementedError

    def score_encoded(self, items: Sequence[Encoded], grad: bool = False) -> torch.Tensor:
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------------------------------

    def check_query(self, query: str) -> None:
        """The prompt around the documents is built for ``query``: an empty likelihood target, or a prompt that
        leaves no room for a document within max_length, is refused here."""
        self.renderer.parts(check_query(query))

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
        flat = check_finite(self.score_encoded(items)).tolist() if items else []
        return [(flat[a:b], items[a:b], documents) for a, b, documents in spans]
