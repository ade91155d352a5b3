"""The serving micro-batcher: merging under a token budget in FIFO order, the bounded queue, timeouts, failure
isolation, close(), and the model thread (one call at a time, never on the event loop)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from llmrerank.serve.batcher import Batcher, BatcherClosedError, QueueFullError


class FakeModel:
    """A rank_many that records each call. The query "hold" blocks its call until ``release`` is set; a query
    in ``fail_on`` makes the call raise (one new ValueError each time, kept in ``raised``)."""

    def __init__(self, fail_on: tuple[str, ...] = (), sleep: float = 0.0) -> None:
        self.fail_on = fail_on
        self.sleep = sleep
        self.batches: list[list[str]] = []
        self.threads: list[int] = []
        self.raised: list[ValueError] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def __call__(self, queries: list[str], docs: list[list[str]]) -> list[str]:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            self.batches.append(list(queries))
            self.threads.append(threading.get_ident())
            self.started.set()
            if "hold" in queries:
                self.release.wait(5)
            if self.sleep:
                time.sleep(self.sleep)
            for q in queries:
                if q in self.fail_on:
                    error = ValueError(f"cannot rank {q}")
                    self.raised.append(error)
                    raise error
            return [f"{q}:{len(d)}" for q, d in zip(queries, docs)]
        finally:
            with self._lock:
                self.active -= 1


def n_docs(query: str, docs) -> int:
    """The cost used throughout: one token per document."""
    return len(docs)


def docs_of(n: int) -> list[str]:
    return [f"d{i}" for i in range(n)]


async def until(condition, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.001)


async def hold_worker(batcher: Batcher, model: FakeModel) -> asyncio.Task:
    """Start a request that keeps the model thread busy until ``model.release`` is set."""
    task = asyncio.create_task(batcher.submit("hold", docs_of(1)))
    await until(model.started.is_set)
    return task


# --- merging --------------------------------------------------------------------------------------------------


def test_concurrent_submits_merge_into_fewest_batches_in_fifo_order():
    async def main():
        model = FakeModel()
        calls = []
        batcher = Batcher(model, cost=n_docs, max_batch_tokens=100, wait_ms=1, on_batch=lambda *a: calls.append(a))
        held = await hold_worker(batcher, model)
        tasks = [asyncio.create_task(batcher.submit(f"q{i}", docs_of(25))) for i in range(16)]
        await until(lambda: batcher.queue_depth == 16)
        model.release.set()
        results = await asyncio.gather(held, *tasks)
        await batcher.close()
        return model, calls, results

    model, calls, results = asyncio.run(main())
    assert results == ["hold:1"] + [f"q{i}:25" for i in range(16)]
    assert model.batches == [["hold"]] + [[f"q{i}" for i in range(start, start + 4)] for start in (0, 4, 8, 12)]
    assert calls == [(1, 1, 1)] + [(4, 100, 100)] * 4


def test_budget_splits_batches_exactly_and_never_reorders():
    # Costs 40+50+10 = 100 fit; 30+70 = 100 fit; 1 cannot take the 100 behind it (FIFO: the 5 may not jump
    # ahead); 150 is over budget and runs alone.
    costs = [40, 50, 10, 30, 70, 1, 100, 150, 5]

    async def main():
        model = FakeModel()
        calls = []
        batcher = Batcher(model, cost=n_docs, max_batch_tokens=100, wait_ms=1, on_batch=lambda *a: calls.append(a))
        held = await hold_worker(batcher, model)
        tasks = [asyncio.create_task(batcher.submit(f"c{c}", docs_of(c))) for c in costs]
        await until(lambda: batcher.queue_depth == len(costs))
        model.release.set()
        results = await asyncio.gather(*tasks)
        await held
        await batcher.close()
        return model, calls, results

    model, calls, results = asyncio.run(main())
    assert results == [f"c{c}:{c}" for c in costs]
    assert model.batches[1:] == [["c40", "c50", "c10"], ["c30", "c70"], ["c1"], ["c100"], ["c150"], ["c5"]]
    assert calls[1:] == [(3, 100, 100), (2, 100, 100), (1, 1, 1), (1, 100, 100), (1, 150, 150), (1, 5, 5)]


def test_over_budget_request_runs_alone_without_waiting():
    async def main():
        model = FakeModel()
        batcher = Batcher(model, cost=n_docs, max_batch_tokens=10, wait_ms=5000)
        start = time.monotonic()
        result = await batcher.submit("big", docs_of(11))
        elapsed = time.monotonic() - start
        await batcher.close()
        return model, result, elapsed

    model, result, elapsed = asyncio.run(main())
    assert result == "big:11"
    assert model.batches == [["big"]]
    assert elapsed < 1.0  # a batch that can take no more does not wait out wait_ms


def test_wait_ms_gathers_late_arrivals_and_a_full_batch_goes_at_once():
    async def main():
        model = FakeModel()
        batcher = Batcher(model, cost=n_docs, max_batch_tokens=4, wait_ms=5000)
        start = time.monotonic()
        first = asyncio.create_task(batcher.submit("a", docs_of(2)))
        await asyncio.sleep(0.02)
        second = asyncio.create_task(batcher.submit("b", docs_of(2)))  # fills the budget: the batch goes now
        results = await asyncio.gather(first, second)
        elapsed = time.monotonic() - start
        await batcher.close()
        return model, results, elapsed

    model, results, elapsed = asyncio.run(main())
    assert results == ["a:2", "b:2"]
    assert model.batches == [["a", "b"]]
    assert elapsed < 1.0


def test_wait_ms_bounds_the_wait_and_zero_takes_only_what_is_queued():
    async def main():
        model = FakeModel()
        batcher = Batcher(model, cost=n_docs, max_batch_tokens=100, wait_ms=20)
        start = time.monotonic()
        assert await batcher.submit("alone", docs_of(1)) == "alone:1"
        waited = time.monotonic() - start
        await asyncio.sleep(0.05)
        await batcher.submit("later", docs_of(1))
        await batcher.close()

        eager_model = FakeModel()
        eager = Batcher(eager_model, cost=n_docs, max_batch_tokens=100, wait_ms=0)
        # Three tasks created together are all queued before the worker first runs; a fourth comes later.
        await asyncio.gather(*(eager.submit(f"e{i}", docs_of(1)) for i in range(3)))
        await eager.submit("e3", docs_of(1))
        await eager.close()
        return model, waited, eager_model

    model, waited, eager_model = asyncio.run(main())
    assert model.batches == [["alone"], ["later"]]
    assert 0.015 <= waited < 1.0
    assert eager_model.batches == [["e0", "e1", "e2"], ["e3"]]


def test_a_batch_queued_behind_a_call_waits_from_the_calls_end_for_the_clients_it_answered():
    """A closed loop of clients: while a call runs, the others queue; when it ends, the clients it answered send
    their next requests at once. The next batch waits wait_ms from the call's end (not from its first request's
    submit, long past), so those requests join it: under steady load every call holds every client's request."""

    async def main():
        model = FakeModel()
        batcher = Batcher(model, cost=n_docs, max_batch_tokens=100, wait_ms=300)
        hold = await hold_worker(batcher, model)
        queued = asyncio.create_task(batcher.submit("queued", docs_of(1)))
        await asyncio.sleep(0.4)  # longer than wait_ms: counted from its own submit, its wait would be over
        model.release.set()
        await hold  # the call ended; its client sends its next request
        ended = time.monotonic()
        results = await asyncio.gather(queued, batcher.submit("next", docs_of(1)))
        waited = time.monotonic() - ended
        await batcher.close()
        return model, results, waited

    model, results, waited = asyncio.run(main())
    assert results == ["queued:1", "next:1"]
    assert model.batches == [["hold"], ["queued", "next"]]
    assert 0.2 <= waited < 1.0  # the batch waited about wait_ms after the call, no longer


