"""The Ray engine on a real local Ray cluster (two nodes of 1 CPU each, usage statistics off): the same rankings as
the local engine, a worker killed mid-run replaced with no query lost or doubled, workers that cannot start ending
at a deadline instead of pending, a worker's refusal naming its query, and the command line (in this process, and
in a fresh one that starts and stops its own cluster)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import make_beir, needs
from llmrerank import Reranker
from llmrerank.cli import describe_error, main
from llmrerank.data import load_beir, load_run
from llmrerank.pipeline import kept_queries, rerank, rerank_run

ray = needs("ray", "the Ray engine")

from llmrerank.distributed import EngineError, RayEngine, _failure, _raised  # noqa: E402

N_QUERIES, N_DOCS, PER_BATCH = 24, 12, 2
LONG = " ".join(["honey bees"] * 40)  # a query the listwise prompt below cannot hold


@pytest.fixture(scope="module")
def cluster():
    """One real cluster for the module, joined by this process (the engine uses it and leaves it running): two
    nodes of 1 CPU and 1 GPU each. The GPUs are only declared (Ray schedules by the numbers): no worker takes one
    unless asked, and one that asks for 2 fits no node."""
    from ray.cluster_utils import Cluster

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 1, "include_dashboard": False})
    nodes.add_node(num_cpus=1, num_gpus=1)
    ray.init(address=nodes.address, log_to_driver=False, logging_level=logging.ERROR)
    yield nodes
    ray.shutdown()
    nodes.shutdown()


@contextmanager
def within(seconds: float) -> Iterator[None]:
    """Fail, rather than hang, when the block is still running after ``seconds``."""

    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _hold_a_cpu():
    """A CPU of the cluster reserved (a placement group: nothing runs on it), to make the cluster busy; first wait
    for one to be free (after a worker was killed, say). ``_release`` gives it back."""
    _free_cpus(1)
    group = ray.util.placement_group([{"CPU": 1}])
    ray.get(group.ready(), timeout=60)
    return group


def _release(group) -> None:
    ray.util.remove_placement_group(group)


def _free_cpus(n: float, wait: float = 60.0) -> None:
    deadline = time.monotonic() + wait
    while ray.available_resources().get("CPU", 0) < n:
        assert time.monotonic() < deadline, f"fewer than {n} CPUs free after {wait} s"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """24 queries with 12 candidates each; the last query is LONG."""
    return make_beir(tmp_path_factory.mktemp("ray-data"), N_QUERIES, N_DOCS, spare=5, texts={N_QUERIES - 1: LONG})


def _inputs(data: Path):
    ds = load_beir(data)
    return ds.queries, ds.corpus, load_run(data / "run.trec")


def _config(model: Path, method: str = "likelihood", **options) -> dict:
    return {"method": method, "model": str(model), "backend": {"batch_size": 4}, "options": options}


def assert_parity(local: dict, remote: dict) -> None:
    """Scores within 1e-4 of the local engine's, and the same order except between documents closer than that."""
    assert sorted(remote) == sorted(local)
    for qid, ranking in local.items():
        want = dict(zip(ranking.ids, ranking.scores))
        got = dict(zip(remote[qid].ids, remote[qid].scores))
        assert want.keys() == got.keys()
        assert max(abs(want[d] - got[d]) for d in want) <= 1e-4, qid
        order = remote[qid].ids
        for i, a in enumerate(order):
            for b in order[i + 1 :]:
                assert want[a] >= want[b] - 1e-4, (qid, a, b)


def _pairs(items) -> dict:
    """(query id, Ranking) pairs as a dict, refusing a query seen twice."""
    out = {}
    for qid, ranking in items:
        assert qid not in out, f"{qid} came back twice"
        out[qid] = ranking
    return out


