"""``llmrerank serve`` against a real uvicorn server on a loopback port: the Cohere clients, TEI and vLLM shapes
over plain HTTP, a bad-input table, keys, metrics, a bounded load test with scores equal to the offline ranker,
and SIGTERM with requests in flight. Tiny random models: mechanics, not quality."""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from conftest import needs, require_preset

needs("fastapi", "llmrerank serve")
needs("uvicorn", "llmrerank serve")
needs("prometheus_client", "llmrerank serve")
httpx = needs("httpx", "the serve tests", install="pip install httpx")

from llmrerank.rankers import LikelihoodRanker, PointwiseRanker  # noqa: E402
from llmrerank.serve.app import create_app  # noqa: E402
from llmrerank.serve.metrics import Metrics  # noqa: E402
from llmrerank.serve.protocol import Limits  # noqa: E402
from llmrerank.serve.service import Service, Settings  # noqa: E402

DOCS = [
    "Honey bees make honey from flower nectar and store it in wax combs.",
    "Bumblebees are fuzzy insects.",
    "Wasps are predators.",
    "A volcano erupt when magma rise.",
    "Sourdough bread rise with wild yeast.",
]
QUERY = "how do honey bees make honey"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A real uvicorn server in a thread, on a free loopback port, until ``stop()``."""

    def __init__(self, rankers: dict[str, Any], service: type[Service] = Service, ready: bool = True, **settings: Any):
        import uvicorn

        specs = [{"name": name, "method": r.method, "model": name} for name, r in rankers.items()]
        self.service = service(specs, Settings(**settings), Metrics(), rankers=rankers)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(self.service), host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.ready = ready  # wait for the models, not only for the port

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.url}/health").status_code in ((200,) if self.ready else (200, 503)):
                    return self
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def rankers(qwen_backend) -> dict[str, Any]:
    return {
        "tiny-pointwise": PointwiseRanker(qwen_backend, max_length=96),
        "tiny-likelihood": LikelihoodRanker(qwen_backend, max_length=96),
    }


@pytest.fixture(scope="module")
def server(rankers):
    with Server(rankers) as s:
        yield s


def offline(ranker: Any, query: str, docs: list[str]) -> tuple[list[int], list[float], list[float]]:
    """The order, the ranker's own scores and the relevance the library computes without the server."""
    ranking = ranker.rank(query, docs)
    return list(ranking.indices), list(ranking.scores), ranker.relevance(ranking)


def test_the_cohere_v1_client_gets_the_offline_order_and_fields(server, rankers):
    cohere = needs("cohere", "the Cohere client test", install="pip install cohere")
    co = cohere.Client(api_key="unused", base_url=server.url)
    got = co.rerank(model="tiny-likelihood", query=QUERY, documents=DOCS, top_n=3, return_documents=True)
    order, _, relevance = offline(rankers["tiny-likelihood"], QUERY, DOCS)
    assert [r.index for r in got.results] == order[:3]
    assert [r.relevance_score for r in got.results] == pytest.approx(relevance[:3], abs=1e-4)
    assert [r.document.text for r in got.results] == [DOCS[i] for i in order[:3]]
    assert all(0.0 <= r.relevance_score <= 1.0 for r in got.results) and got.id
    # no model named: the first ranker; documents as {"text": ...} objects; return_documents defaults to false
    plain = co.rerank(query=QUERY, documents=[{"text": d} for d in DOCS])
    order, _, relevance = offline(rankers["tiny-pointwise"], QUERY, DOCS)
    assert [r.index for r in plain.results] == order and plain.results[0].document is None
    assert [r.relevance_score for r in plain.results] == pytest.approx(relevance, abs=1e-4)


def test_the_cohere_v2_client(server, rankers):
    cohere = needs("cohere", "the Cohere client test", install="pip install cohere")
    co = cohere.ClientV2(api_key="unused", base_url=server.url)
    got = co.rerank(model="tiny-pointwise", query=QUERY, documents=DOCS, top_n=10)
    order, _, relevance = offline(rankers["tiny-pointwise"], QUERY, DOCS)
    assert [r.index for r in got.results] == order  # top_n beyond the list: all of it
    assert [r.relevance_score for r in got.results] == pytest.approx(relevance, abs=1e-4)


