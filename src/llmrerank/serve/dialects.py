"""The request and response shapes people already call, as tables of keys over one internal protocol.

- ``cohere_v1``: ``POST /v1/rerank`` (Cohere v1, and Jina's identical shape); also ``/rerank`` with
  ``documents`` (vLLM serves that shape there).
- ``cohere_v2``: ``POST /v2/rerank``.
- ``tei``: ``POST /rerank`` with ``texts`` (text-embeddings-inference): a bare list, errors as
  ``{"error", "error_type"}``.
- ``vllm_score``: ``POST /score`` (``text_1``/``text_2`` or ``queries``/``documents``): scores in input order.

Field names are exactly the originals'; fields a dialect does not know are ignored, as the originals do. Every
dialect also reads ``instruction``, an llmrerank field (see :class:`~.protocol.RerankRequest`). Each
dialect parses a body into :class:`~.protocol.RerankRequest` (several for ``/score``), formats a
:class:`~.protocol.RerankResponse`, and formats an error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .protocol import (
    RerankRequest,
    RerankResponse,
    ServeError,
    document_texts,
    optional_bool,
    optional_int,
    optional_text,
    required_query,
    top,
)


def _model(body: Mapping[str, Any]) -> str | None:
    value = body.get("model")
    if value is not None and not isinstance(value, str):
        raise ServeError(422, f"model must be a string, got {type(value).__name__}")
    return value


def message_error(error: ServeError) -> dict[str, Any]:
    """How every route but TEI's answers an error."""
    return {"message": error.message}


# --- Cohere v1 and Jina: /v1/rerank --------------------------------------------------------------------------


def parse_cohere_v1(body: Mapping[str, Any]) -> RerankRequest:
    return RerankRequest(
        query=required_query(body),
        documents=document_texts(body.get("documents")),
        model=_model(body),
        top_n=optional_int(body, "top_n"),
        return_documents=optional_bool(body, "return_documents", False),
        instruction=optional_text(body, "instruction"),
    )


def format_cohere_v1(response: RerankResponse, request: RerankRequest) -> dict[str, Any]:
    results = []
    for r in top(response.results, request.top_n):
        item: dict[str, Any] = {"index": r.index, "relevance_score": r.relevance}
        if request.return_documents:
            item["document"] = {"text": r.text}
        results.append(item)
    return {
        "id": response.id,
        "model": response.model,
        "results": results,
        "usage": {"total_tokens": response.tokens},
        "meta": {"api_version": {"version": "1"}, "billed_units": {"search_units": 1}},
    }


# --- Cohere v2: /v2/rerank ------------------------------------------------------------------------------------


def parse_cohere_v2(body: Mapping[str, Any]) -> RerankRequest:
    return RerankRequest(
        query=required_query(body),
        documents=document_texts(body.get("documents"), objects=False),
        model=_model(body),
        top_n=optional_int(body, "top_n"),
        max_tokens_per_doc=optional_int(body, "max_tokens_per_doc"),
        instruction=optional_text(body, "instruction"),
    )


def format_cohere_v2(response: RerankResponse, request: RerankRequest) -> dict[str, Any]:
    return {
        "id": response.id,
        "results": [{"index": r.index, "relevance_score": r.relevance} for r in top(response.results, request.top_n)],
        "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}},
    }


# --- text-embeddings-inference: /rerank with "texts" ----------------------------------------------------------


def parse_tei(body: Mapping[str, Any]) -> RerankRequest:
    direction = body.get("truncation_direction", "Right")
    if direction not in ("Right", "Left", "right", "left"):
        raise ServeError(422, f'truncation_direction must be "Right" or "Left", got {direction!r}')
    return RerankRequest(
        query=required_query(body),
        documents=document_texts(body.get("texts"), key="texts", objects=False),
        model=_model(body),
        return_documents=optional_bool(body, "return_text", False),
        truncate=optional_bool(body, "truncate", False),
        truncate_left=direction.lower() == "left",
        raw_scores=optional_bool(body, "raw_scores", False),
        instruction=optional_text(body, "instruction"),
        documents_key="texts",
    )


def format_tei(response: RerankResponse, request: RerankRequest) -> list[dict[str, Any]]:
    out = []
    for r in response.results:
        item: dict[str, Any] = {"index": r.index, "score": r.score if request.raw_scores else r.relevance}
        if request.return_documents:
            item["text"] = r.text
        out.append(item)
    return out


def tei_error(error: ServeError) -> dict[str, Any]:
    return {"error": error.message, "error_type": error.kind}


# --- vLLM: /score ---------------------------------------------------------------------------------------------


def parse_vllm_score(body: Mapping[str, Any]) -> tuple[list[RerankRequest], list[tuple[int, int]]]:
    """The requests a score call needs, one per distinct query, and for each output item (in input order) which
    request and which document in it holds its score.

    ``text_1`` one string and ``text_2`` a list (or one string) score every document against the query;
    ``text_1`` and ``text_2`` lists of one length score them pair by pair. ``queries``/``documents`` are read the
    same way.
    """
    first_key, second_key = (
        ("queries", "documents") if "queries" in body or "documents" in body else ("text_1", "text_2")
    )
    first, second = body.get(first_key), body.get(second_key)
    if first is None or second is None:
        raise ServeError(422, f"missing field {first_key!r} or {second_key!r}: the texts to score against each other")
    model = _model(body)
    instruction = optional_text(body, "instruction")
    queries = [first] if isinstance(first, str) else first
    documents = [second] if isinstance(second, str) else second
    if not isinstance(queries, list) or not isinstance(documents, list):
        raise ServeError(422, f"{first_key} and {second_key} must each be a string or a list of strings")
    texts_1 = document_texts(queries, key=first_key, objects=False)
    texts_2 = document_texts(documents, key=second_key, objects=False)
    for i, q in enumerate(texts_1):
        if not q.strip():
            raise ServeError(400, f"{first_key}[{i}] is empty: give the search query")
    if len(texts_1) == 1:
        request = RerankRequest(query=texts_1[0], documents=texts_2, model=model, instruction=instruction)
        return [request], [(0, j) for j in range(len(texts_2))]
    if len(texts_1) != len(texts_2):
        raise ServeError(
            422,
            f"{first_key} has {len(texts_1)} texts and {second_key} {len(texts_2)}: give one query, or as many "
            "queries as documents",
        )
    grouped: dict[str, list[int]] = {}
    for i, q in enumerate(texts_1):
        grouped.setdefault(q, []).append(i)
    requests, where = [], [(0, 0)] * len(texts_1)
    for r, (q, items) in enumerate(grouped.items()):
        docs = tuple(texts_2[i] for i in items)
        requests.append(RerankRequest(query=q, documents=docs, model=model, instruction=instruction))
        for j, i in enumerate(items):
            where[i] = (r, j)
    return requests, where


def format_vllm_score(
    responses: Sequence[RerankResponse], where: Sequence[tuple[int, int]], request_id: str
) -> dict[str, Any]:
    by_index = [{r.index: r for r in response.results} for response in responses]
    data = [{"index": i, "object": "score", "score": by_index[r][j].relevance} for i, (r, j) in enumerate(where)]
    tokens = sum(r.tokens for r in responses)
    return {
        "id": request_id,
        "object": "list",
        "model": responses[0].model if responses else None,
        "data": data,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