def test_the_ray_engine_ranks_as_the_local_engine(cluster, data, tiny_model_dir):
    queries, corpus, run = _inputs(data)
    queries = {q: t for q, t in queries.items() if t != LONG}
    local_ranker = Reranker.from_config(_config(tiny_model_dir))
    local = _pairs(rerank(local_ranker, queries, corpus, run, queries_per_batch=PER_BATCH))
    # the address of the cluster this process joined is accepted; the default: one worker on each node
    with RayEngine(address=cluster.address).start(_config(tiny_model_dir)) as remote:
        assert remote.num_workers == 2
        assert len(set(remote.worker_pids())) == 2 and os.getpid() not in remote.worker_pids()
        assert remote.describe() == local_ranker.describe() and remote.config() == local_ranker.config()
        got = _pairs(rerank(remote, queries, corpus, run, queries_per_batch=PER_BATCH))
        # the workers' accounting, summed on the driver, is the local backend's
        assert remote.backend.stats.tokens == local_ranker.backend.stats.tokens > 0
        assert remote.backend.stats.sequences == local_ranker.backend.stats.sequences == (N_QUERIES - 1) * N_DOCS
        one = remote.rank(queries["q0"], [corpus[d] for d, _ in run["q0"]])
        assert one.indices == local["q0"].indices
        assert remote.engine_info["workers_replaced"] == 0
    assert_parity(local, got)
    for qid in local:  # the rankers' per-query accounting travels with each ranking
        assert got[qid].metadata["tokens"] == local[qid].metadata["tokens"]


def test_a_query_the_ranker_refuses_is_refused_before_the_run(cluster, data, tiny_model_dir):
    queries, corpus, run = _inputs(data)
    queries = {**queries, "q3": ""}  # query likelihood has no target to score for an empty query
    local = Reranker.from_config(_config(tiny_model_dir))
    with pytest.raises(ValueError) as local_error:
        rerank(local, queries, corpus, run)
    with RayEngine(num_workers=1).start(_config(tiny_model_dir)) as remote:
        with pytest.raises(ValueError) as remote_error:
            rerank(remote, queries, corpus, run)
    assert str(remote_error.value) == str(local_error.value) and str(local_error.value).startswith("query q3: ")


def test_a_worker_killed_mid_run_is_replaced_and_no_query_is_lost_or_doubled(cluster, data, tiny_model_dir):
    queries, corpus, run = _inputs(data)
    queries = {q: t for q, t in queries.items() if t != LONG}
    local = _pairs(rerank(Reranker.from_config(_config(tiny_model_dir)), queries, corpus, run, queries_per_batch=1))
    with RayEngine(num_workers=2).start(_config(tiny_model_dir)) as remote:
        before = remote.worker_pids()
        results = rerank(remote, queries, corpus, run, queries_per_batch=1)
        first = [next(results)]
        os.kill(before[0], signal.SIGKILL)  # the process of worker 0, with batches queued on it
        got = _pairs([*first, *results])
        after = remote.worker_pids()
        info = remote.engine_info
    assert after[0] != before[0] and after[1] == before[1]
    assert info["workers_replaced"] >= 1 and info["batches_redone"] >= 1
    assert_parity(local, got)


def test_a_replacement_with_no_room_gives_up_its_slot_and_the_others_finish_the_run(cluster, data, tiny_model_dir):
    queries, corpus, run = _inputs(data)
    queries = {q: t for q, t in queries.items() if t != LONG}
    local = _pairs(rerank(Reranker.from_config(_config(tiny_model_dir)), queries, corpus, run, queries_per_batch=1))
    held = []
    try:
        # the first workers may be slow to start on a loaded machine; a replacement gets 20 s
        engine = RayEngine(num_workers=2, start_timeout=120, replace_timeout=20)
        assert engine.replacement_timeout == 20 and RayEngine(start_timeout=120).replacement_timeout == 120
        with within(300), engine.start(_config(tiny_model_dir)) as remote:
            before = remote.worker_pids()
            results = rerank(remote, queries, corpus, run, queries_per_batch=1)
            first = [next(results)]
            os.kill(before[0], signal.SIGKILL)
            held.append(_hold_a_cpu())  # its CPU taken at once: its replacement has nowhere to run (a lost machine)
            got = _pairs([*first, *results])
            assert remote.worker_pids() == [before[1]]  # the slot given up at its deadline
            assert remote.engine_info["workers_replaced"] == 1 and remote.engine_info["workers_dropped"] == 1
            assert remote.engine_info["replace_timeout"] == 20
            # a worker dead when the queries are checked is replaced (on the CPU it left) and the check answered
            os.kill(before[1], signal.SIGKILL)
            assert list(remote.check_queries({"q3": "", "q4": "bees"})) == ["q3"]
            (last,) = remote.worker_pids()
            assert last != before[1]
            # the last worker lost with no room for its replacement: the run ends, it does not wait for one
            results = rerank(remote, queries, corpus, run, queries_per_batch=1)
            next(results)
            os.kill(last, signal.SIGKILL)
            held.append(_hold_a_cpu())
            with pytest.raises(EngineError, match="^no Ray worker is left to rank the remaining queries: .* 20 s"):
                list(results)
    finally:
        for group in held:
            _release(group)
    assert_parity(local, got)
    _free_cpus(2)