def test_tei_and_vllm_shapes(server, rankers):
    tei = httpx.post(
        f"{server.url}/rerank",
        json={"query": QUERY, "texts": DOCS, "raw_scores": True, "return_text": True, "model": "tiny-pointwise"},
    )
    assert tei.status_code == 200
    order, scores, relevance = offline(rankers["tiny-pointwise"], QUERY, DOCS)
    body = tei.json()
    assert [r["index"] for r in body] == order and [r["text"] for r in body] == [DOCS[i] for i in order]
    assert [r["score"] for r in body] == pytest.approx(scores, abs=1e-4)
    bare = httpx.post(f"{server.url}/rerank", json={"query": QUERY, "texts": DOCS}).json()
    assert [r["score"] for r in bare] == pytest.approx(relevance, abs=1e-4) and "text" not in bare[0]
    # /rerank with "documents": the Cohere/Jina answer (vLLM serves that shape there)
    jina = httpx.post(f"{server.url}/rerank", json={"query": QUERY, "documents": DOCS, "top_n": 2}).json()
    assert [r["index"] for r in jina["results"]] == order[:2] and jina["usage"]["total_tokens"] > 0

    score = httpx.post(f"{server.url}/score", json={"model": "tiny-pointwise", "text_1": QUERY, "text_2": DOCS})
    assert score.status_code == 200
    data = score.json()
    assert data["object"] == "list" and data["model"] == "tiny-pointwise" and data["usage"]["total_tokens"] > 0
    by_input = {i: r for i, r in zip(order, relevance)}
    assert [d["index"] for d in data["data"]] == list(range(len(DOCS)))
    assert [d["score"] for d in data["data"]] == pytest.approx([by_input[i] for i in range(len(DOCS))], abs=1e-4)
    pairs = httpx.post(
        f"{server.url}/score", json={"queries": [QUERY, "why does a volcano erupt"], "documents": DOCS[:2]}
    ).json()
    assert [d["index"] for d in pairs["data"]] == [0, 1]

    models = httpx.get(f"{server.url}/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["tiny-pointwise", "tiny-likelihood"]
    assert models["data"][0]["llmrerank"]["method"] == "pointwise"


LONG = " ".join(["bees"] * 100)  # 100 tokens, 499 characters

BAD = [
    ("invalid-json", "/v1/rerank", b'{"query": ', 400, "not valid JSON"),
    ("not-an-object", "/v1/rerank", [1, 2], 400, "must be a JSON object, got list"),
    ("no-query", "/v1/rerank", {"documents": DOCS}, 422, "missing field 'query'"),
    ("empty-query", "/v1/rerank", {"query": "  ", "documents": DOCS}, 400, "query is empty"),
    ("query-not-a-string", "/v1/rerank", {"query": 3, "documents": DOCS}, 422, "query must be a string, got int"),
    ("no-documents", "/v1/rerank", {"query": QUERY}, 422, "missing field 'documents'"),
    ("empty-documents", "/v1/rerank", {"query": QUERY, "documents": []}, 400, "documents is empty"),
    ("document-not-a-string", "/v1/rerank", {"query": QUERY, "documents": ["a", 7]}, 422, r"documents\[1\] must be"),
    ("top-n-zero", "/v1/rerank", {"query": QUERY, "documents": DOCS, "top_n": 0}, 422, "top_n must be at least 1"),
    ("top-n-negative", "/v2/rerank", {"query": QUERY, "documents": DOCS, "top_n": -2}, 422, "top_n must be at least 1"),
    ("top-n-not-a-number", "/v1/rerank", {"query": QUERY, "documents": DOCS, "top_n": "3"}, 422, "integer, got str"),
    (
        "unknown-model",
        "/v1/rerank",
        {"model": "gpt-9", "query": QUERY, "documents": DOCS},
        404,
        "model 'gpt-9' is not served here; served: tiny-pointwise, tiny-likelihood",
    ),
    (
        "v2-document-object",
        "/v2/rerank",
        {"query": QUERY, "documents": [{"text": "a"}]},
        422,
        r"documents\[0\] must be a string, got dict",
    ),
    (
        "too-many-documents",
        "/v1/rerank",
        {"query": QUERY, "documents": ["d"] * 9},
        413,
        "9 documents in one request; the limit is 8 \\(--max-documents\\)",
    ),
    (
        "document-too-long",
        "/v1/rerank",
        {"query": QUERY, "documents": ["x" * 501]},
        413,
        r"documents\[0\] is 501 characters; the limit is 500",
    ),
    (
        "tei-too-long-without-truncate",
        "/rerank",
        {"query": QUERY, "texts": [LONG], "model": "tiny-pointwise"},
        413,
        r"texts\[0\] is 100 tokens; ranker 'tiny-pointwise' reads at most \d+ tokens",
    ),
    (
        "tei-bad-direction",
        "/rerank",
        {"query": QUERY, "texts": DOCS, "truncation_direction": "Up"},
        422,
        "truncation_direction must be",
    ),
    (
        "score-mismatched-lists",
        "/score",
        {"text_1": ["a", "b"], "text_2": ["c", "d", "e"]},
        422,
        "text_1 has 2 texts and text_2 3",
    ),
    (
        "query-leaves-no-room",
        "/v1/rerank",
        {"query": " ".join(["honey"] * 200), "documents": DOCS},
        422,
        r"cannot score this query: the prompt without the document is \d+ tokens",
    ),
    ("no-route", "/v3/rerank", {"query": QUERY}, 404, "no route /v3/rerank"),
]


@pytest.fixture(scope="module")
def limited(rankers):
    with Server(rankers, limits=Limits(max_documents=8, max_document_chars=500)) as s:
        yield s


@pytest.mark.parametrize(("route", "body", "status", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_gets_its_status_and_message_and_the_server_stays_healthy(limited, route, body, status, message):
    import re

    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(f"{limited.url}{route}", content=content, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    answer = r.json()
    text = (
        answer["error"]
        if route == "/rerank" and "texts" in (body if isinstance(body, dict) else {})
        else (answer["message"])
    )
    assert re.search(message, text), text
    if route == "/rerank" and isinstance(body, dict) and "texts" in body:
        assert answer["error_type"] == "Validation"
    assert "Traceback" not in r.text
    assert httpx.get(f"{limited.url}/health").status_code == 200


def test_the_body_limit(rankers):
    with Server(rankers, limits=Limits(max_body_bytes=200)) as s:
        r = httpx.post(f"{s.url}/v1/rerank", json={"query": QUERY, "documents": DOCS})
        assert r.status_code == 413 and "the limit is 200 (--max-body-bytes)" in r.json()["message"]


def test_api_keys(rankers):
    with Server(rankers, api_keys=("k1", "k2")) as s:
        body = {"query": QUERY, "documents": DOCS}
        assert httpx.post(f"{s.url}/v1/rerank", json=body).status_code == 401
        wrong = httpx.post(f"{s.url}/v1/rerank", json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "Authorization: Bearer" in wrong.json()["message"]
        ok = httpx.post(f"{s.url}/v1/rerank", json=body, headers={"Authorization": "Bearer k2"})
        assert ok.status_code == 200
        assert httpx.get(f"{s.url}/health").status_code == 200  # no key needed
        assert httpx.get(f"{s.url}/metrics").status_code == 401
        assert httpx.get(f"{s.url}/metrics", headers={"Authorization": "Bearer k1"}).status_code == 200


def test_load_merges_requests_and_every_score_equals_the_offline_ranker(rankers):
    """16 concurrent clients x 50 requests of 1 to 20 documents: no errors, micro-batches formed, and every
    score equal to the offline ranker's on the same input (1e-4 on its own score)."""
    pool = [
        f"{w} {v}"
        for w in ("honey bees", "a volcano", "sourdough bread", "wax combs")
        for v in ("make honey", "erupt", "rise", "store nectar", "is the mat")
    ]
    rng = random.Random(0)
    work = [
        [
            (
                QUERY if rng.random() < 0.5 else "why does a volcano erupt",
                [pool[rng.randrange(len(pool))] for _ in range(rng.randint(1, 20))],
            )
            for _ in range(50)
        ]
        for _ in range(16)
    ]
    with Server(rankers, batch_wait_ms=2.0) as s:

        def client(jobs: list[tuple[str, list[str]]]) -> list[list[float]]:
            out = []
            with httpx.Client(base_url=s.url, timeout=60) as http:
                for query, docs in jobs:
                    r = http.post(
                        "/rerank", json={"model": "tiny-pointwise", "query": query, "texts": docs, "raw_scores": True}
                    )
                    assert r.status_code == 200, r.text
                    by_index = {item["index"]: item["score"] for item in r.json()}
                    out.append([by_index[i] for i in range(len(docs))])
            return out

        with ThreadPoolExecutor(16) as executor:
            answers = list(executor.map(client, work))
        metrics = httpx.get(f"{s.url}/metrics").text
    ranker = rankers["tiny-pointwise"]
    for jobs, got in zip(work, answers):
        for (query, docs), scores in zip(jobs, got):
            assert scores == pytest.approx(ranker.score(query, docs), abs=1e-4)
    assert 'llmrerank_requests_total{route="/rerank",status="200"} 800.0' in metrics
    merged = [line for line in metrics.splitlines() if line.startswith("llmrerank_batch_requests_count")]
    assert merged and float(merged[0].split()[-1]) < 800  # fewer model calls than requests: batches were merged


def test_sigterm_answers_every_request_in_flight(tiny_model_dir, tmp_path):
    """16 requests held in one batch (a long batch wait), then SIGTERM: all 16 answered, then the process ends."""
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "llmrerank.cli",
        "serve",
        "--model",
        str(tiny_model_dir),
        "--method",
        "pointwise",
        "--port",
        str(port),
        "--batch-wait-ms",
        "3000",
        "--max-length",
        "96",
    ]
    process = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline
            time.sleep(0.05)

        def one(i: int) -> int:
            r = httpx.post(f"{url}/v1/rerank", json={"query": QUERY, "documents": DOCS[: 1 + i % 5]}, timeout=60)
            return r.status_code

        with ThreadPoolExecutor(16) as executor:
            futures = [executor.submit(one, i) for i in range(16)]
            time.sleep(1.0)  # all 16 are waiting in the batch
            process.send_signal(signal.SIGTERM)
            statuses = [f.result() for f in futures]
        assert statuses == [200] * 16
        assert process.wait(timeout=60) in (0, 143)
    finally:
        if process.poll() is None:
            process.kill()


def test_the_score_cache_answers_repeats_with_the_same_scores(rankers):
    with Server(rankers, score_cache=100) as s:
        body = {"model": "tiny-pointwise", "query": QUERY, "texts": DOCS, "raw_scores": True}
        first = httpx.post(f"{s.url}/rerank", json=body).json()
        again = httpx.post(f"{s.url}/rerank", json={**body, "texts": DOCS[:3] + ["Wax combs store honey."]}).json()
        metrics = httpx.get(f"{s.url}/metrics").text
    scores = dict(zip(DOCS, rankers["tiny-pointwise"].score(QUERY, DOCS)))
    assert {r["index"]: r["score"] for r in first} == pytest.approx(
        {i: scores[d] for i, d in enumerate(DOCS)}, abs=1e-4
    )
    assert {r["index"]: r["score"] for r in again if r["index"] < 3} == pytest.approx(
        {i: scores[d] for i, d in enumerate(DOCS[:3])}, abs=1e-4
    )
    assert 'llmrerank_score_cache_hits_total{ranker="tiny-pointwise"} 3.0' in metrics
    assert 'llmrerank_score_cache_misses_total{ranker="tiny-pointwise"} 6.0' in metrics


def test_several_rankers_from_specs_share_one_loaded_model(tiny_model_dir):
    from llmrerank.cli import build_parser
    from llmrerank.cli.serve import specs_from_args
    from llmrerank.serve.service import load_rankers

    config = tiny_model_dir.parent / "serve.toml"
    config.write_text(
        f"""
[[rankers]]
name = "yes-no"
method = "pointwise"
model = "{tiny_model_dir}"
options = {{ max_length = 96 }}

[[rankers]]
name = "ql"
method = "likelihood"
model = "{tiny_model_dir}"
backend = {{ dtype = "float32" }}

[[rankers]]
name = "ql-bf16"
method = "likelihood"
model = "{tiny_model_dir}"
backend = {{ dtype = "bfloat16" }}

[[rankers]]
name = "ql-default"
method = "likelihood"
model = "{tiny_model_dir}"
"""
    )
    specs = specs_from_args(build_parser().parse_args(["serve", "--config", str(config)]))
    rankers = load_rankers(specs)
    assert list(rankers) == ["yes-no", "ql", "ql-bf16", "ql-default"]
    assert rankers["yes-no"].backend is rankers["ql"].backend  # the same weights and dtype, loaded once
    assert rankers["ql-bf16"].backend is not rankers["ql"].backend
    # no dtype given: each method's own (float32 for yes/no, auto for likelihood); a model is shared by the dtype
    # its weights load in, so likelihood's auto shares the bfloat16 copy where the CPU computes bfloat16 natively
    # and the float32 one elsewhere
    from llmrerank.backends.hf import native_bf16

    assert rankers["yes-no"].backend.options.dtype == "float32"
    same = rankers["ql-bf16"] if native_bf16("cpu") else rankers["yes-no"]
    assert rankers["ql-default"].backend is same.backend
    # each reports (and rebuilds with) its own backend options, not those its shared copy was loaded with
    assert rankers["ql-default"].config()["backend"]["dtype"] == "auto"
    assert rankers["ql-bf16"].config()["backend"]["dtype"] == "bfloat16"
    assert rankers["yes-no"].config()["backend"]["dtype"] == rankers["ql"].config()["backend"]["dtype"] == "float32"
    assert rankers["yes-no"].options.max_length == 96 and rankers["ql"].method == "likelihood"
    with pytest.raises(ValueError, match="two rankers are named 'ql'"):
        load_rankers([*specs, {"name": "ql", "method": "pointwise"}])
    with pytest.raises(ValueError, match=r"rankers\[0\]: unknown key\(s\) tokens"):
        load_rankers([{"method": "pointwise", "tokens": "yes_no"}])


def test_a_trained_folder_is_served_with_the_method_it_records(tiny_model_dir, tmp_path):
    import shutil

    from llmrerank import Reranker, trained
    from llmrerank.serve.service import check_specs, load_rankers

    folder = shutil.copytree(tiny_model_dir, tmp_path / "trained")  # whole weights: the record is all it needs
    trained.write(folder, "likelihood", {"max_length": 80}, str(tiny_model_dir), "full", {"loss": "grouped_ce"})
    rankers = load_rankers([{"name": "mine", "model": str(folder)}])  # no method: the folder's own
    assert rankers["mine"].method == "likelihood" and rankers["mine"].options.max_length == 80
    # the method's default dtype, as offline (auto for likelihood)
    offline = Reranker("likelihood", model=str(tiny_model_dir), max_length=80)
    assert rankers["mine"].backend.options.dtype == offline.backend.options.dtype == "auto"
    assert rankers["mine"].score(QUERY, DOCS) == pytest.approx(offline.score(QUERY, DOCS), abs=1e-4)
    with pytest.raises(ValueError, match=r"rankers\[0\] needs a method: its model 'default' is not a trained folder"):
        check_specs([{"name": "x"}])
    with pytest.raises(ValueError, match="trained for method 'likelihood', not 'pointwise'"):
        load_rankers([{"model": str(folder), "method": "pointwise"}])


@pytest.mark.model
def test_the_135m_preset_served_equals_the_offline_ranker():
    require_preset("smollm2-135m")
    cohere = needs("cohere", "the Cohere client test", install="pip install cohere")
    from llmrerank import Reranker

    ranker = Reranker("pointwise", model="smollm2-135m", max_length=192)
    with Server({"smollm2-135m": ranker}) as s:
        got = cohere.ClientV2(api_key="unused", base_url=s.url).rerank(
            model="smollm2-135m", query=QUERY, documents=DOCS
        )
        tei = httpx.post(f"{s.url}/rerank", json={"query": QUERY, "texts": DOCS, "raw_scores": True}).json()
    order, scores, relevance = offline(ranker, QUERY, DOCS)
    assert [r.index for r in got.results] == order
    assert [r.relevance_score for r in got.results] == pytest.approx(relevance, abs=1e-4)
    assert [r["score"] for r in tei] == pytest.approx(scores, abs=1e-4)


class SlowToLoad(Service):
    """The real service, whose models are ready only once the test says so."""

    go = threading.Event()

    def load(self) -> None:
        assert self.go.wait(30)
        super().load()


def test_health_is_503_while_the_models_load(rankers):
    with Server(rankers, service=SlowToLoad, ready=False) as s:
        health = httpx.get(f"{s.url}/health")
        assert health.status_code == 503 and health.json() == {"message": "the models are loading"}
        assert health.headers["retry-after"] == "5"
        early = httpx.post(f"{s.url}/v1/rerank", json={"query": QUERY, "documents": DOCS})
        assert early.status_code == 503 and early.json()["message"] == "the models are still loading; retry shortly"
        SlowToLoad.go.set()
        deadline = time.monotonic() + 30
        while httpx.get(f"{s.url}/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert httpx.post(f"{s.url}/v1/rerank", json={"query": QUERY, "documents": DOCS}).status_code == 200


def test_a_full_queue_is_503_and_a_slow_answer_504(rankers):
    body = {"query": QUERY, "documents": DOCS[:2]}
    with Server(rankers, max_queue=2, batch_wait_ms=1500) as s:  # requests wait 1.5 s in a forming batch
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(httpx.post, f"{s.url}/v1/rerank", json=body, timeout=30) for _ in range(3)]
            answers = [f.result() for f in futures]
        assert sorted(a.status_code for a in answers) == [200, 200, 503]
        full = next(a for a in answers if a.status_code == 503)
        assert full.headers["retry-after"] == "1" and "at capacity" in full.json()["message"]
    with Server(rankers, timeout_s=0.2, batch_wait_ms=1000) as s:
        slow = httpx.post(f"{s.url}/v1/rerank", json=body, timeout=30)
        assert slow.status_code == 504 and slow.json()["message"].startswith("no answer within 0.2 s")
        assert httpx.get(f"{s.url}/health").status_code == 200


# --- a request's instruction (templates with {instruction}, such as the qwen3-reranker family's) ---------------

INSTRUCTED = dict(
    name="instructed",
    user="{instruction} : Query : {query} Document : {document} relevant ?",
    extra={"instruction": "judge the relevance"},
)
OTHER_INSTRUCTION = "answer the question"  # words of the tiny tokenizer, so the ids differ from the default's


@pytest.fixture(scope="module")
def instructed(qwen_backend):
    from llmrerank.prompts import PromptTemplate

    template = PromptTemplate(**INSTRUCTED)
    rankers = {
        "instructed": PointwiseRanker(qwen_backend, max_length=96, template=template),
        "plain": PointwiseRanker(qwen_backend, max_length=96),
        "likelihood": LikelihoodRanker(qwen_backend, max_length=96),
    }
    offline_with = PointwiseRanker(qwen_backend, max_length=96, template=template, instruction=OTHER_INSTRUCTION)
    return rankers, offline_with


def test_a_request_instruction_scores_as_the_offline_ranker_with_that_instruction(instructed):
    rankers, offline_with = instructed
    default_scores = rankers["instructed"].score(QUERY, DOCS)
    other_scores = offline_with.score(QUERY, DOCS)
    assert max(abs(a - b) for a, b in zip(default_scores, other_scores)) > 1e-3  # the instruction matters
    with Server(rankers, score_cache=100, batch_wait_ms=50) as s:
        base = {"model": "instructed", "query": QUERY, "texts": DOCS, "raw_scores": True}
        bodies = [base, {**base, "instruction": OTHER_INSTRUCTION}] * 4
        # concurrent requests of both instructions merge into shared batcher calls; each keeps its own scores
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda b: httpx.post(f"{s.url}/rerank", json=b, timeout=60), bodies))
        for body, answer in zip(bodies, answers):
            assert answer.status_code == 200, answer.text
            want = other_scores if "instruction" in body else default_scores
            assert {r["index"]: r["score"] for r in answer.json()} == pytest.approx(dict(enumerate(want)), abs=1e-4)
        # every route reads it; the vLLM /score answers relevance in input order
        score = httpx.post(
            f"{s.url}/score",
            json={"model": "instructed", "text_1": QUERY, "text_2": DOCS, "instruction": OTHER_INSTRUCTION},
        ).json()
        relevance = offline_with.relevance(offline_with.rank(QUERY, DOCS))
        by_input = dict(zip(offline_with.rank(QUERY, DOCS).indices, relevance))
        assert [d["score"] for d in score["data"]] == pytest.approx([by_input[i] for i in range(len(DOCS))], abs=1e-4)
        v2 = httpx.post(
            f"{s.url}/v2/rerank",
            json={"model": "instructed", "query": QUERY, "documents": DOCS, "instruction": OTHER_INSTRUCTION},
        ).json()
        assert [r["index"] for r in v2["results"]] == list(offline_with.rank(QUERY, DOCS).indices)
        # the score cache keys on the instruction: a repeat of each is answered from it, with its own scores
        before = cache_counts(httpx.get(f"{s.url}/metrics").text, "instructed")
        for body in bodies[:2]:
            answer = httpx.post(f"{s.url}/rerank", json=body).json()
            want = other_scores if "instruction" in body else default_scores
            assert {r["index"]: r["score"] for r in answer} == pytest.approx(dict(enumerate(want)), abs=1e-4)
        after = cache_counts(httpx.get(f"{s.url}/metrics").text, "instructed")
    assert (after[0] - before[0], after[1] - before[1]) == (2 * len(DOCS), 0)


def cache_counts(metrics: str, ranker: str) -> tuple[float, float]:
    """The score cache's (hits, misses) of a ranker, read from /metrics."""
    import re

    def value(kind: str) -> float:
        found = re.search(rf'llmrerank_score_cache_{kind}_total{{ranker="{ranker}"}} (\S+)', metrics)
        return float(found.group(1)) if found else 0.0

    return value("hits"), value("misses")


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"model": "likelihood"}, 422, "ranker 'likelihood' \\(method likelihood\\) takes no instruction"),
        ({"model": "plain"}, 422, "cannot take this instruction: instruction applies to a template with"),
        ({"model": "instructed", "instruction": 5}, 422, "instruction must be a string, got int"),
        ({"model": "instructed", "instruction": " "}, 400, "instruction is empty"),
        ({"model": "instructed", "instruction": "x" * 20_001}, 413, "the instruction is 20001 characters"),
    ],
    ids=["no-instruction-option", "no-instruction-slot", "not-a-string", "empty", "too-long"],
)
def test_a_bad_instruction_is_refused_naming_why(instructed, body, status, message):
    import re

    rankers, _ = instructed
    with Server(rankers) as s:
        r = httpx.post(
            f"{s.url}/v1/rerank", json={"query": QUERY, "documents": DOCS, "instruction": OTHER_INSTRUCTION, **body}
        )
        assert r.status_code == status, r.text
        assert re.search(message, r.json()["message"]), r.text
        assert httpx.get(f"{s.url}/health").status_code == 200
