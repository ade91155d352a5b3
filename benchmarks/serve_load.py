"""``llmrerank serve`` under load: requests/s and p50/p99 latency with micro-batching on and off.

Two servers run side by side as subprocesses, the real command (``python -m llmrerank.cli serve``, the
``llmrerank`` console script's entry), on free loopback ports: one with micro-batching (``--max-batch-tokens``,
``--batch-wait-ms``), one with ``--no-micro-batching`` (each request its own model call). For each request size
(``--docs``: documents per request) and concurrency (``--concurrency``), the two take turns, so they share
whatever else the machine is doing. A configuration is a closed loop: ``concurrency`` client threads, each with
its own httpx client (keep-alive), send ``POST /v1/rerank`` back to back until its requests are sent
(``--requests`` of one document; ``ceil(requests / D)`` of D documents, but at least ``concurrency``) or
``--max-seconds`` have passed (no request starts after that; those in flight finish). Before it, ``--warmup``
one-document requests (not counted); each server also answers one request of each size once it is ready. Each
configuration runs ``--rounds`` times (default 2), the two servers in turn (on off, then off on), and the round
with the most requests/s of each is reported (every round is in the JSON).

Requests are DL19 queries with their BM25 candidates (``--data``/dl19, or the bundled 5-query sample when that is
absent), in a fixed order that both servers get alike. Reported per configuration: requests answered, req/s and
docs/s (answered / wall time from the first request sent to the last answer), p50/p99/mean latency of the
answered requests, and, from ``GET /metrics`` before and after, the mean requests and documents per model call;
then the ratio of req/s with micro-batching to req/s without at each concurrency and request size. Last, with
the servers stopped, the same model work without a server (``--no-offline`` skips it): the first N one-document
requests (N = the largest concurrency) ranked one by one and in one ``rank_many`` call, best of 3, with the
real and padded tokens each way: how much merging can give at most on this machine.

    python benchmarks/serve_load.py                  # writes benchmarks/results/serve_load-smollm2-135m.json
    python benchmarks/serve_load.py --quick --out results/smoke.json
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import (
    DL_RUN,
    RESULTS,
    Report,
    add_backend_options,
    add_data_option,
    environment,
    header,
    markdown_table,
    text_table,
)

MODES = {"on": True, "off": False}  # micro-batching
AIM = {"docs_per_request": 1, "concurrency": 16, "ratio": 2.0}  # issue 13: on/off req/s at least 2x there


# --- the requests -------------------------------------------------------------------------------------------


def request_pool(data: Path, top_k: int) -> tuple[list[tuple[str, list[str]]], str]:
    """(query, the texts of its first ``top_k`` BM25 candidates) for every query of ``data``/dl19, or of the
    bundled sample when that folder is absent; and which of the two it is."""
    from llmrerank.data import find_run, load_beir, load_run, sample_path

    folder = data / "dl19"
    if (folder / "corpus.jsonl").exists():
        run_path, source = folder / DL_RUN, f"dl19 ({folder}, {DL_RUN})"
    else:
        folder = sample_path()
        run_path, source = find_run(folder), f"the bundled sample ({folder.name}; {data / 'dl19'} is absent)"
        if run_path is None:
            raise FileNotFoundError(f"{folder} has no single *.trec run")
    beir = load_beir(folder)
    run = load_run(run_path)
    pool = []
    for qid, query in beir.queries.items():
        texts = [beir.corpus[d].text for d, _ in run.get(qid, [])[:top_k] if d in beir.corpus]
        if texts:
            pool.append((query, texts))
    if not pool:
        raise ValueError(f"{run_path}: no query of {folder} has candidates with text")
    return pool, source


def request_body(pool: list[tuple[str, list[str]]], i: int, docs: int, model: str) -> dict[str, Any]:
    """Request ``i`` of a configuration: query ``i mod len(pool)``, and ``docs`` of its candidates, taken in
    turn (request ``i`` starts where the previous request for that query stopped, wrapping around)."""
    query, texts = pool[i % len(pool)]
    start = (i // len(pool)) * docs
    chosen = [texts[(start + j) % len(texts)] for j in range(docs)]
    return {"model": model, "query": query, "documents": chosen, "return_documents": False}


# --- the servers --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """``llmrerank serve`` in a subprocess on a free loopback port, its output in a temporary log file."""

    def __init__(self, args: argparse.Namespace, batching: bool):
        import llmrerank

        self.mode = "on" if batching else "off"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.argv = ["serve", "--model", args.model, "--method", args.method, "--port", str(self.port)]
        if args.max_length:
            self.argv += ["--max-length", str(args.max_length)]
        for flag in ("batch_size", "dtype", "device", "threads"):
            if getattr(args, flag) is not None:
                self.argv += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
        self.argv += ["--timeout", str(args.request_timeout), "--max-queue", str(max(args.concurrency) * 4)]
        if batching:
            self.argv += ["--max-batch-tokens", str(args.max_batch_tokens), "--batch-wait-ms", str(args.batch_wait_ms)]
        else:
            self.argv += ["--no-micro-batching"]
        # the server imports the llmrerank this script imports (a checkout's src/ included)
        env = dict(os.environ)
        src = str(Path(llmrerank.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
        self.log = tempfile.NamedTemporaryFile("w+", prefix="serve_load-", suffix=".log", delete=False)
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "llmrerank.cli", *self.argv], stdout=self.log, stderr=subprocess.STDOUT, env=env
        )

    @property
    def command(self) -> str:
        return "llmrerank " + " ".join(a if a != str(self.port) else "PORT" for a in self.argv)

    def tail(self, lines: int = 20) -> str:
        self.log.flush()
        return "\n".join(Path(self.log.name).read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, timeout: float) -> float:
        """Seconds from the process's start until ``/health`` answers 200 (the model loaded); a RuntimeError if
        the process ends first."""
        import httpx

        start = self.started
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.command} exited with {self.process.returncode}:\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return time.monotonic() - start
            except httpx.TransportError:
                pass
            if time.monotonic() - start > timeout:
                raise RuntimeError(f"{self.command} was not ready within {timeout:g} s:\n{self.tail()}")
            time.sleep(0.5)

    def check(self, body: dict[str, Any], timeout: float) -> None:
        """Send ``body`` once; anything but 200 with every document ranked is a RuntimeError with the answer and
        the end of the server's log."""
        import httpx

        response = httpx.post(f"{self.url}/v1/rerank", json=body, timeout=timeout)
        if response.status_code != 200 or len(response.json().get("results", [])) != len(body["documents"]):
            raise RuntimeError(
                f"{self.command}: a request of {len(body['documents'])} document(s) was answered "
                f"{response.status_code} {response.text[:500]}\n{self.tail()}"
            )

    def stop(self) -> None:
        """SIGTERM (the server finishes what it accepted), then SIGKILL after 60 s; the log file removed."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)


def batch_totals(url: str) -> dict[str, float]:
    """The server's batch histograms so far, summed over rankers: model calls, requests and documents in them."""
    import httpx

    totals = {"calls": 0.0, "requests": 0.0, "documents": 0.0}
    names = {
        "llmrerank_batch_requests_count": "calls",
        "llmrerank_batch_requests_sum": "requests",
        "llmrerank_batch_documents_sum": "documents",
    }
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in names:
            totals[names[name]] += float(line.rsplit(" ", 1)[1])
    return totals