@pytest.fixture(scope="class")
def single(cluster, tiny_model_dir):
    """One worker kept for several runs, with 4 batches queued on it at a time and one retry per batch (ended
    after the class's tests: its CPU is needed by the others)."""
    with RayEngine(num_workers=1, inflight=4, max_retries=1, start_timeout=120).start(_config(tiny_model_dir)) as one:
        yield one


class TestOneKeptWorker:
    """Runs on one worker kept across them."""

    def test_a_run_left_early_withdraws_the_batches_queued_on_its_kept_workers(self, single, data):
        queries, corpus, run = _inputs(data)
        docs = [corpus[d].text for d, _ in run["q0"]]
        small = (["q0"], [queries["q0"]], [docs])
        big = [([f"q{i}"], [queries[f"q{i}"]], [docs * 80]) for i in range(1, 5)]  # 960 candidates each
        worker = single._workers[0]
        before = ray.get(worker.totals.remote())["sequences"]
        for index, _ in single.rank_batches([small, *big]):
            assert index == 0
            break  # the consumer stops after the small batch, while the worker holds the 4 big ones
        # what the worker ranked before it answers this (in order, after whatever it still holds): the small batch,
        # and the big one it was ranking if it had begun one (two, at worst, if it had begun the next one first),
        # never all four (a worker that reads the board before the first big batch ranks the small batch alone)
        ranked = ray.get(worker.totals.remote())["sequences"] - before
        assert ranked in (len(docs), len(docs) * 81, len(docs) * 161), ranked / len(docs)

    def test_a_death_counts_against_the_batch_running_not_those_queued_behind_it(self, single, data, tiny_model_dir):
        """max_retries is 1: each kill below hits a worker holding 4 batches, so had the death counted against all of
        them, the second kill (during one of those batches) would end the run."""
        queries, corpus, run = _inputs(data)
        queries = {q: t for q, t in queries.items() if t != LONG}
        local = _pairs(rerank(Reranker.from_config(_config(tiny_model_dir)), queries, corpus, run, queries_per_batch=1))
        replaced = single.replaced
        with within(240):
            results = rerank(single, queries, corpus, run, queries_per_batch=1)
            got = [next(results)]
            os.kill(single.worker_pids()[0], signal.SIGKILL)
            got.append(next(results))  # from the replacement, which now ranks the next of the batches redone
            os.kill(single.worker_pids()[0], signal.SIGKILL)
            got = _pairs([*got, *results])
        assert single.replaced == replaced + 2
        assert_parity(local, got)

    def test_rank_many_checks_its_arguments_as_the_local_ranker_does(self, single, tiny_model_dir):
        local = Reranker.from_config(_config(tiny_model_dir))
        bad = [("a query", [["d"]]), ({"q": "x"}, [["d"]]), (["x"], {"q": ["d"]}), (["x", "y"], [["d"]]),
               ([1], [["d"]]), (["x"], [[3]])]
        for queries, docs in bad:
            with pytest.raises((TypeError, ValueError)) as want:
                local.rank_many(queries, docs)
            with pytest.raises(type(want.value)) as got:
                single.rank_many(queries, docs)
            assert str(got.value) == str(want.value)
        assert single.rank_many([], []) == local.rank_many([], []) == []


