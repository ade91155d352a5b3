"""The one handler behind every route: the rankers being served, by name, each behind its micro-batcher, and
``rerank(request)`` (pick the ranker, check and prepare the documents, rank through the batcher, map the scores).

Rankers are described as the options table rebuilds them anywhere (``{"name", "method", "model", "backend",
"options"}``); those on the same weights (the same model and backend options) share one loaded model and one
model thread.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..rankers.base import PointScorer
from ..types import Document, Ranking, ranking_from_scores
from .batcher import BatcherClosedError, QueueFullError
from .protocol import Limits, RerankRequest, RerankResponse, Result, ServeError, check_request

SPEC_KEYS = ("name", "method", "model", "backend", "options")


@dataclass(frozen=True)
class Settings:
    """How the service batches and bounds its work (the ``llmrerank serve`` flags)."""

    limits: Limits = field(default_factory=Limits)
    max_batch_tokens: int = 8192
    batch_wait_ms: float = 5.0
    max_queue: int = 256
    timeout_s: float = 60.0
    micro_batching: bool = True
    api_keys: tuple[str, ...] = ()
    score_cache: int = 0  # entries of each pointwise ranker's score cache; 0: none


def check_specs(specs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The ranker descriptions, checked before any model loads: known keys, a method (left out: the one a trained
    folder records), unique names."""
    if not specs:
        raise ValueError("serve needs at least one ranker: --model and --method, or a --config with [[rankers]]")
    out, names = [], set()
    for i, spec in enumerate(specs):
        if not isinstance(spec, Mapping):
            raise ValueError(f"rankers[{i}] must be a table, got {type(spec).__name__}")
        unknown = sorted(set(spec) - set(SPEC_KEYS))
        if unknown:
            raise ValueError(f"rankers[{i}]: unknown key(s) {', '.join(unknown)}; accepted: {', '.join(SPEC_KEYS)}")
        model = spec.get("model") or "default"
        method = spec.get("method")
        if method is None:  # a folder written by `llmrerank train` (or a shipped one) records its method
            from ..registry import trained_method

            method = trained_method(model) if isinstance(model, str) else None
            if method is None:
                raise ValueError(
                    f"rankers[{i}] needs a method: its model {model!r} is not a trained folder that records one"
                )
        name = spec.get("name") or model
        if not isinstance(name, str):
            raise ValueError(f"rankers[{i}]: name must be a string, got {type(name).__name__}")
        if name in names:
            raise ValueError(f"two rankers are named {name!r}: give each its own name")
        names.add(name)
        for key in ("backend", "options"):
            if spec.get(key) is not None and not isinstance(spec[key], Mapping):
                raise ValueError(f"rankers[{i}].{key} must be a table of names to values")
        out.append({**spec, "name": name, "model": model, "method": method})
    return out