# --- one configuration --------------------------------------------------------------------------------------


def closed_loop(
    url: str, bodies: Any, n: int, concurrency: int, deadline: float | None, timeout: float, bar: Any = None
) -> tuple[list[tuple[float, float, int, int]], float]:
    """``concurrency`` threads send ``bodies(i)`` for i = 0, 1, ... until ``n`` are sent or ``deadline``
    (``time.perf_counter``) has passed; each answer as (sent, answered, HTTP status, results), and the
    time the first was sent."""
    import httpx

    lock = threading.Lock()
    counter = iter(range(n))
    done: list[tuple[float, float, int, int]] = []
    failures: list[BaseException] = []

    def worker() -> None:
        try:
            with httpx.Client(timeout=timeout) as client:
                while True:
                    with lock:
                        i = next(counter, None)
                    if i is None or (deadline is not None and time.perf_counter() >= deadline):
                        return
                    body = bodies(i)
                    sent = time.perf_counter()
                    response = client.post(f"{url}/v1/rerank", json=body)
                    answered = time.perf_counter()
                    results = len(response.json().get("results", [])) if response.status_code == 200 else 0
                    with lock:
                        done.append((sent, answered, response.status_code, results))
                        if bar is not None:
                            bar.update(1)
        except BaseException as e:  # reported by the caller, with the others' answers
            failures.append(e)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise RuntimeError(f"a client thread failed: {type(failures[0]).__name__}: {failures[0]}") from failures[0]
    return done, start


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between the sorted values (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def planned_requests(requests: int, docs: int, concurrency: int) -> int:
    """Requests of one configuration: ``requests`` of one document, ``ceil(requests / docs)`` of ``docs``
    documents (about as many documents), but at least ``concurrency`` (every client sends at least once)."""
    return max(-(-requests // docs), concurrency)


def measure(
    server: ServeProcess, args: argparse.Namespace, pool: list[tuple[str, list[str]]], docs: int, concurrency: int
) -> dict[str, Any]:
    """One configuration: the warm-up requests, then the measured closed loop; its figures."""
    from tqdm.auto import tqdm

    if args.warmup:

        def warm(i: int) -> dict[str, Any]:
            return request_body(pool, i, 1, args.model)

        closed_loop(server.url, warm, args.warmup, min(args.warmup, concurrency), None, args.request_timeout)
    before = batch_totals(server.url)
    mode = server.mode
    planned = planned_requests(args.requests, docs, concurrency)
    bar = tqdm(total=planned, desc=f"batching {mode} c={concurrency} docs={docs}", unit="req", file=sys.stderr)
    deadline = time.perf_counter() + args.max_seconds if args.max_seconds else None
    answers, start = closed_loop(
        server.url,
        lambda i: request_body(pool, i, docs, args.model),
        planned,
        concurrency,
        deadline,
        args.request_timeout,
        bar,
    )
    bar.close()
    after = batch_totals(server.url)
    good = [(s, a) for s, a, status, results in answers if status == 200 and results == docs]
    statuses: dict[str, int] = {}
    for _, _, status, _ in answers:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    seconds = max(a for _, a, _, _ in answers) - start
    latencies = [(a - s) * 1000 for s, a in good]
    calls = after["calls"] - before["calls"]
    row: dict[str, Any] = {
        "batching": mode,
        "concurrency": concurrency,
        "docs_per_request": docs,
        "requests_planned": planned,
        "requests": len(answers),
        "answered": len(good),
        "statuses": statuses,
        "stopped_by_time": len(answers) < planned,
        "seconds": round(seconds, 2),
        "requests_per_s": round(len(good) / seconds, 3),
        "docs_per_s": round(len(good) * docs / seconds, 2),
        "model_calls": int(calls),
        "batch_requests_mean": round((after["requests"] - before["requests"]) / calls, 2) if calls else None,
        "batch_documents_mean": round((after["documents"] - before["documents"]) / calls, 2) if calls else None,
    }
    if latencies:
        row.update(
            p50_ms=round(percentile(latencies, 50), 1),
            p99_ms=round(percentile(latencies, 99), 1),
            mean_ms=round(sum(latencies) / len(latencies), 1),
            max_ms=round(max(latencies), 1),
        )
    return row


# --- the same work without a server -------------------------------------------------------------------------


def offline_check(args: argparse.Namespace, pool: list[tuple[str, list[str]]], repeats: int = 3) -> dict[str, Any]:
    """In this process, no server: the first N one-document requests (N = the largest concurrency) ranked one by
    one (the model work without micro-batching) and in one ``rank_many`` call (a merged batch of all N), in turn,
    best of ``repeats``; with the real and padded tokens the backend ran each way."""
    from llmrerank import Reranker

    options = {k: getattr(args, k) for k in ("batch_size", "dtype", "device", "threads") if getattr(args, k)}
    if args.max_length:
        options["max_length"] = args.max_length
    ranker = Reranker(args.method, model=args.model, **options)
    n = max(args.concurrency)
    bodies = [request_body(pool, i, 1, args.model) for i in range(n)]
    queries, docs = [b["query"] for b in bodies], [b["documents"] for b in bodies]
    ranker.rank_many(queries[:2], docs[:2])  # warm-up
    kept: dict[str, dict[str, Any]] = {}
    for _ in range(repeats):
        for way in ("one_by_one", "rank_many"):
            stats = ranker.backend.stats
            before = stats.snapshot()
            start = time.perf_counter()
            if way == "one_by_one":
                for query, texts in zip(queries, docs):
                    ranker.rank(query, texts)
            else:
                ranker.rank_many(queries, docs)
            seconds = time.perf_counter() - start
            used = stats.since(before)
            if way not in kept or seconds < kept[way]["seconds"]:
                kept[way] = {"seconds": seconds, **{k: used.get(k) for k in ("forward_calls", "tokens")}}
                kept[way]["padded_tokens"] = used.get("padded_tokens")
    one, many = kept["one_by_one"]["seconds"], kept["rank_many"]["seconds"]
    for way in kept.values():
        way["seconds"] = round(way["seconds"], 3)
    speedup = round(one / many, 2) if many > 0 else None
    return {"requests": n, "repeats": repeats, **kept, "rank_many_speedup": speedup}


# --- the report ---------------------------------------------------------------------------------------------


def best(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (documents per request, concurrency, batching), the round with the most requests/s, in the order
    measured, with every round's requests/s as ``rounds_requests_per_s``."""
    kept: dict[tuple[int, int, str], dict[str, Any]] = {}
    for r in rows:
        key = (r["docs_per_request"], r["concurrency"], r["batching"])
        every = [*kept[key]["rounds_requests_per_s"], r["requests_per_s"]] if key in kept else [r["requests_per_s"]]
        if key not in kept or r["requests_per_s"] > kept[key]["requests_per_s"]:
            kept[key] = dict(r)
        kept[key]["rounds_requests_per_s"] = every
    return list(kept.values())


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """req/s with micro-batching over req/s without, per (documents per request, concurrency) measured both ways."""
    by = {(r["docs_per_request"], r["concurrency"], r["batching"]): r for r in rows}
    out = []
    for (docs, c, mode), on in by.items():
        off = by.get((docs, c, "off"))
        if mode == "on" and off is not None and off["requests_per_s"] > 0:
            ratio = on["requests_per_s"] / off["requests_per_s"]
            p99 = on.get("p99_ms"), off.get("p99_ms")
            out.append(
                {
                    "docs_per_request": docs,
                    "concurrency": c,
                    "on_over_off": round(ratio, 2),
                    "p99_on_over_off": round(p99[0] / p99[1], 2) if None not in p99 and p99[1] else None,
                }
            )
    return out


def aim(result: dict[str, Any]) -> dict[str, Any] | None:
    """Whether micro-batching gave at least 2x the requests/s at concurrency 16 with 1-document requests."""
    for r in result["ratios"]:
        if r["docs_per_request"] == AIM["docs_per_request"] and r["concurrency"] == AIM["concurrency"]:
            return {**AIM, "measured": r["on_over_off"], "met": r["on_over_off"] >= AIM["ratio"]}
    return None


def summary(result: dict[str, Any]) -> str:
    """The best round of each configuration (every round's req/s beside it), the on/off ratios, the aim."""
    cells = [["batching", "concurrency", "docs/req", "answered", "req/s", "docs/s", "p50 ms", "p99 ms", "req/call"]]
    cells[0] += ["docs/call", "req/s of each round"]
    stopped = False
    for r in result["best"]:
        stopped = stopped or r["stopped_by_time"]
        cells.append(
            [
                r["batching"],
                str(r["concurrency"]),
                str(r["docs_per_request"]),
                f"{r['answered']}/{r['requests_planned']}" + ("*" if r["stopped_by_time"] else ""),
                f"{r['requests_per_s']:.2f}",
                f"{r['docs_per_s']:.1f}",
                f"{r.get('p50_ms', float('nan')):.0f}",
                f"{r.get('p99_ms', float('nan')):.0f}",
                "" if r["batch_requests_mean"] is None else f"{r['batch_requests_mean']:.2f}",
                "" if r["batch_documents_mean"] is None else f"{r['batch_documents_mean']:.1f}",
                ", ".join(f"{v:.2f}" for v in r["rounds_requests_per_s"]),
            ]
        )
    lines = text_table(cells, 1)
    failed = [r for r in result["runs"] if r["answered"] < r["requests"]]
    for r in failed:
        lines.append(
            f"batching {r['batching']}, concurrency {r['concurrency']}, {r['docs_per_request']} docs, round "
            f"{r['round']}: {r['requests'] - r['answered']} of {r['requests']} requests not answered in full "
            f"(HTTP statuses {r['statuses']})"
        )
    if stopped:
        lines.append("* stopped by --max-seconds before all its requests were sent")
    lines.append("")
    lines += markdown_table(
        [["docs/req", "concurrency", "req/s on / off", "p99 on / off"]]
        + [
            [str(r["docs_per_request"]), str(r["concurrency"]), f"{r['on_over_off']:.2f}x"]
            + ["" if r["p99_on_over_off"] is None else f"{r['p99_on_over_off']:.2f}x"]
            for r in result["ratios"]
        ]
    )
    offline = result.get("offline")
    if offline:
        one, many = offline["one_by_one"], offline["rank_many"]
        lines.append(
            f"without a server: {offline['requests']} one-document requests one by one {one['seconds']:.2f} s "
            f"({one['forward_calls']} forward passes, {one['padded_tokens']} tokens), in one rank_many "
            f"{many['seconds']:.2f} s ({many['forward_calls']} passes, {many['padded_tokens']} tokens with padding, "
            f"{many['tokens']} without): {offline['rank_many_speedup']}x"
        )
    if result.get("aim"):
        a = result["aim"]
        verdict = "met" if a["met"] else "NOT met"
        lines.append(
            f"aim (concurrency {a['concurrency']}, {a['docs_per_request']} document a request: micro-batching "
            f">= {a['ratio']:g}x the req/s without): {verdict}, {a['measured']:.2f}x"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_option(ap, "dl19/ (else the bundled sample is used)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--method", default="pointwise")
    ap.add_argument(
        "--max-length",
        type=int,
        default=256,
        help="tokens per prompt (0: the method's own default, e.g. for listwise, whose 20-passage window needs more)",
    )
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--docs", type=int, nargs="+", default=[1, 20], help="documents per request")
    ap.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES), help="micro-batching on / off")
    ap.add_argument(
        "--requests",
        type=int,
        default=64,
        help="1-document requests per configuration; with D documents a request, ceil(N / D) but at least the "
        "concurrency",
    )
    ap.add_argument("--max-seconds", type=float, default=60, help="no request starts after this (0: no limit)")
    ap.add_argument("--rounds", type=int, default=2, help="each configuration this many times, modes in turn")
    ap.add_argument("--warmup", type=int, default=4, help="1-document warm-up requests before each configuration")
    ap.add_argument("--max-batch-tokens", type=int, default=8192)
    ap.add_argument("--batch-wait-ms", type=float, default=5.0)
    ap.add_argument("--request-timeout", type=int, default=900, help="the servers' --timeout and the clients' (s)")
    ap.add_argument("--load-timeout", type=float, default=900, help="seconds to wait for a server's model to load")
    ap.add_argument(
        "--no-offline",
        dest="offline",
        action="store_false",
        help="skip timing, in this process after the servers stop, the largest concurrency's one-document requests "
        "ranked one by one against one rank_many call",
    )
    ap.add_argument("--quick", action="store_true", help="--requests 16 --max-seconds 20")
    ap.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/serve_load-{model}.json")
    add_backend_options(ap)
    args = ap.parse_args(argv)
    for name in ("concurrency", "docs"):
        if any(v < 1 for v in getattr(args, name)):
            raise ValueError(f"--{name} takes numbers >= 1, got {getattr(args, name)}")
    if args.requests < 1 or args.rounds < 1 or args.warmup < 0 or args.max_seconds < 0:
        raise ValueError("--requests and --rounds must be >= 1, --warmup and --max-seconds >= 0")
    if args.quick:
        args.requests, args.max_seconds = min(args.requests, 16), min(args.max_seconds or 20, 20)
    if args.max_length:
        from llmrerank.registry import options_class

        if "max_length" not in options_class(args.method).specs():
            raise ValueError(f"--method {args.method} takes no max_length: pass --max-length 0")
    out = args.out or RESULTS / f"serve_load-{Path(args.model).name}.json"

    pool, source = request_pool(args.data, max(args.docs))
    names = ("max_length", "concurrency", "docs", "requests", "rounds", "max_seconds", "warmup", "max_batch_tokens")
    settings = {k: getattr(args, k) for k in names}
    settings.update(batch_wait_ms=args.batch_wait_ms, batch_size=args.batch_size, dtype=args.dtype)
    settings.update(threads=args.threads, device=args.device, data=source, queries=len(pool))
    report = Report(out, header("serve_load", model=args.model, method=args.method, settings=settings))
    report.result.update(environment=environment(), servers={}, runs=[], best=[], ratios=[], aim=None, offline=None)
    report.write()

    servers = {mode: ServeProcess(args, MODES[mode]) for mode in args.modes}
    try:
        for mode, server in servers.items():
            seconds = server.wait_ready(args.load_timeout)
            for docs in args.docs:  # one untimed request of each size, which must be answered
                server.check(request_body(pool, 0, docs, args.model), args.request_timeout)
            report.result["servers"][mode] = {"command": server.command, "ready_after_s": round(seconds, 1)}
            print(f"batching {mode}: {server.command} (ready after {seconds:.0f} s)", file=sys.stderr)
        report.write()
        for docs in args.docs:
            for concurrency in args.concurrency:
                for round_ in range(args.rounds):  # the modes take turns: on off, off on, ...
                    order = list(servers.values())
                    for server in order if round_ % 2 == 0 else order[::-1]:
                        row = {"round": round_ + 1, **measure(server, args, pool, docs, concurrency)}
                        report.result["runs"].append(row)
                        report.result["best"] = best(report.result["runs"])
                        report.result["ratios"] = ratios(report.result["best"])
                        report.result["aim"] = aim(report.result)
                        report.write()
    finally:
        for server in servers.values():
            server.stop()
    if args.offline:
        print("the same model work without a server (--no-offline skips it)", file=sys.stderr)
        report.result["offline"] = offline_check(args, pool)
    report.finish(summary(report.result))


if __name__ == "__main__":
    main()