def test_a_worker_out_of_gpu_memory_says_what_to_change():
    import torch

    oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")
    error = _raised(_failure(oom), "query q1")  # as the worker sends it, as the driver raises it
    assert isinstance(error, EngineError)
    line, status = describe_error(error)
    assert status == 1 and "bug" not in line
    assert line.startswith("query q1: a Ray worker ran out of GPU memory (CUDA out of memory. Tried to allocate 2.00 "
                           "GiB); rank fewer candidates at once (--queries-per-batch, --top-k), lower --batch-tokens")


def test_a_query_that_fails_in_a_worker_ends_the_run_naming_it_and_the_rest_resumes(
    cluster, data, tiny_model_dir, tmp_path
):
    queries, corpus, run = _inputs(data)
    config = _config(tiny_model_dir, "listwise", max_length=220, window_size=4, step=2)
    out = tmp_path / "out.trec"
    with pytest.raises(ValueError, match=rf"^query q{N_QUERIES - 1}: the listwise prompt .* \(in a Ray worker\)$"):
        rerank_run(config, queries, corpus, run, out, top_k=8, queries_per_batch=PER_BATCH, progress=False,
                   engine=RayEngine(num_workers=2))
    partial = out.with_name("out.trec.partial")
    assert not out.exists() and partial.exists()
    kept, damaged = kept_queries(partial, run, list(queries), 8, "llmrerank-listwise")
    assert damaged == 0 and len(kept) >= PER_BATCH and f"q{N_QUERIES - 1}" not in kept
    # the queries written stay valid: a resume without the refused query keeps them and ranks the rest
    rest = {q: t for q, t in queries.items() if t != LONG}
    ranker = Reranker.from_config(config)
    report = rerank_run(ranker, rest, corpus, run, out, top_k=8, resume=True, queries_per_batch=PER_BATCH,
                        progress=False)
    assert report.queries_skipped_resume == len(kept) and report.queries + len(kept) == len(rest)
    reference = tmp_path / "reference.trec"
    rerank_run(ranker, rest, corpus, run, reference, top_k=8, queries_per_batch=PER_BATCH, progress=False)
    assert out.read_text() == reference.read_text()


