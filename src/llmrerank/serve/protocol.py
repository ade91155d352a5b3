"""The service's one internal request and response, what every route dialect parses into and formats from, and
the checks every request passes before it reaches a model.

A dialect (:mod:`.dialects`) turns a Cohere, Jina, text-embeddings-inference or vLLM body into a
:class:`RerankRequest`; :class:`Limits` and :func:`check_request` refuse what no ranker should see (a
:class:`ServeError` with the HTTP status and a message naming what is wrong); the app ranks it and hands the
dialect a :class:`RerankResponse`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


class ServeError(Exception):
    """A request the service refuses: the HTTP status, a message that says what is wrong, and a short kind
    (TEI's ``error_type``)."""

    def __init__(self, status: int, message: str, kind: str = "Validation", headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.headers = dict(headers or {})


@dataclass(frozen=True)
class Limits:
    """What one request may hold; each has a ``llmrerank serve`` flag."""

    max_documents: int = 1000
    max_document_chars: int = 100_000
    max_query_chars: int = 20_000
    max_body_bytes: int = 20 * 1024 * 1024


@dataclass(frozen=True)
class RerankRequest:
    """One rerank call, whatever shape it came in.

    ``documents`` are the texts in request order; ``top_n`` None means all; ``max_tokens_per_doc`` cuts each
    document to that many tokens before ranking; ``truncate`` False refuses (413) a document longer than the
    ranker's document budget instead of cutting it (TEI), and ``truncate_left`` cuts a document's start instead
    of its end; ``raw_scores`` answers the ranker's own score instead of the relevance in [0, 1] (TEI);
    ``instruction`` replaces the ranker's instruction for this request (a template with ``{instruction}``, such as
    the ``qwen3-reranker`` family's; an llmrerank field, accepted by every route).
    """

    query: str
    documents: tuple[str, ...]
    model: str | None = None
    top_n: int | None = None
    return_documents: bool = False
    max_tokens_per_doc: int | None = None
    truncate: bool = True
    truncate_left: bool = False
    raw_scores: bool = False
    instruction: str | None = None
    documents_key: str = "documents"  # what the dialect calls them, for messages


@dataclass(frozen=True)
class Result:
    """One document of the answer: its position in the request, the ranker's own score, its relevance in [0, 1]
    (see the rankers' ``relevance``) and its text."""

    index: int
    score: float
    relevance: float
    text: str


@dataclass(frozen=True)
class RerankResponse:
    """The ranked answer, best first and cut to ``top_n``, with the ranker's name and the tokens it processed."""

    id: str
    model: str
    results: tuple[Result, ...]
    tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def optional_int(body: Mapping[str, Any], key: str, minimum: int = 1) -> int | None:
    """``body[key]`` as a count of at least ``minimum``, or None when absent or null; else a 422 naming it."""
    value = body.get(key)
    if value is None:
        return None
    if not _is_int(value):
        raise ServeError(422, f"{key} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ServeError(422, f"{key} must be at least {minimum}, got {value}")
    return value


def optional_bool(body: Mapping[str, Any], key: str, default: bool) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ServeError(422, f"{key} must be true or false, got {type(value).__name__} {value!r}")
    return value


def optional_text(body: Mapping[str, Any], key: str) -> str | None:
    """``body[key]`` as a non-empty string, or None when absent or null; else a 400/422 naming it."""
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ServeError(422, f"{key} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ServeError(400, f"{key} is empty: leave it out to keep the ranker's own")
    return value


def required_query(body: Mapping[str, Any], key: str = "query") -> str:
    if key not in body or body[key] is None:
        raise ServeError(422, f"missing field {key!r}: the search query")
    value = body[key]
    if not isinstance(value, str):
        raise ServeError(422, f"{key} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ServeError(400, f"{key} is empty: give the search query")
    return value


def document_texts(value: Any, key: str = "documents", objects: bool = True) -> tuple[str, ...]:
    """The texts of a request's documents: strings, or (``objects``) ``{"text": str}`` objects as Cohere v1 and
    Jina accept. An empty list, or an item of another kind, is refused naming its position."""
    if value is None:
        raise ServeError(422, f"missing field {key!r}: the documents to rerank")
    if not isinstance(value, list):
        raise ServeError(422, f"{key} must be a list of strings, got {type(value).__name__}")
    if not value:
        raise ServeError(400, f"{key} is empty: give at least one document")
    texts = []
    for i, item in enumerate(value):
        if objects and isinstance(item, dict):
            item = item.get("text")
            if not isinstance(item, str):
                raise ServeError(422, f'{key}[{i}] must be a string or an object with a string "text" field')
        if not isinstance(item, str):
            raise ServeError(422, f"{key}[{i}] must be a string, got {type(item).__name__}")
        texts.append(item)
    return tuple(texts)


def check_request(request: RerankRequest, limits: Limits) -> None:
    """Refuse a request beyond the service's limits (413 for size, naming the limit and its flag)."""
    if len(request.query) > limits.max_query_chars:
        raise ServeError(
            413,
            f"the query is {len(request.query)} characters; the limit is {limits.max_query_chars} (--max-query-chars)",
            "Validation",
        )
    if request.instruction is not None and len(request.instruction) > limits.max_query_chars:
        raise ServeError(
            413,
            f"the instruction is {len(request.instruction)} characters; the limit is {limits.max_query_chars} "
            "(--max-query-chars)",
            "Validation",
        )
    if len(request.documents) > limits.max_documents:
        raise ServeError(
            413,
            f"{len(request.documents)} documents in one request; the limit is {limits.max_documents} (--max-documents)",
            "Validation",
        )
    for i, text in enumerate(request.documents):
        if len(text) > limits.max_document_chars:
            raise ServeError(
                413,
                f"{request.documents_key}[{i}] is {len(text)} characters; the limit is {limits.max_document_chars} "
                "(--max-document-chars)",
                "Validation",
            )


def top(results: Sequence[Result], top_n: int | None) -> tuple[Result, ...]:
    """The best ``top_n`` (all when None or larger than the list)."""
    return tuple(results if top_n is None else results[:top_n])
