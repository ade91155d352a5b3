"""The HTTP routes: thin, each parses its dialect, calls the one :class:`~.service.Service`, formats its dialect.

Every answer, errors included, is JSON in the shape of the route's dialect; no traceback ever reaches a client
(an unexpected failure is logged here and answered 500 with a one-line message), and the service stays healthy.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the routes' annotations (``request: Request``) at
# definition time, and Request is imported inside create_app so that importing this module needs no fastapi.
import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from . import dialects
from .metrics import Metrics
from .protocol import ServeError
from .service import Service

log = logging.getLogger("llmrerank.serve")


def both_error(error: ServeError) -> dict[str, Any]:
    """``/rerank`` before its body shows which dialect it is: TEI's keys and everyone else's."""
    return {"message": error.message, "error": error.message, "error_type": error.kind}


def create_app(service: Service, on_load_failure: Callable[[str], None] | None = None) -> Any:
    """The FastAPI app serving ``service``; its models load in a thread once the app starts (``/health`` answers
    503 until then), and stopping it finishes every accepted request first."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    metrics: Metrics = service.metrics
    limits = service.settings.limits
    keys = set(service.settings.api_keys)

    @asynccontextmanager
    async def lifespan(app: Any):
        loop = asyncio.get_running_loop()
        loading = loop.run_in_executor(None, service.load)

        def loaded(future: asyncio.Future) -> None:
            if future.exception() is not None:
                if on_load_failure is not None:  # the caller reports it (the CLI: one error line)
                    on_load_failure(service.failed or "unknown failure")
                else:
                    log.error("the models failed to load: %s", service.failed)

        loading.add_done_callback(loaded)
        yield
        if not loading.done():
            await asyncio.wait([loading])
        await service.close()

    app = FastAPI(title="llmrerank", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    def authorise(request: Request) -> None:
        if not keys:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or token.strip() not in keys:
            raise ServeError(401, "missing or unknown API key: send the header Authorization: Bearer <key>", "Auth")

    async def body_of(request: Request) -> dict[str, Any]:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise ServeError(
                413, f"the body is {declared} bytes; the limit is {limits.max_body_bytes} (--max-body-bytes)"
            )
        raw = await request.body()
        if len(raw) > limits.max_body_bytes:
            raise ServeError(
                413, f"the body is {len(raw)} bytes; the limit is {limits.max_body_bytes} (--max-body-bytes)"
            )
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ServeError(400, f"the body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise ServeError(400, f"the body must be a JSON object, got {type(body).__name__}")
        return body

    async def answer(
        route: str,
        request: Request,
        handle: Callable[[dict[str, Any]], Awaitable[Any]],
        error: Callable[[ServeError], dict[str, Any]] = dialects.message_error,
        needs_body: bool = True,
    ) -> Any:
        start = time.perf_counter()
        status, headers = 200, {}
        try:
            authorise(request)
            content = await handle(await body_of(request) if needs_body else {})
        except ServeError as e:
            status, headers = e.status, e.headers
            chooser = getattr(e, "dialect_error", None)
            content = (chooser or error)(e)
        except Exception:  # a bug or a model failure: logged here, one line to the client
            log.exception("%s failed", route)
            status, content = (
                500,
                error(ServeError(500, "internal error: the server could not answer; see its log", "Backend")),
            )
        metrics.request(route, status, time.perf_counter() - start)
        return JSONResponse(content, status_code=status, headers=headers)

    def cohere_route(route: str, parse: Callable[[dict[str, Any]], Any], answer_of: Callable[..., Any]) -> None:
        """A route of one Cohere-shaped dialect: parse, rank, format."""

        async def endpoint(request: Request) -> Any:
            async def handle(body: dict[str, Any]) -> Any:
                parsed = parse(body)
                return answer_of(await service.rerank(parsed), parsed)

            return await answer(route, request, handle)

        app.post(route)(endpoint)

    cohere_route("/v1/rerank", dialects.parse_cohere_v1, dialects.format_cohere_v1)
    cohere_route("/v2/rerank", dialects.parse_cohere_v2, dialects.format_cohere_v2)

    @app.post("/rerank")
    async def rerank(request: Request) -> Any:
        async def handle(body: dict[str, Any]) -> Any:
            tei = "texts" in body  # text-embeddings-inference; else the Cohere/Jina shape
            parse, answer_of = (
                (dialects.parse_tei, dialects.format_tei)
                if tei
                else (dialects.parse_cohere_v1, dialects.format_cohere_v1)
            )
            try:
                parsed = parse(body)
                return answer_of(await service.rerank(parsed), parsed)
            except ServeError as e:
                e.dialect_error = dialects.tei_error if tei else dialects.message_error  # type: ignore[attr-defined]
                raise

        return await answer("/rerank", request, handle, error=both_error)

    @app.post("/score")
    async def score(request: Request) -> Any:
        async def handle(body: dict[str, Any]) -> Any:
            requests, where = dialects.parse_vllm_score(body)
            responses = await asyncio.gather(*(service.rerank(r) for r in requests))
            return dialects.format_vllm_score(responses, where, f"score-{uuid.uuid4()}")

        return await answer("/score", request, handle)

    @app.get("/health")
    async def health() -> Any:
        if service.ready:
            return JSONResponse({"status": "ok", "models": list(service.served)})
        if service.failed:
            return JSONResponse({"message": f"the models failed to load: {service.failed}"}, status_code=503)
        return JSONResponse({"message": "the models are loading"}, status_code=503, headers={"Retry-After": "5"})

    @app.get("/v1/models")
    async def models(request: Request) -> Any:
        async def handle(body: dict[str, Any]) -> Any:
            return service.models()

        return await answer("/v1/models", request, handle, needs_body=False)

    @app.get("/metrics")
    async def prometheus(request: Request) -> Any:
        try:
            authorise(request)
        except ServeError as e:
            return JSONResponse(dialects.message_error(e), status_code=e.status)
        content, media_type = metrics.render()
        return Response(content, media_type=media_type)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Any:
        message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
        text = message.get(exc.status_code, str(exc.detail))
        return JSONResponse({"message": text}, status_code=exc.status_code)

    return app