def _cli(data: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return ["rerank", "--data", str(data), "--model", str(model), "--method", "likelihood", "--top-k", "8",
            "--queries-per-batch", str(PER_BATCH), "--batch-size", "4", "--quiet", "--out", str(out), *extra]


def _rankings(path: Path, top_k: int = 8) -> dict:
    """A TREC run's top ``top_k`` per query, as {query: Ranking} for assert_parity."""
    from llmrerank.types import Ranking

    rows: dict[str, list[tuple[str, float]]] = {}
    for line in path.read_text().splitlines():
        q, _, d, _, s, _ = line.split()
        rows.setdefault(q, []).append((d, float(s)))
    return {
        q: Ranking(tuple(range(top_k)), tuple(s for _, s in r[:top_k]), ids=tuple(d for d, _ in r[:top_k]))
        for q, r in rows.items()
    }


@pytest.fixture(scope="module")
def short_data(data, tmp_path_factory) -> Path:
    """``data`` without its LONG query (for the runs that must finish)."""
    root = tmp_path_factory.mktemp("ray-short")
    for name in ("corpus.jsonl", "run.trec"):
        (root / name).write_text((data / name).read_text())
    (root / "qrels").mkdir()
    (root / "qrels/test.tsv").write_text((data / "qrels/test.tsv").read_text())
    lines = [x for x in (data / "queries.jsonl").read_text().splitlines() if LONG not in x]
    (root / "queries.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def local_out(short_data, tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ray-local") / "local.trec"
    assert main(_cli(short_data, tiny_model_dir, out)) == 0
    return out


def test_the_command_line_writes_the_local_engines_run_and_either_engine_resumes_it(
    cluster, short_data, tiny_model_dir, local_out, tmp_path, capsys
):
    out = tmp_path / "ray.trec"
    assert main(_cli(short_data, tiny_model_dir, out, "--engine", "ray", "--num-workers", "2")) == 0
    assert_parity(_rankings(local_out), _rankings(out))
    side = json.loads((tmp_path / "ray.trec.json").read_text())
    local_side = json.loads(local_out.with_name("local.trec.json").read_text())
    assert side["engine"]["name"] == "ray" and side["engine"]["workers"] == 2
    assert local_side["engine"] == {"name": "local"}
    for key in ("ranker", "backend", "top_k", "queries_per_batch", "data", "split", "input_run"):
        assert side[key] == local_side[key], key
    assert side["report"]["documents"] == local_side["report"]["documents"] == (N_QUERIES - 1) * 8
    assert side["backend_stats"]["tokens"] == local_side["backend_stats"]["tokens"]
    written = out.read_text()
    capsys.readouterr()
    assert main(_cli(short_data, tiny_model_dir, out, "--resume")) == 0  # the local engine finds it all done
    assert f"{N_QUERIES - 1} queries already done (resume)" in capsys.readouterr().err
    assert out.read_text() == written


def _cluster_processes() -> set[int]:
    """The pids of the Ray cluster processes running now (each cluster has one raylet and one GCS server)."""
    found = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"raylet" in cmdline.split(b"\0")[0] or b"gcs_server" in cmdline.split(b"\0")[0]:
                found.add(int(proc.name))
    return found


def _gone_but(before: set[int], wait: float = 15.0) -> bool:
    """Whether, within ``wait`` seconds, no cluster process is left but those running ``before``."""
    deadline = time.monotonic() + wait
    while _cluster_processes() - before:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_a_fresh_process_starts_its_own_cluster_and_stops_it(short_data, tiny_model_dir, local_out, tmp_path):
    before = _cluster_processes()
    out = tmp_path / "ray.trec"
    argv = _cli(short_data, tiny_model_dir, out, "--engine", "ray", "--num-workers", "1")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-m", "llmrerank.cli", *argv], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert_parity(_rankings(local_out), _rankings(out))
    assert json.loads((tmp_path / "ray.trec.json").read_text())["engine"]["workers"] == 1
    assert _gone_but(before)  # its cluster is gone with it


def test_workers_beyond_the_cluster_or_any_node_or_another_address_are_refused(cluster, tiny_model_dir):
    config = _config(tiny_model_dir)
    with within(60):  # refused at once, before any worker is asked for (none would ever start)
        with pytest.raises(ValueError, match=r"^3 workers of 1 CPUs each do not fit the Ray cluster \(2 CPUs and 2 "
                           r"GPUs on 2 nodes: 2 fit\)"):
            RayEngine(num_workers=3).start(config)
        # two CPUs (or GPUs) in all, but one on each node: a worker runs on one node
        for each in ({"cpus_per_worker": 2}, {"gpus_per_worker": 2}):
            with pytest.raises(ValueError, match=r"^no node of the Ray cluster \(2 CPUs and 2 GPUs on 2 nodes\) holds "
                               r"one worker of .*the largest has 1 CPUs and 1 GPUs"):
                RayEngine(**each).start(config)
        with pytest.raises(ValueError, match=r"already joined the Ray cluster at .*, not '127.0.0.1:1'"):
            RayEngine(address="127.0.0.1:1").start(config)
    assert ray.is_initialized()  # the refusals leave the joined cluster as it was


@pytest.mark.parametrize(
    ("asked", "joined", "same"),
    [
        ("auto", "10.1.2.3:6379", True),  # whichever cluster is joined
        ("10.1.2.3:6379", "10.1.2.3:6379", True),
        ("10.1.2.4:6379", "10.1.2.3:6379", False),
        ("10.1.2.3:6380", "10.1.2.3:6379", False),
        ("localhost:6379", "127.0.0.1:6379", True),  # a name and its address
        ("[::1]:6379", "127.0.0.1:6379", True),
        ("127.0.0.1:6379", "10.0.0.5:6379", True),  # ray start reports this machine's address (patched below)
        ("ray://localhost:10001", "10.0.0.5:6379", True),  # a client address: the head's host, another port
        ("ray://10.9.9.9:10001", "10.0.0.5:6379", False),
        ("head-node:6379", "10.0.0.5:6379", False),  # a name that does not resolve here is compared as written
    ],
)
def test_an_address_names_the_joined_cluster_however_it_is_spelled(monkeypatch, asked, joined, same):
    import socket

    from llmrerank.distributed import _same_cluster

    monkeypatch.setattr(socket, "gethostname", lambda: "this-machine")
    monkeypatch.setattr(socket, "gethostbyname_ex", lambda name: (name, [], ["10.0.0.5"]))

    def resolve(host):  # no name service here: localhost only
        if host == "localhost":
            return "127.0.0.1"
        raise socket.gaierror(f"unknown host {host}")

    monkeypatch.setattr(socket, "gethostbyname", resolve)
    assert _same_cluster(asked, joined) is same


def test_workers_that_cannot_start_end_the_run_at_their_deadline(cluster, tiny_model_dir):
    holder = _hold_a_cpu()  # a busy cluster: one CPU left
    try:
        start = time.monotonic()
        with within(60), pytest.raises(EngineError, match=r"^[12] of 2 Ray workers of 1 CPUs did not start within 3 s"):
            RayEngine(num_workers=2, start_timeout=3).start(_config(tiny_model_dir))
        assert time.monotonic() - start < 30
    finally:
        _release(holder)
    _free_cpus(2)  # the worker that did start was ended with the others


def _lines(path: Path) -> int:
    """The lines of ``path`` (0 while it does not exist)."""
    try:
        return path.read_text().count("\n")
    except FileNotFoundError:
        return 0


def test_sigterm_ends_the_workers_and_the_run_resumes(tiny_model_dir, tmp_path):
    """A fresh process with its own cluster, terminated mid-run: it says how to resume and exits 143; the resume
    (on the local engine) keeps the queries written and the output agrees with an uninterrupted local run."""
    before = _cluster_processes()
    big = make_beir(tmp_path / "big", 150, 30)
    argv = ["rerank", "--data", str(big), "--model", str(tiny_model_dir), "--method", "likelihood", "--top-k", "30",
            "--queries-per-batch", "3", "--batch-size", "4", "--quiet", "--out", str(tmp_path / "out.trec")]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    process = subprocess.Popen([sys.executable, "-m", "llmrerank.cli", *argv, "--engine", "ray", "--num-workers", "2"],
                               stderr=subprocess.PIPE, text=True, env=env)
    partial = tmp_path / "out.trec.partial"
    deadline = time.monotonic() + 180
    while _lines(partial) < 10 * 30:
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "the rerank did not start"
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    err = process.communicate(timeout=60)[1]
    assert process.returncode == 143, err
    assert err.splitlines()[-1].startswith(f"terminated (SIGTERM): the queries finished so far are kept in {partial}")
    assert partial.exists(), err  # the queries finished are kept
    finished = _lines(partial) // 30
    assert 10 <= finished < 150
    assert _gone_but(before)  # the workers and the cluster ended with the run
    resumed = subprocess.run([sys.executable, "-m", "llmrerank.cli", *argv, "--resume"], capture_output=True,
                             text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "queries already done (resume)" in resumed.stderr
    reference = tmp_path / "reference.trec"
    argv[-1] = str(reference)
    assert main(argv) == 0
    assert_parity(_rankings(reference, 30), _rankings(tmp_path / "out.trec", 30))


def test_workers_that_resolve_auto_to_different_dtypes_are_refused():
    # "auto" (likelihood's default dtype) resolves per device: a cluster of unlike machines would score one run in
    # two precisions; the engine refuses that at start, and a replacement in another dtype gives up its slot
    from llmrerank.distributed import one_dtype

    one_dtype(["bfloat16", "bfloat16"])
    with pytest.raises(EngineError, match=r"different dtypes \(bfloat16, float32\).*give the ranker one dtype"):
        one_dtype(["bfloat16", "float32", "bfloat16"])