@pytest.mark.parametrize("off", [{"enabled": False}, {"max_batch_tokens": 0}])
def test_batching_off_gives_one_call_per_request(off):
    async def main():
        model = FakeModel()
        batcher = Batcher(model, cost=n_docs, wait_ms=1, **off)
        held = await hold_worker(batcher, model)
        tasks = [asyncio.create_task(batcher.submit(f"q{i}", docs_of(2))) for i in range(5)]
        await until(lambda: batcher.queue_depth == 5)
        model.release.set()
        results = await asyncio.gather(held, *tasks)
        await batcher.close()
        return model, results

    model, results = asyncio.run(main())
    assert results == ["hold:1"] + [f"q{i}:2" for i in range(5)]
    assert model.batches == [["hold"]] + [[f"q{i}"] for i in range(5)]


# --- the queue and timeouts -----------------------------------------------------------------------------------


def test_queue_full_at_the_next_waiting_submit():
    async def main():
        model = FakeModel()
        batcher = Batcher(model, cost=n_docs, max_queue=3, wait_ms=1, name="pointwise")
        held = await hold_worker(batcher, model)  # running, so not counted as waiting
        tasks = [asyncio.create_task(batcher.submit(f"q{i}", docs_of(1))) for i in range(3)]
        await until(lambda: batcher.queue_depth == 3)
        with pytest.raises(
            QueueFullError, match=r"^batcher 'pointwise': queue full \(3 requests waiting\); retry later$"
        ):
            await batcher.submit("q3", docs_of(1))
        model.release.set()
        results = await asyncio.gather(held, *tasks)
        assert batcher.queue_depth == 0
        assert await batcher.submit("q4", docs_of(1)) == "q4:1"
        await batcher.close()
        return model, results

    model, results = asyncio.run(main())
    assert results == ["hold:1", "q0:1", "q1:1", "q2:1"]
    assert "q3" not in sum(model.batches, [])


