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

import itertools
import logging
import math
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from typing import Any

from .extras import require
from .types import DocLike, Ranking

_log = logging.getLogger(__name__)

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
    """The engine cannot go on: no cluster to connect to, workers that do not start in time or kept dying, or a
    worker out of GPU memory."""


@dataclass(frozen=True)
class RayEngine:
    """How a run is spread over a Ray cluster.

    Args:
        num_workers: actors, one ranker each; default what the cluster's resources allow (on each alive node, its
            CPUs, or its GPUs with ``gpus_per_worker``, divided by what one worker takes; summed over the nodes).
        address: a running cluster (``"head-node:6379"``, ``"auto"``, ``"ray://..."``); none: a local cluster
            is started for the run and stopped after it (or the one this process already joined is used; an
            address other than that cluster's is then refused).
        gpus_per_worker: GPUs each worker reserves (fractions share a GPU: 0.5 puts two workers on one); the
            ranker's ``device="auto"`` then picks the GPU Ray assigns. A cluster without GPUs is an error.
        cpus_per_worker: CPUs each worker reserves; also its torch thread count, unless the ranker sets
            ``threads``.
        max_retries: how often one batch is ranked again after the worker ranking it died, before the run ends
            (a death counts against the batch the worker was ranking, not those queued behind it).
        inflight: batches queued on each worker at once (the next is ready when one finishes).
        start_timeout: seconds a worker may take to be placed on the cluster and build its ranker. The first
            workers not started by then end the run (an :class:`EngineError`).
        replace_timeout: seconds a replacement (for a worker that died) may take to start; none: ``start_timeout``.
            A replacement not started by then gives up its slot, and the run goes on with the others (or ends, if
            no worker is left). Shorter than ``start_timeout`` where a lost machine should not stall the run.
    """

    num_workers: int | None = None
    address: str | None = None
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    max_retries: int = 3
    inflight: int = 2
    start_timeout: float = 600.0
    replace_timeout: float | None = None

    def __post_init__(self) -> None:
        _count("num_workers", self.num_workers, allow_none=True)
        _count("max_retries", self.max_retries, minimum=0)
        _count("inflight", self.inflight)
        for name in ("gpus_per_worker", "cpus_per_worker", "start_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise TypeError(f"{name} must be a number, got {value!r}")
        if self.gpus_per_worker < 0:
            raise ValueError(f"gpus_per_worker must be at least 0, got {self.gpus_per_worker}")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"cpus_per_worker must be above 0, got {self.cpus_per_worker}")
        if self.start_timeout <= 0:
            raise ValueError(f"start_timeout must be above 0 seconds, got {self.start_timeout}")
        if self.replace_timeout is not None:
            value = self.replace_timeout
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise TypeError(f"replace_timeout must be a number, got {value!r}")
            if value <= 0:
                raise ValueError(f"replace_timeout must be above 0 seconds, got {value}")
        if self.address is not None and (not isinstance(self.address, str) or not self.address.strip()):
            raise ValueError(f"address must name a Ray cluster (host:port, auto or ray://...), got {self.address!r}")

    @property
    def replacement_timeout(self) -> float:
        """Seconds a replacement worker may take to start: ``replace_timeout``, else ``start_timeout``."""
        return self.start_timeout if self.replace_timeout is None else self.replace_timeout

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

    Each worker has a slot. A worker whose process dies is replaced in its slot; a replacement that does not
    start within the engine's ``replacement_timeout`` gives the slot up, and the others go on.
    """

    def __init__(self, engine: RayEngine, config: dict[str, Any]):
        import ray

        self.engine = engine
        self._ray = ray
        self._owned = False
        self._workers: list[Any] = []  # the actor of each slot; None: a slot given up
        self._pids: list[int | None] = []  # each slot's process, once its worker has started
        self._starting: dict[int, tuple[Any, float]] = {}  # slot -> (its worker's info task, deadline)
        self._actor: Any = None  # the actor class, with the resources of one worker
        self._board: Any = None  # where withdrawn batches are posted (see _board_class)
        self._tickets = itertools.count()  # one per batch sent, over every rank_batches call
        self.replaced = 0  # workers replaced after their process died
        self.redone = 0  # batches ranked again because of that
        self.dropped = 0  # slots given up: their replacement did not start in time
        try:
            self._connect()
            self.num_workers = self._plan_workers()
            threads = max(1, int(engine.cpus_per_worker))
            self._config = config
            backend = dict(config["backend"])
            if backend.get("threads") is None:  # a worker uses the CPUs it reserved, not the machine's
                backend["threads"] = threads
            self._worker_config = {**config, "backend": backend}
            self._board = ray.remote(_board_class()).options(num_cpus=0, max_restarts=0).remote()
            self._workers = [None] * self.num_workers
            self._pids = [None] * self.num_workers
            for slot in range(self.num_workers):
                self._spawn(slot)
            infos = self._start_all()
            one_dtype([info.get("dtype") for info in infos])
        except BaseException:
            self.close()
            raise
        first = infos[0]
        self.method = first["config"]["method"]
        self._describe = first["describe"]
        self._resolved = first["config"]
        self.backend = _RemoteBackend(first["config"].get("model"), first["dtype"])
        self.options = _options(self._resolved)

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
            "replace_timeout": e.replacement_timeout,
            "workers_replaced": self.replaced,
            "workers_dropped": self.dropped,
            "batches_redone": self.redone,
        }

    # -- the cluster -----------------------------------------------------------------------------------------

    def _connect(self) -> None:
        ray = self._ray
        if ray.is_initialized():  # this process already joined a cluster: use it, and leave it running
            joined = ray.get_runtime_context().gcs_address
            asked = self.engine.address
            if asked is not None and not _same_cluster(asked, joined):
                raise ValueError(
                    f"this process has already joined the Ray cluster at {joined}, not {asked!r}: leave address "
                    "out to use the joined cluster, or call ray.shutdown() first to join the other"
                )
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
        """The number of workers: as asked, or what the cluster's alive nodes hold (each worker must fit on one
        node); more than they hold is an error, not a run left pending."""
        e = self.engine
        nodes = [n.get("Resources", {}) for n in self._ray.nodes() if n.get("Alive")]
        cpus = sum(float(n.get("CPU", 0)) for n in nodes)
        gpus = sum(float(n.get("GPU", 0)) for n in nodes)
        has = f"{cpus:g} CPUs and {gpus:g} GPUs on {len(nodes)} node{'s' if len(nodes) != 1 else ''}"
        if e.gpus_per_worker > 0 and gpus == 0:
            raise ValueError(
                f"gpus_per_worker is {e.gpus_per_worker:g} but the Ray cluster has no GPU ({has}); "
                "leave gpus_per_worker at 0 to run on CPUs"
            )
        per_node = [_fits(float(n.get("CPU", 0)), e.cpus_per_worker) for n in nodes]
        if e.gpus_per_worker > 0:
            per_node = [min(f, _fits(float(n.get("GPU", 0)), e.gpus_per_worker)) for f, n in zip(per_node, nodes)]
        fits = sum(per_node)
        each = f"{e.cpus_per_worker:g} CPUs" + (f" and {e.gpus_per_worker:g} GPUs" if e.gpus_per_worker else "")
        if fits < 1:
            largest = max(nodes, key=lambda n: (float(n.get("GPU", 0)), float(n.get("CPU", 0))), default={})
            raise ValueError(
                f"no node of the Ray cluster ({has}) holds one worker of {each}: a worker runs on one node, and the "
                f"largest has {float(largest.get('CPU', 0)):g} CPUs and {float(largest.get('GPU', 0)):g} GPUs; "
                "ask for less per worker"
            )
        if e.num_workers is None:
            return fits
        if e.num_workers > fits:
            raise ValueError(
                f"{e.num_workers} workers of {each} each do not fit the Ray cluster ({has}: {fits} fit); "
                "ask for fewer, or leave the number out to use what the cluster allows"
            )
        return e.num_workers

    def _spawn(self, slot: int) -> None:
        """A new worker in ``slot``, starting: it is live once its ``info`` answers (see :meth:`_settle`)."""
        if self._actor is None:
            self._actor = self._ray.remote(_Worker).options(
                num_cpus=self.engine.cpus_per_worker,
                num_gpus=self.engine.gpus_per_worker,
                max_restarts=0,  # a dead worker is replaced here, where its unfinished batches are known
                max_concurrency=1,
            )
        worker = self._actor.remote(self._worker_config, self._board)
        self._workers[slot] = worker
        self._pids[slot] = None
        # the deadline of a replacement (the first workers share start_timeout's, in _start_all)
        self._starting[slot] = (worker.info.remote(), time.monotonic() + self.engine.replacement_timeout)

    def _start_all(self) -> list[dict[str, Any]]:
        """Wait for the first workers, each within ``start_timeout``: their ``info``. One that cannot build the
        ranker raises its error; one that dies, or does not start in time, is an :class:`EngineError`."""
        ray = self._ray
        waiting = {ref: slot for slot, (ref, _) in self._starting.items()}
        deadline = time.monotonic() + self.engine.start_timeout
        infos: dict[int, dict[str, Any]] = {}
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                raise EngineError(self._not_started(len(waiting)))
            # a second at a time, so that Ctrl-C and SIGTERM reach this thread while the workers load
            ready, _ = ray.wait(list(waiting), num_returns=1, timeout=min(1.0, left))
            for ref in ready:
                slot = waiting.pop(ref)
                try:
                    info = ray.get(ref)
                except ray.exceptions.RayError as e:  # its process died while it loaded the model
                    raise EngineError(f"a Ray worker died while building the ranker: {_first_line(e)}") from e
                infos[slot] = self._checked(info)
                self._pids[slot] = info["pid"]
        self._starting.clear()
        return [infos[slot] for slot in sorted(infos)]

    def _not_started(self, missing: int) -> str:
        free = self._ray.available_resources()
        e = self.engine
        each = f"{e.cpus_per_worker:g} CPUs" + (f" and {e.gpus_per_worker:g} GPUs" if e.gpus_per_worker else "")
        return (
            f"{missing} of {self.num_workers} Ray workers of {each} did not start within {e.start_timeout:g} s: "
            f"the cluster has no room for them now (free: {float(free.get('CPU', 0)):g} CPUs and "
            f"{float(free.get('GPU', 0)):g} GPUs), or building the ranker takes longer; free the cluster, ask for "
            "fewer workers, or raise start_timeout (--start-timeout)"
        )

    def _settle(self, ready: Iterable[Any] = ()) -> list[int]:
        """Replacements whose ``info`` is among the finished tasks ``ready`` become live (returned); one that died
        while loading, or is still not started at its deadline, gives up its slot."""
        ready = set(ready)
        now = time.monotonic()
        live = []
        for slot, (ref, deadline) in list(self._starting.items()):
            if ref in ready:
                del self._starting[slot]
                try:
                    info = self._ray.get(ref)
                except self._ray.exceptions.RayError:
                    self._drop(slot, "it died while building the ranker")
                    continue
                self._pids[slot] = self._checked(info)["pid"]
                if info.get("dtype") != self.backend.dtype:  # its device resolved "auto" otherwise
                    self._drop(slot, f"it computes in {info.get('dtype')}, the run in {self.backend.dtype}")
                    continue
                live.append(slot)
            elif now >= deadline:
                took = self.engine.replacement_timeout
                self._drop(slot, f"it did not start within {took:g} s (no node has room for it)")
        return live

    def _wait_started(self) -> None:
        """Wait until no replacement is starting (each is bounded by its deadline)."""
        while self._starting:
            refs = [ref for ref, _ in self._starting.values()]
            ready, _ = self._ray.wait(refs, num_returns=1, timeout=1.0)
            self._settle(ready)

    def _live(self) -> list[int]:
        return [s for s, w in enumerate(self._workers) if w is not None and s not in self._starting]

    def _replace(self, slot: int) -> None:
        self._kill(self._workers[slot])
        self.replaced += 1
        self._spawn(slot)

    def _drop(self, slot: int, why: str) -> None:
        self._kill(self._workers[slot])
        self._workers[slot] = None
        self._pids[slot] = None
        self._starting.pop(slot, None)
        self.dropped += 1
        _log.warning("Ray worker slot %d given up: %s", slot, why)

    def _none_left(self) -> str:
        return (
            f"no Ray worker is left to rank the remaining queries: the workers died and their replacements did not "
            f"start within {self.engine.replacement_timeout:g} s (no node has room for them: a machine lost, or the "
            "cluster busy; --replace-timeout)"
        )

    def _kill(self, worker: Any) -> None:
        if worker is None:
            return
        try:
            self._ray.kill(worker, no_restart=True)
        except Exception:  # already gone
            pass

    def worker_pids(self) -> list[int]:
        """The process id of each live worker, in slot order: a replacement still starting is waited for, a slot
        given up is left out. Asks no worker (a dead one is noticed by the next batch sent to it)."""
        self._wait_started()
        return [pid for pid in self._pids if pid is not None]

    def close(self) -> None:
        """End the workers (and the local cluster this ranker started). Safe to call twice."""
        for worker in [*self._workers, self._board]:
            self._kill(worker)
        self._workers = []
        self._board = None
        self._starting.clear()
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
        asked of one live worker at once (a dead one is replaced and the next asked)."""
        ray = self._ray
        texts = dict(texts)
        for _ in range(self.engine.max_retries + 1):
            live = self._live()
            if not live:
                self._wait_started()
                live = self._live()
                if not live:
                    raise EngineError(self._none_left())
            slot = live[0]
            try:
                answer = ray.get(self._workers[slot].check.remote(texts))
            except ray.exceptions.RayActorError:
                self._replace(slot)
                continue
            return self._checked(answer)["refused"]
        raise EngineError(f"the Ray workers asked to check the queries died {self.engine.max_retries + 1} times")

    def rank_many(self, queries: Sequence[str], docs: Sequence[Sequence[DocLike]]) -> list[Ranking]:
        """Rank one batch on a worker (see :meth:`rank_batches` for many); the arguments are checked as the local
        rankers check them."""
        from .rankers.base import check_batch

        pairs = check_batch(queries, docs)
        if not pairs:
            return []
        payload = ([f"#{i}" for i in range(len(pairs))], [q for q, _ in pairs], [d for _, d in pairs])
        with closing(self.rank_batches([payload])) as results:
            return next(results)[1]

    def rank(self, query: str, docs: Sequence[DocLike]) -> Ranking:
        """The documents best first, ranked on a worker."""
        return self.rank_many([query], [docs])[0]

    def rank_batches(self, payloads: Iterable[tuple[Sequence[str], Sequence[str], Sequence[Any]]]) -> Iterator[Any]:
        """Rank batches ``(query ids, query texts, candidate lists)`` over the workers: ``(batch index,
        rankings)`` as each batch finishes. Each worker holds ``inflight`` batches at a time. When a worker dies,
        its unfinished batches are ranked again (on the other workers, or its replacement) and yielded once; the
        batch it was ranking counts one death, and ends the run after ``max_retries`` of them. A batch the ranker
        refuses raises its error, naming the query. However the iteration ends (finished, failed, or closed by the
        consumer), no batch is left queued on a worker."""
        ray = self._ray
        items = iter(enumerate(payloads))
        exhausted = False
        retry: deque[tuple[int, Any]] = deque()
        pending: dict[Any, tuple[int, int, int, Any]] = {}  # task -> (worker slot, batch index, ticket, payload)
        deaths: dict[int, int] = {}

        def fill(slot: int, depth: int = self.engine.inflight) -> None:
            nonlocal exhausted
            if slot not in self._live():
                return
            while sum(s == slot for s, _, _, _ in pending.values()) < depth:
                item = retry.popleft() if retry else next(items, None)
                if item is None:
                    exhausted = True
                    return
                index, payload = item
                _, texts, docs = payload
                ticket = next(self._tickets)  # in the order sent
                task = self._workers[slot].rank.remote(list(texts), list(docs), ticket)
                pending[task] = (slot, index, ticket, payload)

        try:
            for depth in range(1, self.engine.inflight + 1):  # a batch for each worker before a second for any
                for slot in self._live():
                    fill(slot, depth)
            # a replacement still starting is waited for only while there is work no live worker holds
            while pending or (self._starting and (retry or not exhausted)):
                starting = [ref for ref, _ in self._starting.values()]
                # a second at a time, so that Ctrl-C and SIGTERM reach this thread while a long batch runs
                ready, _ = ray.wait([*pending, *starting], num_returns=1, timeout=1.0)
                for slot in self._settle(ready):
                    fill(slot)
                task = next((t for t in ready if t in pending), None)
                if task is None:
                    continue
                slot, index, order, payload = pending.pop(task)
                try:
                    result = ray.get(task)
                except ray.exceptions.RayActorError as e:  # the worker's process is gone: replace it, redo its work
                    lost = [(order, index, payload)]
                    for other in [t for t, (s, _, _, _) in pending.items() if s == slot]:
                        if self._came_back(other):  # finished before the worker died: kept, not redone
                            pending[other] = (-1, *pending[other][1:])
                        else:
                            _, i, o, p = pending.pop(other)
                            lost.append((o, i, p))
                    lost.sort(key=lambda x: x[0])
                    # a worker ranks its batches in the order sent: the oldest was running, the rest only queued
                    _, running, (qids, _, _) = lost[0]
                    deaths[running] = deaths.get(running, 0) + 1
                    if deaths[running] > self.engine.max_retries:
                        raise EngineError(
                            f"queries {', '.join(qids)}: the worker ranking them died {deaths[running]} times, the "
                            f"last time with: {_first_line(e)}"
                        ) from e
                    retry.extendleft(sorted(((i, p) for _, i, p in lost), key=lambda x: x[0], reverse=True))
                    self.redone += len(lost)
                    self._replace(slot)
                    for live in self._live():
                        fill(live)
                    continue
                if "error" in result:
                    failure = result["error"]
                    qids = payload[0]
                    at = failure.get("query")
                    raise _raised(failure, f"query {qids[at]}" if at is not None else f"queries {', '.join(qids)}")
                self.backend.add(result["stats"])
                fill(slot)
                yield index, result["rankings"]
            if retry or (not exhausted and next(items, None) is not None):
                raise EngineError(self._none_left())
        finally:
            self._withdraw(pending)

    def _withdraw(self, pending: Mapping[Any, tuple[int, int, int, Any]]) -> None:
        """Withdraw the batches still ``pending`` on the workers (which may be kept for another run): posted on the
        board, which a worker reads before it ranks a batch, and cancelled (which frees those not yet handed to a
        worker)."""
        if not pending:
            return
        ray = self._ray
        try:
            ray.get(self._board.withdraw.remote([ticket for _, _, ticket, _ in pending.values()]), timeout=30)
        except Exception:  # the board or the cluster is gone: nothing is left to rank for this iteration
            pass
        for task in pending:
            try:
                ray.cancel(task)
            except Exception:  # finished or gone meanwhile
                pass

    def _came_back(self, task: Any) -> bool:
        """Whether ``task`` has finished with its result (not an error)."""
        done, _ = self._ray.wait([task], num_returns=1, timeout=0)
        if not done:
            return False
        try:
            self._ray.get(task)
        except self._ray.exceptions.RayError:
            return False
        return True

    def _checked(self, answer: dict[str, Any]) -> dict[str, Any]:
        if "error" in answer:
            raise _raised(answer["error"])
        return answer