def load_rankers(specs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Build the rankers of ``specs`` (see :func:`check_specs`), loading each distinct (model, backend) once."""
    from .. import trained
    from ..backends.hf import HFBackend, dtype_name, resolve_device, weights_dtype
    from ..registry import Reranker, backend_options_for, options_class

    backends: dict[str, Any] = {}
    rankers: dict[str, Any] = {}
    for spec in check_specs(specs):
        # the method's own dtype where none is given: a likelihood and a yes/no ranker on one model share it only
        # where likelihood's "auto" is float32 on this device (the key holds the dtype the weights load in)
        backend_table = backend_options_for(spec["method"], dict(spec.get("backend") or {})).to_dict()
        device = resolve_device(backend_table["device"])
        loads_in = {**backend_table, "dtype": dtype_name(weights_dtype(backend_table["dtype"], device,
                                                                       backend_table["quantize"]))}
        options = dict(spec.get("options") or {})
        options_class(spec["method"]).build(options)  # checked before its model loads
        folder = trained.read(spec["model"])
        if folder is not None:  # a trained folder: its method and options, as Reranker(model=folder) restores them
            if folder.method != spec["method"]:
                raise ValueError(f"{spec['model']} was trained for method {folder.method!r}, not {spec['method']!r}")
            options = {**folder.ranker_options(), **options}
        # a published adapter (RankLLaMA's) is merged into its backend's weights: a ranker with another adapter,
        # or none, must not share them
        adapter = options.get("adapter")
        adapter = str(Path(adapter).expanduser().resolve()) if adapter is not None else None
        key = json.dumps([spec["model"], loads_in, adapter], sort_keys=True)
        if key not in backends:
            backends[key] = HFBackend.load(spec["model"], **backend_table)
        ranker = Reranker(spec["method"], backend=backends[key], **options)
        ranker.backend_table = backend_table  # its own options (dtype "auto", say), not those the copy loaded with
        rankers[spec["name"]] = ranker
    return rankers


class ScoreCache:
    """A least-recently-used map of (instruction, query, document text) to a pointwise ranker's score; one per
    ranker, so its options (template, normalisation, max_length) are part of the key by construction."""

    def __init__(self, size: int):
        from collections import OrderedDict

        self.size = size
        self.entries: OrderedDict[tuple[str | None, str, str], float] = OrderedDict()

    def get(self, key: tuple[str | None, str, str]) -> float | None:
        value = self.entries.get(key)
        if value is not None:
            self.entries.move_to_end(key)
        return value

    def put(self, key: tuple[str | None, str, str], value: float) -> None:
        self.entries[key] = value
        self.entries.move_to_end(key)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)


def estimated_tokens(query: str, docs: Sequence[Document], max_length: int | None) -> int:
    """The batcher's cost of one request: about four characters a token, each prompt capped at ``max_length``."""
    per_doc = [(len(query) + len(d.text) + len(d.title or "")) // 4 + 32 for d in docs]
    return sum(min(c, max_length) if max_length else c for c in per_doc)


VARIANTS = 64  # rankers kept per served ranker for request instructions (rebuilt when evicted: no model load)


class Served:
    """One ranker being served: its name, the ranker, its batcher, and how a request's documents are prepared.

    A request's ``instruction`` is served by a variant of the ranker (its options with that instruction, on the
    same loaded model), built on first use and kept in a small LRU; requests with different instructions still
    share one batcher, whose merged calls run each instruction's queries through its variant."""

    def __init__(self, name: str, ranker: Any, settings: Settings, executor: ThreadPoolExecutor, metrics: Any):
        from collections import OrderedDict

        from .batcher import Batcher

        self.name = name
        self.ranker = ranker
        self.tokenizer = getattr(getattr(ranker, "backend", None), "tokenizer", None)
        max_length = getattr(ranker.options, "max_length", None)
        self.metrics = metrics
        self.cache: ScoreCache | None = None
        if settings.score_cache and isinstance(ranker, PointScorer):
            self.cache = ScoreCache(settings.score_cache)
        self.variants: OrderedDict[str, Any] = OrderedDict()
        self._variants_lock = threading.Lock()  # the event loop builds variants, the model thread reads them
        self.batcher = Batcher(
            self.rank_many,
            cost=lambda key, docs: estimated_tokens(key[1] + (key[0] or ""), docs, max_length),
            max_batch_tokens=settings.max_batch_tokens,
            wait_ms=settings.batch_wait_ms,
            max_queue=settings.max_queue,
            name=name,
            enabled=settings.micro_batching,
            executor=executor,
            on_batch=lambda n, docs, cost: metrics.batch(name, n, docs, cost),
        )

    def ranker_for(self, instruction: str | None) -> Any:
        """The ranker that serves ``instruction`` (None: the ranker itself). A ranker that takes no instruction,
        or whose template has no ``{instruction}``, is a 422 naming why."""
        if instruction is None:
            return self.ranker
        with self._variants_lock:
            ranker = self.variants.get(instruction)
            if ranker is not None:
                self.variants.move_to_end(instruction)
                return ranker
        options_class = type(self.ranker.options)
        if "instruction" not in options_class.specs():
            raise ServeError(
                422, f"ranker {self.name!r} (method {self.ranker.method}) takes no instruction: leave it out"
            )
        try:
            options = options_class.build({**self.ranker.options.to_dict(), "instruction": instruction})
        except (TypeError, ValueError) as e:
            raise ServeError(422, f"ranker {self.name!r} cannot take this instruction: {e}") from None
        ranker = type(self.ranker)(self.ranker.backend, options)
        with self._variants_lock:
            self.variants[instruction] = ranker
            while len(self.variants) > VARIANTS:
                self.variants.popitem(last=False)
        return ranker

    async def submit(self, request: RerankRequest, docs: list[Document], timeout: float) -> Ranking:
        """Rank ``docs`` for the request's query (and instruction) through the batcher."""
        return await self.batcher.submit((request.instruction, request.query), docs, timeout=timeout)

    def rank_many(self, keys: list[tuple[str | None, str]], docs: list[list[Document]]) -> list[Ranking]:
        """A merged call of the batcher (on the model thread): ``keys`` are (instruction, query) pairs; each
        instruction's queries go through its ranker in one call."""
        groups: dict[str | None, list[int]] = {}
        for i, (instruction, _) in enumerate(keys):
            groups.setdefault(instruction, []).append(i)
        out: list[Ranking | None] = [None] * len(keys)
        for instruction, members in groups.items():
            ranker = self.ranker_for(instruction)
            queries = [keys[i][1] for i in members]
            rankings = self._rank(ranker, instruction, queries, [docs[i] for i in members])
            for i, ranking in zip(members, rankings):
                out[i] = ranking
        return out  # type: ignore[return-value]  # every position set

    def _rank(
        self, ranker: Any, instruction: str | None, queries: list[str], docs: list[list[Document]]
    ) -> list[Ranking]:
        """The ranker's ``rank_many``, through the score cache when there is one."""
        if self.cache is None:
            return ranker.rank_many(queries, docs)
        scores: list[list[float | None]] = [
            [self.cache.get((instruction, q, d.text)) for d in ds] for q, ds in zip(queries, docs)
        ]
        todo = [(i, [j for j, s in enumerate(row) if s is None]) for i, row in enumerate(scores)]
        todo = [(i, missing) for i, missing in todo if missing]
        hits = sum(len(row) for row in scores) - sum(len(missing) for _, missing in todo)
        tokens = [0] * len(queries)
        if todo:
            fresh = ranker.rank_many([queries[i] for i, _ in todo], [[docs[i][j] for j in m] for i, m in todo])
            for (i, missing), ranking in zip(todo, fresh):
                for position, score in zip(ranking.indices, ranking.scores):
                    j = missing[position]
                    scores[i][j] = score
                    self.cache.put((instruction, queries[i], docs[i][j].text), score)
                tokens[i] = int(ranking.metadata.get("tokens", 0))
        missing = {i: len(m) for i, m in todo}
        self.metrics.cache(self.name, hits, sum(missing.values()))
        out = []
        for i, (row, ds) in enumerate(zip(scores, docs)):
            meta = {"tokens": tokens[i], "cached": len(ds) - missing.get(i, 0)}
            out.append(ranking_from_scores([float(s) for s in row], ds, meta))  # type: ignore[arg-type]  # all set
        return out

    def document_budget(self, query: str, ranker: Any = None) -> int | None:
        """How many tokens of a document ``ranker`` (default: the served one) reads for ``query``: what its prompt
        leaves within ``max_length`` (one document a prompt), or its ``passage_tokens`` (several a prompt); None
        if unbounded."""
        ranker = self.ranker if ranker is None else ranker
        renderer = getattr(ranker, "renderer", None)
        if renderer is not None and hasattr(renderer, "parts") and hasattr(ranker.options, "max_length"):
            return renderer.document_budget(renderer.parts(query))
        return getattr(ranker.options, "passage_tokens", None)

    def prepare(self, request: RerankRequest, ranker: Any = None) -> list[Document]:
        """The request's documents as the ranker will read them: cut to ``max_tokens_per_doc``, cut from the
        start (TEI's ``truncation_direction: Left``) or refused when too long (``truncate: false``)."""
        texts = list(request.documents)
        if self.tokenizer is None:
            return [Document(t) for t in texts]
        needs_budget = not request.truncate or request.truncate_left
        budget = self.document_budget(request.query, ranker) if needs_budget else None
        if request.max_tokens_per_doc is not None:
            budget = request.max_tokens_per_doc if budget is None else min(budget, request.max_tokens_per_doc)
        if budget is None:
            return [Document(t) for t in texts]
        out = []
        for i, text in enumerate(texts):
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            if len(ids) > budget and not request.truncate and request.max_tokens_per_doc is None:
                raise ServeError(
                    413,
                    f"{request.documents_key}[{i}] is {len(ids)} tokens; ranker {self.name!r} reads at most {budget} "
                    "tokens of a document with this query (its max_length less the prompt): shorten it, or send "
                    "truncate: true",
                )
            if len(ids) > budget:
                kept = ids[-budget:] if request.truncate_left else ids[:budget]
                text = self.tokenizer.decode(kept)
            out.append(Document(text))
        return out


class Service:
    """The rankers served and the one ``rerank`` every route calls."""

    def __init__(self, specs: Sequence[Mapping[str, Any]], settings: Settings, metrics: Any, rankers: Any = None):
        self.specs = check_specs(specs)
        self.settings = settings
        self.metrics = metrics
        self.served: dict[str, Served] = {}
        self.ready = False
        self.failed: str | None = None
        self._given = rankers  # already built rankers (tests, a library user), by name

    # --- loading ------------------------------------------------------------------------------------------

    def load(self) -> None:
        """Build the rankers (in a thread, while /health answers 503) and their batchers."""
        try:
            rankers = self._given if self._given is not None else load_rankers(self.specs)
            executors: dict[int, ThreadPoolExecutor] = {}
            for spec in self.specs:
                ranker = rankers[spec["name"]]
                # one model thread per loaded model: rankers on the same weights never run it at once
                executor = executors.setdefault(
                    id(ranker.backend), ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmrerank-model")
                )
                self.served[spec["name"]] = Served(spec["name"], ranker, self.settings, executor, self.metrics)
            self.metrics.watch(self)
            self.ready = True
        except Exception as e:  # reported by /health and the routes; the process keeps answering
            self.failed = f"{type(e).__name__}: {e}"
            raise

    async def close(self) -> None:
        """Finish every accepted request, then stop the batchers."""
        for served in self.served.values():
            await served.batcher.close()

    # --- ranking ------------------------------------------------------------------------------------------

    def pick(self, name: str | None) -> Served:
        if not self.ready:
            raise ServeError(503, "the models are still loading; retry shortly", "Unhealthy", {"Retry-After": "5"})
        if name is None:
            return next(iter(self.served.values()))
        if name not in self.served:
            raise ServeError(404, f"model {name!r} is not served here; served: {', '.join(self.served)}", "Validation")
        return self.served[name]

    async def rerank(self, request: RerankRequest) -> RerankResponse:
        served = self.pick(request.model)
        check_request(request, self.settings.limits)
        ranker = served.ranker_for(request.instruction)
        try:
            ranker.check_query(request.query)
        except ValueError as e:
            raise ServeError(422, f"ranker {served.name!r} cannot score this query: {e}") from None
        docs = served.prepare(request, ranker)
        try:
            ranking: Ranking = await served.submit(request, docs, timeout=self.settings.timeout_s)
        except QueueFullError:
            raise ServeError(
                503, "the server is at capacity; retry shortly", "Overloaded", {"Retry-After": "1"}
            ) from None
        except BatcherClosedError:
            raise ServeError(503, "the server is shutting down", "Unhealthy") from None
        except asyncio.TimeoutError:
            raise ServeError(
                504, f"no answer within {self.settings.timeout_s:g} s; retry, or send fewer documents", "Backend"
            ) from None
        except FloatingPointError as e:
            raise ServeError(500, str(e), "Backend") from None
        except (ValueError, TypeError) as e:  # the ranker refused this input (what the checks above cannot see)
            raise ServeError(422, f"ranker {served.name!r} cannot rank this request: {e}") from None
        relevance = ranker.relevance(ranking)
        results = tuple(
            Result(index=i, score=s, relevance=r, text=request.documents[i])
            for i, s, r in zip(ranking.indices, ranking.scores, relevance)
        )
        tokens = int(ranking.metadata.get("tokens", 0))
        self.metrics.scored(served.name, len(docs), tokens)
        return RerankResponse(id=str(uuid.uuid4()), model=served.name, results=results, tokens=tokens)

    def models(self) -> dict[str, Any]:
        """``GET /v1/models``: the rankers served, as OpenAI-style model objects with their method and options."""
        now = int(time.time())
        data = []
        for spec in self.specs:
            item = {"id": spec["name"], "object": "model", "created": now, "owned_by": "llmrerank"}
            served = self.served.get(spec["name"])
            item["llmrerank"] = served.ranker.config() if served else {"method": spec["method"], "model": spec["model"]}
            data.append(item)
        return {"object": "list", "data": data}
