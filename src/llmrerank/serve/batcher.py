"""Micro-batching for the server: concurrent rerank requests for one ranker merged into one ``rank_many`` call.

A :class:`Batcher` owns one worker task on the event loop and one model thread. Requests wait in a bounded FIFO
queue; the worker takes the first, adds the following ones while their summed cost stays within
``max_batch_tokens`` (waiting up to ``wait_ms`` for more to arrive, from its first request or from the end of
the call it queued behind), and runs ``rank_many`` on the model
thread, so the loop keeps serving and the model, which is not thread-safe, never runs two calls at once.

Lifecycle: create and use a Batcher inside one running event loop. The worker starts on the first
:meth:`Batcher.submit` (there is no ``start``); :meth:`Batcher.close` drains it and ends it.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Batcher", "BatcherClosedError", "QueueFullError"]

logger = logging.getLogger(__name__)

RankMany = Callable[[list[Any], list[list[Any]]], list[Any]]  # (queries, document lists) -> results


class QueueFullError(Exception):
    """The bounded queue already holds ``max_queue`` waiting requests (the route answers 503 + Retry-After)."""


class BatcherClosedError(Exception):
    """A request was submitted after :meth:`Batcher.close` began (the route answers 503)."""


@dataclass(eq=False)
class _Request:
    query: Any
    docs: list[Any]
    cost: int
    arrived: float
    future: asyncio.Future[Any] = field(repr=False)


class Batcher:
    """Merge concurrent requests for one ranker into ``rank_many(queries, docs_lists)`` calls.

    Args:
        rank_many: the model call; returns one result per query, in order. A query is passed through as
            submitted (a string, or any key the caller's ``rank_many`` and ``cost`` understand). It runs on a
            single thread the batcher owns, never on the event loop and never two calls at once.
        cost: ``cost(query, docs)``, a request's size in tokens (an int >= 0), computed once at submit.
        max_batch_tokens: the most summed cost one merged call may hold; a request that alone costs more
            still runs, alone. 0 turns micro-batching off.
        wait_ms: how long a batch waits for more requests, counted from its first request's submit or, when
            that request queued behind a running call, from that call's end: the clients that call answered
            can then send their next requests into this batch (under steady load from N clients, calls of N
            requests rather than two alternating halves). 0 takes only what is already queued. A batch that is
            full goes at once.
        max_queue: the most requests waiting (not yet in a running batch); one more raises QueueFullError.
        name: names the batcher in error messages and its thread.
        on_batch: ``on_batch(n_requests, n_documents, total_cost)``, called on the event loop after each
            successful model call (metrics); an exception it raises is logged, not propagated.
        enabled: False turns micro-batching off, as ``max_batch_tokens=0`` does: each request is its own
            ``rank_many`` call, still one at a time on the one thread.
        executor: a one-thread executor to run the model calls on, shared by the batchers of rankers on one
            loaded model so that it never runs twice at once; left running by :meth:`close` (its owner stops
            it). Default: the batcher's own.

    Failure isolation: when a merged call raises, each of its requests is run again alone, so a bad request
    fails only itself; its submitter gets exactly the exception ``rank_many`` raised for it. A call that
    returns a different number of results than queries counts as failed (a RuntimeError). A request whose
    submitter has stopped waiting is not run again.
    """

    def __init__(
        self,
        rank_many: RankMany,
        *,
        cost: Callable[[Any, Sequence[Any]], int],
        max_batch_tokens: int = 16384,
        wait_ms: float = 5.0,
        max_queue: int = 256,
        name: str = "",
        on_batch: Callable[[int, int, int], None] | None = None,
        enabled: bool = True,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        if not callable(rank_many):
            raise TypeError(f"rank_many must be callable, got {type(rank_many).__name__}")
        if not callable(cost):
            raise TypeError(f"cost must be callable, got {type(cost).__name__}")
        if on_batch is not None and not callable(on_batch):
            raise TypeError(f"on_batch must be callable or None, got {type(on_batch).__name__}")
        if not _is_int(max_batch_tokens) or max_batch_tokens < 0:
            raise ValueError(
                f"max_batch_tokens must be an int >= 0 (0 turns micro-batching off), got {max_batch_tokens!r}"
            )
        if not _is_number(wait_ms) or not math.isfinite(wait_ms) or wait_ms < 0:
            raise ValueError(f"wait_ms must be a finite number >= 0, got {wait_ms!r}")
        if not _is_int(max_queue) or max_queue < 1:
            raise ValueError(f"max_queue must be an int >= 1, got {max_queue!r}")
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        self._rank_many = rank_many
        self._cost = cost
        self._max_batch_tokens = max_batch_tokens
        self._wait_s = wait_ms / 1000.0
        self._max_queue = max_queue
        self._on_batch = on_batch
        self._batching = bool(enabled) and max_batch_tokens > 0
        self._label = f"batcher {name!r}" if name else "batcher"
        self._owns_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"llmrerank-batcher-{name or 'model'}"
        )
        self._queue: deque[_Request] = deque()
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()  # bound to the loop on first use (Python >= 3.10)
        self._worker: asyncio.Task[None] | None = None
        self._free_since = -math.inf  # the loop time the last model call ended

    @property
    def queue_depth(self) -> int:
        """Requests waiting, not yet in a running batch."""
        return len(self._queue)

    async def submit(self, query: Any, docs: list[Any], timeout: float | None = None) -> Any:
        """Queue one request and return its own result (its element of ``rank_many``'s list).

        Raises:
            BatcherClosedError: :meth:`close` has begun.
            QueueFullError: ``max_queue`` requests are already waiting.
            asyncio.TimeoutError: no result within ``timeout`` seconds. A request still queued is dropped
                (never computed); one already running is computed and its result discarded.
            Exception: whatever ``rank_many`` raised for this request.
        """
        if timeout is not None and (not _is_number(timeout) or math.isnan(timeout) or timeout < 0):
            raise ValueError(f"timeout must be None or a number of seconds >= 0, got {timeout!r}")
        loop = asyncio.get_running_loop()
        if self._closing:
            raise BatcherClosedError(f"{self._label} is closed: it accepts no new requests")
        if self._loop is not None and self._loop is not loop:
            raise RuntimeError(f"{self._label} is bound to another event loop; create one Batcher per event loop")
        if len(self._queue) >= self._max_queue:
            raise QueueFullError(f"{self._label}: queue full ({self._max_queue} requests waiting); retry later")
        cost = self._cost(query, docs)
        if not _is_int(cost) or cost < 0:
            raise ValueError(f"{self._label}: cost(query, docs) must return an int >= 0, got {cost!r}")
        request = _Request(query, docs, cost, loop.time(), loop.create_future())
        self._queue.append(request)
        self._start(loop)
        self._wake.set()
        try:
            # shield: timing out (or the caller being cancelled) must not cancel the future the worker fills.
            return await asyncio.wait_for(asyncio.shield(request.future), timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            self._abandon(request)
            raise

    async def close(self) -> None:
        """Stop accepting requests, finish every request already accepted, then stop the worker and thread.

        New submits raise :class:`BatcherClosedError` from the moment this is called. Safe to call twice.
        """
        self._closing = True
        self._wake.set()
        if self._worker is not None and not self._worker.done():
            await asyncio.shield(self._worker)
        if self._owns_executor:
            self._executor.shutdown(wait=True)

    # --- internals ------------------------------------------------------------------------------------------

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._worker is None:
            self._loop = loop
            self._worker = loop.create_task(self._work(), name=f"llmrerank-{self._label}")

    def _abandon(self, request: _Request) -> None:
        """The submitter stopped waiting: drop the request if still queued; discard its result if running."""
        try:
            self._queue.remove(request)
        except ValueError:
            pass
        request.future.cancel()

    async def _work(self) -> None:
        running: list[_Request] = []
        try:
            while True:
                batch = await self._next_batch()
                if batch is None:
                    return
                running = batch
                await self._run(batch)
                running = []
                self._free_since = asyncio.get_running_loop().time()
        finally:
            # Reached with requests left only if the worker itself was cancelled (the loop shutting down).
            for request in [*running, *self._queue]:
                if not request.future.done():
                    request.future.set_exception(
                        BatcherClosedError(f"{self._label} stopped before this request finished")
                    )
            self._queue.clear()

    async def _next_batch(self) -> list[_Request] | None:
        """Wait for the next batch and take it off the queue; None once closing and the queue is empty."""
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closing:
                    return None
                self._wake.clear()
                await self._wake.wait()
                continue
            size, full = self._fitting()
            remaining = max(self._queue[0].arrived, self._free_since) + self._wait_s - loop.time()
            if full or self._closing or remaining <= 0:
                return [self._queue.popleft() for _ in range(size)]
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    def _fitting(self) -> tuple[int, bool]:
        """How many queued requests, from the front, fit one batch; and whether the batch can take no more."""
        if not self._batching:
            return 1, True
        total = self._queue[0].cost
        size = 1
        for request in list(self._queue)[1:]:
            if total + request.cost > self._max_batch_tokens:
                return size, True
            total += request.cost
            size += 1
        return size, total >= self._max_batch_tokens

    async def _run(self, batch: list[_Request]) -> None:
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._executor, self._call, batch)
        except Exception as error:
            if len(batch) == 1:
                _deliver_error(batch[0], error)
                return
            for request in batch:  # isolate the failure: each request alone
                if request.future.done():  # its submitter has gone; nothing to compute
                    continue
                try:
                    (result,) = await loop.run_in_executor(self._executor, self._call, [request])
                except Exception as single_error:
                    _deliver_error(request, single_error)
                else:
                    _deliver(request, result)
                    self._report([request])
            return
        for request, result in zip(batch, results):
            _deliver(request, result)
        self._report(batch)

    def _call(self, batch: list[_Request]) -> list[Any]:
        """Runs on the model thread."""
        results = self._rank_many([r.query for r in batch], [r.docs for r in batch])
        results = list(results)
        if len(results) != len(batch):
            raise RuntimeError(f"{self._label}: rank_many returned {len(results)} results for {len(batch)} queries")
        return results

    def _report(self, batch: list[_Request]) -> None:
        if self._on_batch is None:
            return
        try:
            self._on_batch(len(batch), sum(len(r.docs) for r in batch), sum(r.cost for r in batch))
        except Exception:
            logger.exception("%s: on_batch raised", self._label)


def _deliver(request: _Request, result: Any) -> None:
    if not request.future.done():
        request.future.set_result(result)


def _deliver_error(request: _Request, error: BaseException) -> None:
    if not request.future.done():
        request.future.set_exception(error)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