def test_timeout_while_queued_drops_the_request():
    async def main():
        model = FakeModel()
        batcher = Batcher(model, cost=n_docs, wait_ms=1)
        held = await hold_worker(batcher, model)
        kept = asyncio.create_task(batcher.submit("kept", docs_of(1)))
        with pytest.raises(asyncio.TimeoutError):
            await batcher.submit("late", docs_of(1), timeout=0.03)
        assert batcher.queue_depth == 1
        model.release.set()
        results = await asyncio.gather(held, kept)
        await batcher.close()
        return model, results

    model, results = asyncio.run(main())
    assert results == ["hold:1", "kept:1"]
    assert model.batches == [["hold"], ["kept"]]


def test_timeout_while_running_discards_the_result_only():
    async def main():
        model = FakeModel()
        batcher = Batcher(model, cost=n_docs, wait_ms=1)
        held = asyncio.create_task(batcher.submit("hold", docs_of(1), timeout=0.03))
        await until(model.started.is_set)
        with pytest.raises(asyncio.TimeoutError):
            await held
        nxt = asyncio.create_task(batcher.submit("next", docs_of(1)))
        model.release.set()
        result = await nxt
        await batcher.close()
        return model, result

    model, result = asyncio.run(main())
    assert result == "next:1"
    assert model.batches == [["hold"], ["next"]]


# --- failures -------------------------------------------------------------------------------------------------


def test_a_failing_request_fails_only_itself():
    async def main():
        model = FakeModel(fail_on=("bad",))
        calls = []
        batcher = Batcher(model, cost=n_docs, wait_ms=1, on_batch=lambda *a: calls.append(a))
        held = await hold_worker(batcher, model)
        tasks = [asyncio.create_task(batcher.submit(q, docs_of(2))) for q in ("a", "bad", "c")]
        await until(lambda: batcher.queue_depth == 3)
        model.release.set()
        results = await asyncio.gather(held, *tasks, return_exceptions=True)
        await batcher.close()
        return model, calls, results

    model, calls, results = asyncio.run(main())
    assert model.batches == [["hold"], ["a", "bad", "c"], ["a"], ["bad"], ["c"]]
    assert results[0] == "hold:1" and results[1] == "a:2" and results[3] == "c:2"
    assert len(model.raised) == 2  # the merged call, then "bad" alone
    assert results[2] is model.raised[1]
    assert calls == [(1, 1, 1), (1, 2, 2), (1, 2, 2)]


def test_a_failing_single_request_gets_the_exception():
    async def main():
        model = FakeModel(fail_on=("bad",))
        batcher = Batcher(model, cost=n_docs, enabled=False)
        with pytest.raises(ValueError, match="^cannot rank bad$") as caught:
            await batcher.submit("bad", docs_of(1))
        assert await batcher.submit("good", docs_of(1)) == "good:1"
        await batcher.close()
        return model, caught.value

    model, error = asyncio.run(main())
    assert error is model.raised[0]
    assert model.batches == [["bad"], ["good"]]


def test_a_wrong_number_of_results_is_an_error():
    async def main():
        batcher = Batcher(lambda queries, docs: [], cost=n_docs, name="broken")
        with pytest.raises(RuntimeError, match=r"^batcher 'broken': rank_many returned 0 results for 1 queries$"):
            await batcher.submit("q", docs_of(1))
        await batcher.close()

    asyncio.run(main())