def one_dtype(dtypes: Sequence[Any]) -> None:
    """Refuse workers that compute in different dtypes (``dtype="auto"`` resolved on unlike devices: a GPU and a
    CPU, a CPU with AMX and one without): one run's scores must come from one precision. An EngineError naming them
    and the fix."""
    seen = sorted({str(d) for d in dtypes})
    if len(seen) > 1:
        raise EngineError(
            f"the Ray workers compute in different dtypes ({', '.join(seen)}): 'auto' resolved differently on their "
            "devices; give the ranker one dtype (e.g. backend dtype 'float32' or 'bfloat16')"
        )


def _fits(has: float, takes: float) -> int:
    """How many of ``takes`` fit in ``has`` (a node's CPUs or GPUs)."""
    return math.floor(has / takes + 1e-9)


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


def _split_address(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a ``host:port`` (an IPv6 host in brackets), or None for another form."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    return host.strip("[]"), int(port)


def _host_ip(host: str) -> str:
    """The IP address ``host`` names (itself when it is one, or when it cannot be resolved), loopback for this
    machine's own addresses: ``ray start`` reports the node's address where a user may write localhost."""
    import ipaddress
    import socket

    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        try:
            ip = ipaddress.ip_address(socket.gethostbyname(host))
        except (OSError, UnicodeError):
            return host
    if ip.is_loopback:
        return "loopback"
    try:
        own = socket.gethostbyname_ex(socket.gethostname())[2]
    except OSError:
        own = []
    return "loopback" if str(ip) in own else str(ip)


def _same_cluster(asked: str, joined: str) -> bool:
    """Whether an engine's ``address`` names the cluster this process has joined (``joined``: its GCS
    ``host:port``). ``auto`` names whichever cluster is joined; a host name and its IP address are one host, as
    are localhost and this machine's own address; a ``ray://`` client address names the head's host (its port
    is the client server's, not the GCS's)."""
    asked = asked.strip()
    if asked == "auto":
        return True
    client = asked.startswith("ray://")
    mine, theirs = _split_address(asked.removeprefix("ray://")), _split_address(joined)
    if mine is None or theirs is None:
        return asked.removeprefix("ray://") == joined
    return _host_ip(mine[0]) == _host_ip(theirs[0]) and (client or mine[1] == theirs[1])


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
    local one), its message prefixed with the queries it concerns, if any. A worker out of GPU memory (torch's
    ``OutOfMemoryError``, known by name: the driver need not import torch) is an :class:`EngineError` saying what
    to change."""
    prefix = f"{where}: " if where else ""
    if "OutOfMemoryError" in failure["classes"]:
        return EngineError(
            f"{prefix}a Ray worker ran out of GPU memory ({_first_line(Exception(failure['message']))}); rank fewer "
            "candidates at once (--queries-per-batch, --top-k), lower --batch-tokens or --batch-size, or give each "
            "worker more GPU memory (a larger --gpus-per-worker share, or a larger GPU)"
        )
    cls = next((_RAISED_AS[c] for c in failure["classes"] if c in _RAISED_AS), RuntimeError)
    kind = failure["classes"][0]
    detail = failure["message"] if cls is not RuntimeError else f"{kind}: {failure['message']}"
    return cls(f"{prefix}{detail} (in a Ray worker)")


def _board_class() -> type:
    """The board: a Ray actor (no CPU) that knows which batches the driver has withdrawn, by ticket. A worker asks
    it before ranking a batch, because Ray's ``cancel`` does not stop an actor task already handed to the worker's
    queue. Defined here, not at module level, so that Ray ships the class itself: its process then imports
    neither llmrerank nor torch (a few MB and a fraction of a second, not a model runtime)."""

    class Board:
        def __init__(self) -> None:
            self.withdrawn: set[int] = set()

        def withdraw(self, tickets: list[int]) -> None:
            self.withdrawn.update(tickets)

        def is_withdrawn(self, ticket: int) -> bool:
            return ticket in self.withdrawn

    return Board


class _Worker:
    """One Ray actor: the ranker rebuilt from its config, once. Every method answers plain data; a failure is
    answered as ``{"error": ...}`` (see :func:`_failure`), never raised, so its message reaches the driver whole."""

    def __init__(self, config: Mapping[str, Any], board: Any = None):
        self.error: dict[str, Any] | None = None
        self.board = board
        try:
            from .registry import Reranker

            self.ranker = Reranker.from_config(config)
        except Exception as e:
            self.error = _failure(e)

    def totals(self) -> dict[str, int]:
        """What this worker's backend has computed since it started (its stats' running totals)."""
        if self.error is not None:
            return {}
        stats = getattr(self.ranker.backend, "stats", None)
        return stats.snapshot() if stats is not None else {}

    def info(self) -> dict[str, Any]:
        if self.error is not None:
            return {"error": self.error}
        return {
            "pid": os.getpid(),
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

    def rank(self, texts: list[str], docs: list[list[Any]], ticket: int | None = None) -> dict[str, Any]:
        if self.error is not None:
            return {"error": self.error}
        if ticket is not None and self._withdrawn(ticket):
            return {"withdrawn": True}
        stats = getattr(self.ranker.backend, "stats", None)
        before = stats.snapshot() if stats is not None else {}
        try:
            rankings = self.ranker.rank_many(texts, docs)
        except Exception as e:
            if type(e).__name__ == "OutOfMemoryError":  # ranking each query again alone would only repeat it
                return {"error": _failure(e)}
            return {"error": _failure(e, self._culprit(texts, docs))}
        return {"rankings": rankings, "stats": stats.since(before) if stats is not None else {}}

    def _withdrawn(self, ticket: int) -> bool:
        if self.board is None:
            return False
        import ray

        try:
            return bool(ray.get(self.board.is_withdrawn.remote(ticket), timeout=30))
        except Exception:  # the board is gone (its node lost): rank the batch, as if never withdrawn
            return False

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
