"""The Ray engine: a run sharded by query batch onto a pool of Ray actors; the driver alone writes the output.

Each worker is a Ray actor that rebuilds the ranker once from its options table
(``Reranker.from_config(config)``); the driver sends it whole batches of queries (the same batches the local
engine ranks, so the scores are the same) and yields each batch's rankings as it finishes. A worker whose process
dies is replaced and its unfinished batches are ranked again; a query that a worker's ranker refuses ends the
run with that query's id and the worker's message. ::

    from llmrerank.distributed import RayEngine
    from llmrerank.pipeline import rerank_run

    engine = RayEngine(num_workers=2)  # a local cluster; RayEngine(address="head:6379") joins one
    rerank_run({"method": "likelihood", "model": "smollm2-135m"}, queries, corpus, run, "out.trec", engine=engine)

``ray`` is the ``ray`` extra: ``pip install "llmrerank[ray]"``.
"""

from __future__ import annotations

import logging
import math
import os
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .extras import require
from .types import DocLike, Ranking, as_documents

# what a worker's failure is raised as on the driver: the first of these among its exception's classes, else
# RuntimeError (an unexpected failure)
_RAISED_AS: dict[str, type[Exception]] = {
    c.__name__: c
    for c in (
        FileNotFoundError,
        KeyError,
        ValueError,
        TypeError,
        ImportError,
        FloatingPointError,
        MemoryError,
        OSError,
    )
}


class EngineError(Exception):
    """The engine cannot go on: no cluster to connect to, or a batch whose worker kept dying."""


@dataclass(frozen=True)
class RayEngine:
    """How a run is spread over a Ray cluster.

    Args:
        num_workers: actors, one ranker each; default what the cluster's resources allow (its CPUs, or its GPUs
            with ``gpus_per_worker``, divided by what one worker takes).
        address: a running cluster (``"head-node:6379"``, ``"auto"``, ``"ray://..."``); none: a local cluster
            is started for the run and stopped after it (or the one this process already joined is used).
        gpus_per_worker: GPUs each worker reserves (fractions share a GPU: 0.5 puts two workers on one); the
            ranker's ``device="auto"`` then picks the GPU Ray assigns. A cluster without GPUs is an error.
        cpus_per_worker: CPUs each worker reserves; also its torch thread count, unless the ranker sets
            ``threads``.
        max_retries: how often one batch is ranked again after the worker ranking it died, before the run ends.
        inflight: batches queued on each worker at once (the next is ready when one finishes).
    """

    num_workers: int | None = None
    address: str | None = None
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    max_retries: int = 3
    inflight: int = 2

    def __post_init__(self) -> None:
        _count("num_workers", self.num_workers, allow_none=True)
        _count("max_retries", self.max_retries, minimum=0)
        _count("inflight", self.inflight)
        for name in ("gpus_per_worker", "cpus_per_worker"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise TypeError(f"{name} must be a number, got {value!r}")
        if self.gpus_per_worker < 0:
            raise ValueError(f"gpus_per_worker must be at least 0, got {self.gpus_per_worker}")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"cpus_per_worker must be above 0, got {self.cpus_per_worker}")
        if self.address is not None and (not isinstance(self.address, str) or not self.address.strip()):
            raise ValueError(f"address must name a Ray cluster (host:port, auto or ray://...), got {self.address!r}")

    def start(self, ranker: Any) -> RayRanker:
        """The workers for ``ranker`` (a Ranker, whose ``config()`` they rebuild, or a config mapping), started:
        a :class:`RayRanker`, to use as a context manager. The config is checked here, before any cluster
        starts; a worker that cannot build the ranker raises its error."""
        from .registry import check_config, check_options

        require("ray", "the Ray engine")
        config = check_config(ranker if isinstance(ranker, Mapping) else ranker.config())
        check_options(config)
        return RayRanker(self, config)