# --- close and the model thread -------------------------------------------------------------------------------


def test_close_finishes_accepted_requests_then_refuses_new_ones():
    async def main():
        model = FakeModel()
        batcher = Batcher(model, cost=n_docs, wait_ms=1, max_batch_tokens=2)
        held = await hold_worker(batcher, model)
        tasks = [asyncio.create_task(batcher.submit(f"q{i}", docs_of(1))) for i in range(5)]
        await until(lambda: batcher.queue_depth == 5)
        closing = asyncio.create_task(batcher.close())
        await asyncio.sleep(0.01)
        assert not closing.done()
        with pytest.raises(BatcherClosedError, match="^batcher is closed: it accepts no new requests$"):
            await batcher.submit("refused", docs_of(1))
        model.release.set()
        await closing
        assert all(t.done() for t in tasks)
        results = await asyncio.gather(held, *tasks)
        await batcher.close()  # twice is fine
        with pytest.raises(BatcherClosedError):
            await batcher.submit("after", docs_of(1))
        return model, results

    model, results = asyncio.run(main())
    assert results == ["hold:1"] + [f"q{i}:1" for i in range(5)]
    assert model.batches == [["hold"], ["q0", "q1"], ["q2", "q3"], ["q4"]]


def test_close_before_any_submit():
    async def main():
        batcher = Batcher(FakeModel(), cost=n_docs)
        await batcher.close()
        with pytest.raises(BatcherClosedError):
            await batcher.submit("q", docs_of(1))

    asyncio.run(main())


def test_model_calls_never_overlap_and_never_run_on_the_event_loop():
    async def main():
        model = FakeModel(sleep=0.002)
        batcher = Batcher(model, cost=n_docs, enabled=False)
        loop_thread = threading.get_ident()
        results = await asyncio.gather(*(batcher.submit(f"q{i}", docs_of(i)) for i in range(12)))
        await batcher.close()
        return model, results, loop_thread

    model, results, loop_thread = asyncio.run(main())
    assert results == [f"q{i}:{i}" for i in range(12)]
    assert model.max_active == 1
    assert len(set(model.threads)) == 1
    assert loop_thread not in model.threads


# --- validation -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_batch_tokens": -1}, r"max_batch_tokens must be an int >= 0 \(0 turns micro-batching off\), got -1"),
        ({"max_batch_tokens": 1.5}, r"max_batch_tokens must be an int >= 0 \(0 turns micro-batching off\), got 1.5"),
        ({"wait_ms": -1}, "wait_ms must be a finite number >= 0, got -1"),
        ({"wait_ms": float("inf")}, "wait_ms must be a finite number >= 0, got inf"),
        ({"max_queue": 0}, "max_queue must be an int >= 1, got 0"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        Batcher(FakeModel(), cost=n_docs, **kwargs)


def test_bad_cost_and_timeout_are_refused():
    async def main():
        batcher = Batcher(FakeModel(), cost=lambda q, d: -1)
        with pytest.raises(ValueError, match=r"^batcher: cost\(query, docs\) must return an int >= 0, got -1$"):
            await batcher.submit("q", docs_of(1))
        with pytest.raises(ValueError, match="^timeout must be None or a number of seconds >= 0, got -1$"):
            await batcher.submit("q", docs_of(1), timeout=-1)
        assert batcher.queue_depth == 0
        await batcher.close()

    asyncio.run(main())


def test_an_on_batch_error_is_logged_not_delivered(caplog):
    def broken_metrics(n_requests, n_documents, total_cost):
        raise KeyError("metric")

    async def main():
        batcher = Batcher(FakeModel(), cost=n_docs, on_batch=broken_metrics, name="m")
        result = await batcher.submit("q", docs_of(1))
        await batcher.close()
        return result

    assert asyncio.run(main()) == "q:1"
    assert [r.getMessage() for r in caplog.records] == ["batcher 'm': on_batch raised"]


def test_one_event_loop_per_batcher():
    batcher = Batcher(FakeModel(), cost=n_docs, name="x")
    assert asyncio.run(batcher.submit("q", docs_of(1))) == "q:1"
    with pytest.raises(RuntimeError, match="^batcher 'x' is bound to another event loop; create one Batcher per"):
        asyncio.run(batcher.submit("q", docs_of(1)))
    asyncio.run(batcher.close())  # its worker ended with its loop; close still shuts the thread down