def _count(name: str, value: Any, minimum: int = 1, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")


class _RemoteBackend:
    """What the driver knows of the workers' backend: its name, the dtype it resolved to, and the running totals
    of the batches the driver has received (a dead worker's unfinished work is not counted)."""

    def __init__(self, name: Any, dtype: Any):
        from .backends.base import BackendStats

        self.name = name
        self.dtype = dtype
        self.stats = BackendStats()

    def add(self, counts: Mapping[str, int]) -> None:
        for key, value in counts.items():
            if hasattr(self.stats, key):
                setattr(self.stats, key, getattr(self.stats, key) + value)


class RayRanker:
    """A ranker whose work runs on a pool of Ray actors (built by :meth:`RayEngine.start`).

    It offers what :func:`~llmrerank.pipeline.rerank` and :func:`~llmrerank.pipeline.rerank_run` use: ``method``,
    ``describe()`` and ``config()`` (the workers' ranker's), ``check_queries`` (asked of one worker),
    ``rank_batches`` (many batches over the pool) and ``rank_many``/``rank`` (one batch). :meth:`close` (or the
    end of a ``with`` block) ends the workers, and the local cluster if it started one.
    """

    def __init__(self, engine: RayEngine, config: dict[str, Any]):
        import ray

        self.engine = engine
        self._ray = ray
        self._owned = False
        self._workers: list[Any] = []
        self._actor: Any = None  # the actor class, with the resources of one worker
        try:
            self._connect()
            self.num_workers = self._plan_workers()
            threads = max(1, int(engine.cpus_per_worker))
            self._config = config
            backend = dict(config["backend"])
            if backend.get("threads") is None:  # a worker uses the CPUs it reserved, not the machine's
                backend["threads"] = threads
            self._worker_config = {**config, "backend": backend}
            self._workers = [self._new_worker() for _ in range(self.num_workers)]
            try:
                answers = ray.get([w.info.remote() for w in self._workers])
            except ray.exceptions.RayError as e:  # a worker's process died while it loaded the model
                raise EngineError(f"a Ray worker died while building the ranker: {_first_line(e)}") from e
            infos = [self._checked(info) for info in answers]
        except BaseException:
            self.close()
            raise
        first = infos[0]
        self.method = first["config"]["method"]
        self._describe = first["describe"]
        self._resolved = first["config"]
        self.backend = _RemoteBackend(first["config"].get("model"), first["dtype"])
        self.options = _options(self._resolved)
        self.replaced = 0  # workers replaced after their process died
        self.redone = 0  # batches ranked again because of that

    @property
    def engine_info(self) -> dict[str, Any]:
        """The engine as the run's sidecar records it: the workers, their resources, and the faults so far."""
        e = self.engine
        return {
            "name": "ray",
            "workers": self.num_workers,
            "address": e.address,
            "cpus_per_worker": e.cpus_per_worker,
            "gpus_per_worker": e.gpus_per_worker,
            "workers_replaced": self.replaced,
            "batches_redone": self.redone,
        }

    # -- the cluster -----------------------------------------------------------------------------------------

    def _connect(self) -> None:
        ray = self._ray
        if ray.is_initialized():  # this process already joined a cluster: use it, and leave it running
            return
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report leaves the machine
        if self.engine.address is not None:
            _reachable(self.engine.address)
        handlers = _signal_handlers()
        try:
            ray.init(  # "local": a cluster of its own, never one RAY_ADDRESS or `ray start` left running
                address=self.engine.address or "local",
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.ERROR,
            )
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = f"the Ray cluster at {self.engine.address}" if self.engine.address else "a local Ray cluster"
            raise EngineError(f"cannot start or join {where}: {e}") from e
        finally:
            # Ray's core installs its own SIGTERM handler, which ends the process at once: the run would neither
            # end its workers and cluster nor say how to resume. This process's handlers are put back.
            _restore(handlers)
        self._owned = True

    def _plan_workers(self) -> int:
        """The number of workers: as asked, or what the cluster's resources allow; more than it has is an error
        (not a run left pending)."""
        total = self._ray.cluster_resources()
        cpus, gpus = float(total.get("CPU", 0)), float(total.get("GPU", 0))
        e = self.engine
        has = f"{cpus:g} CPUs and {gpus:g} GPUs"
        if e.gpus_per_worker > 0 and gpus == 0:
            raise ValueError(
                f"gpus_per_worker is {e.gpus_per_worker:g} but the Ray cluster has no GPU ({has}); "
                "leave gpus_per_worker at 0 to run on CPUs"
            )
        fits = math.floor(cpus / e.cpus_per_worker + 1e-9)
        if e.gpus_per_worker > 0:
            fits = min(fits, math.floor(gpus / e.gpus_per_worker + 1e-9))
        each = f"{e.cpus_per_worker:g} CPUs" + (f" and {e.gpus_per_worker:g} GPUs" if e.gpus_per_worker else "")
        if fits < 1:
            raise ValueError(f"the Ray cluster has {has}: not enough for one worker of {each}")
        if e.num_workers is None:
            return fits
        if e.num_workers > fits:
            raise ValueError(
                f"{e.num_workers} workers of {each} each do not fit the Ray cluster ({has}: {fits} fit); "
                "ask for fewer, or leave the number out to use what the cluster allows"
            )
        return e.num_workers

    def _new_worker(self) -> Any:
        if self._actor is None:
            self._actor = self._ray.remote(_Worker).options(
                num_cpus=self.engine.cpus_per_worker,
                num_gpus=self.engine.gpus_per_worker,
                max_restarts=0,  # a dead worker is replaced here, where its unfinished batches are known
                max_concurrency=1,
            )
        return self._actor.remote(self._worker_config)

    def _replace(self, slot: int) -> None:
        try:
            self._ray.kill(self._workers[slot], no_restart=True)
        except Exception:  # already gone
            pass
        self._workers[slot] = self._new_worker()

    def worker_pids(self) -> list[int]:
        """The process id of each worker, in slot order."""
        return self._ray.get([w.pid.remote() for w in self._workers])

    def close(self) -> None:
        """End the workers (and the local cluster this ranker started). Safe to call twice."""
        for worker in self._workers:
            try:
                self._ray.kill(worker, no_restart=True)
            except Exception:
                pass
        self._workers = []
        if self._owned and self._ray.is_initialized():
            self._ray.shutdown()
        self._owned = False

    def __enter__(self) -> RayRanker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- the Ranker's face -----------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """The workers' ranker's ``describe()``."""
        return dict(self._describe)

    def config(self) -> dict[str, Any]:
        """The workers' ranker's ``config()``, as the driver was given it (the thread count a worker sets for
        itself is not part of it)."""
        backend = dict(self._resolved.get("backend", {}))
        if "threads" in backend:
            backend["threads"] = self._config["backend"].get("threads")
        return {**self._resolved, "backend": backend}

    def check_queries(self, texts: Mapping[str, str]) -> dict[str, str]:
        """The queries of ``texts`` (id -> text) the ranker would refuse before any model call, with its message:
        asked of one worker at once."""
        return self._checked(self._ray.get(self._workers[0].check.remote(dict(texts))))["refused"]

    def rank_many(self, queries: Sequence[str], docs: Sequence[Sequence[DocLike]]) -> list[Ranking]:
        """Rank one batch on a worker (see :meth:`rank_batches` for many)."""
        if isinstance(queries, str) or len(queries) != len(docs):
            raise ValueError("rank_many takes a sequence of queries and one candidate list per query")
        names = [f"#{i}" for i in range(len(queries))]
        payload = (names, list(queries), [as_documents(d, f"docs[{i}]") for i, d in enumerate(docs)])
        return next(iter(self.rank_batches([payload])))[1]

    def rank(self, query: str, docs: Sequence[DocLike]) -> Ranking:
        return self.rank_many([query], [docs])[0]

    def rank_batches(self, payloads: Iterable[tuple[Sequence[str], Sequence[str], Sequence[Any]]]) -> Iterator[Any]:
        """Rank batches ``(query ids, query texts, candidate lists)`` over the workers: ``(batch index,
        rankings)`` as each batch finishes. Each worker holds ``inflight`` batches at a time. A batch whose worker
        died is ranked again on its replacement (at most ``max_retries`` times) and yielded once; a batch the
        ranker refuses raises its error, naming the query."""
        ray = self._ray
        items = iter(enumerate(payloads))
        retry: deque[tuple[int, Any]] = deque()
        pending: dict[Any, tuple[int, int, Any]] = {}  # task -> (worker slot, batch index, payload)
        deaths: dict[int, int] = {}

        def fill(slot: int, depth: int = self.engine.inflight) -> None:
            while sum(s == slot for s, _, _ in pending.values()) < depth:
                item = retry.popleft() if retry else next(items, None)
                if item is None:
                    return
                index, payload = item
                _, texts, docs = payload
                pending[self._workers[slot].rank.remote(list(texts), list(docs))] = (slot, index, payload)

        for depth in range(1, self.engine.inflight + 1):  # a batch for each worker before a second for any
            for slot in range(len(self._workers)):
                fill(slot, depth)
        while pending:
            # a second at a time, so that Ctrl-C and SIGTERM reach this thread while a long batch runs
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            if not ready:
                continue
            task = ready[0]
            slot, index, payload = pending.pop(task)
            try:
                result = ray.get(task)
            except ray.exceptions.RayActorError as e:  # the worker's process is gone: replace it, redo its batches
                lost = [(index, payload)]
                for other in [t for t, (s, _, _) in pending.items() if s == slot]:
                    _, i, p = pending.pop(other)
                    lost.append((i, p))
                for i, p in lost:
                    deaths[i] = deaths.get(i, 0) + 1
                    if deaths[i] > self.engine.max_retries:
                        raise EngineError(
                            f"queries {', '.join(p[0])}: the worker ranking them died {deaths[i]} times, the last "
                            f"time with: {_first_line(e)}"
                        ) from e
                retry.extendleft(sorted(lost, key=lambda x: x[0], reverse=True))
                self.redone += len(lost)
                self.replaced += 1
                self._replace(slot)
                fill(slot)
                continue
            if "error" in result:
                failure = result["error"]
                qids = payload[0]
                at = failure.get("query")
                raise _raised(failure, f"query {qids[at]}" if at is not None else f"queries {', '.join(qids)}")
            self.backend.add(result["stats"])
            fill(slot)
            yield index, result["rankings"]

    def _checked(self, answer: dict[str, Any]) -> dict[str, Any]:
        if "error" in answer:
            raise _raised(answer["error"])
        return answer


def _signal_handlers() -> dict[int, Any]:
    """This process's SIGINT and SIGTERM handlers (none off the main thread, where they cannot be set)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}


def _restore(handlers: Mapping[int, Any]) -> None:
    import signal

    for sig, handler in handlers.items():
        if handler is not None:
            signal.signal(sig, handler)


def _reachable(address: str) -> None:
    """Refuse at once a ``host:port`` (or ``ray://host:port``) where nothing listens: Ray itself retries for
    minutes before it gives up."""
    import socket

    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto" and other forms Ray resolves itself
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=10).close()
    except OSError as e:
        raise EngineError(
            f"cannot reach the Ray cluster at {address}: {e.strerror or e}; start it (ray start --head) or fix the "
            "address"
        ) from None


def _options(config: Mapping[str, Any]) -> Any:
    from .registry import options_class

    return options_class(config["method"]).build(config.get("options") or {})


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _failure(e: BaseException, query: int | None = None) -> dict[str, Any]:
    """An exception as plain data, to cross from a worker to the driver."""
    message = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return {"classes": [c.__name__ for c in type(e).__mro__], "message": message, "query": query}


def _raised(failure: Mapping[str, Any], where: str | None = None) -> Exception:
    """A worker's failure as the driver raises it: the same kind of error (so the CLI answers it as it answers a
    local one), its message prefixed with the queries it concerns, if any."""
    cls = next((_RAISED_AS[c] for c in failure["classes"] if c in _RAISED_AS), RuntimeError)
    kind = failure["classes"][0]
    detail = failure["message"] if cls is not RuntimeError else f"{kind}: {failure['message']}"
    return cls(f"{where}: {detail} (in a Ray worker)" if where else f"{detail} (in a Ray worker)")


class _Worker:
    """One Ray actor: the ranker rebuilt from its config, once. Every method answers plain data; a failure is
    answered as ``{"error": ...}`` (see :func:`_failure`), never raised, so its message reaches the driver whole."""

    def __init__(self, config: Mapping[str, Any]):
        self.error: dict[str, Any] | None = None
        try:
            from .registry import Reranker

            self.ranker = Reranker.from_config(config)
        except Exception as e:
            self.error = _failure(e)

    def pid(self) -> int:
        return os.getpid()

    def info(self) -> dict[str, Any]:
        if self.error is not None:
            return {"error": self.error}
        return {
            "describe": self.ranker.describe(),
            "config": self.ranker.config(),
            "dtype": getattr(self.ranker.backend, "dtype", None),
        }

    def check(self, texts: Mapping[str, str]) -> dict[str, Any]:
        if self.error is not None:
            return {"error": self.error}
        refused = {}
        check = getattr(self.ranker, "check_query", None)
        for qid, text in texts.items():
            try:
                if check is not None:
                    check(text)
            except ValueError as e:
                refused[qid] = str(e)
            except Exception as e:
                return {"error": _failure(e)}
        return {"refused": refused}

    def rank(self, texts: list[str], docs: list[list[Any]]) -> dict[str, Any]:
        if self.error is not None:
            return {"error": self.error}
        stats = getattr(self.ranker.backend, "stats", None)
        before = stats.snapshot() if stats is not None else {}
        try:
            rankings = self.ranker.rank_many(texts, docs)
        except Exception as e:
            return {"error": _failure(e, self._culprit(texts, docs))}
        return {"rankings": rankings, "stats": stats.since(before) if stats is not None else {}}

    def _culprit(self, texts: list[str], docs: list[list[Any]]) -> int | None:
        """Which query of a failed batch fails on its own (the first), or None if none does alone."""
        if len(texts) == 1:
            return 0
        for i, (text, candidates) in enumerate(zip(texts, docs)):
            try:
                self.ranker.rank_many([text], [candidates])
            except Exception:
                return i
        return None
