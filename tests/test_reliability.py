"""The reliability battery: bad inputs and faults over the command line and the Python API.

Each row of ``ROWS`` is one bad input or fault. The row runs in a workspace that already holds earlier, complete
outputs (a reranked run and its sidecar, a BM25 run, a plot, a training folder); it must end with the expected
exit status (command line) or exception (API), a message that says what is wrong, and the workspace byte for
byte as it was: no earlier output changed, no partial or lock file left behind. The service and the Ray engine
add their own rows here.

The faults that need a real process (two writers at once, SIGINT, SIGTERM, ``kill -9``) follow the table.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import TINY, make_beir
from llmrerank.cli import Terminated, describe_error, main

SRC = Path(__file__).resolve().parents[1] / "src"


# --- the workspace ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def earlier(tmp_path_factory, tiny_model_dir) -> Path:
    """Complete outputs made once by the real commands: a reranked run, a BM25 run, a plot stand-in."""
    root = tmp_path_factory.mktemp("earlier")
    shutil.copytree(TINY, root / "data")
    base = ["--data", str(root / "data"), "--quiet", "--model", str(tiny_model_dir)]
    assert main(["rerank", *base, "--method", "likelihood", "--top-k", "3", "--out", str(root / "out.trec")]) == 0
    assert main(["retrieve", "--data", str(root / "data"), "--top-k", "4", "--out", str(root / "bm25.trec")]) == 0
    (root / "plot.png").write_bytes(b"\x89PNG earlier plot")
    (root / "train").mkdir()
    (root / "train" / "config.json").write_text('{"earlier": true}\n')
    return root


@dataclass
class Workspace:
    root: Path
    model: Path

    def __post_init__(self) -> None:
        self.data = self.root / "data"

    def fmt(self, word: str) -> str:
        return word.format(root=self.root, data=self.data, model=self.model, run=self.data / "run.trec")

    def write(self, name: str, text: str | bytes) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        return path

    def snapshot(self) -> dict[str, bytes]:
        return {str(p.relative_to(self.root)): p.read_bytes() for p in sorted(self.root.rglob("*")) if p.is_file()}


@pytest.fixture
def ws(tmp_path, earlier, tiny_model_dir) -> Workspace:
    root = tmp_path / "ws"
    shutil.copytree(earlier, root)
    return Workspace(root, tiny_model_dir)


def _config(ws: Workspace, **keys: Any) -> Path:
    """A small valid training config in the workspace, with ``keys`` changed."""
    table = {"model": str(ws.model), "data": str(ws.data), "split": "test", "group_size": 2, "max_steps": 1}
    table["output_dir"] = str(ws.root / "train")
    table.update(keys)
    return ws.write("train.json", json.dumps(table))


# --- the table --------------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One bad input or fault: a command line (``argv``, formatted with the workspace's paths) or an API call,
    what it must end with (``status``, or ``raises``), and a regex its message must match."""

    id: str
    argv: list[str] | None = None
    status: int | None = None
    match: str = ""
    call: Callable[[Workspace], Any] | None = None
    raises: type[BaseException] | None = None
    prepare: Callable[[Workspace], None] | None = None


RERANK = ["rerank", "--data", "{data}", "--model", "{model}", "--method", "likelihood", "--quiet", "--top-k", "3"]
OUT = ["--out", "{root}/out.trec"]


def _bad_run(ws: Workspace, text: str | bytes) -> None:
    ws.write("bad.trec", text)


def _rerank_api(ws: Workspace, **kw: Any) -> Any:
    from llmrerank import Reranker
    from llmrerank.data import load_beir, load_run
    from llmrerank.pipeline import rerank_run

    ds = load_beir(ws.data)
    run = kw.pop("run", None) or load_run(ws.data / "run.trec")
    queries = kw.pop("queries", ds.queries)
    corpus = kw.pop("corpus", ds.corpus)
    ranker = Reranker("likelihood", model=str(ws.model))
    return rerank_run(ranker, queries, corpus, run, ws.root / "out.trec", progress=False, **kw)


def _rerank_api_config(ws: Workspace) -> Any:
    from llmrerank.data import load_beir, load_run
    from llmrerank.pipeline import rerank_run

    ds = load_beir(ws.data)
    config = {"method": "likelihood", "model": str(ws.model)}
    return rerank_run(config, ds.queries, ds.corpus, load_run(ws.data / "run.trec"), ws.root / "out.trec")


def _trainer(ws: Workspace) -> Any:
    from llmrerank.train.config import TrainConfig
    from llmrerank.train.trainer import Trainer

    return Trainer(TrainConfig.load(ws.root / "train.json"))


def _ranker(ws: Workspace) -> Any:
    from llmrerank import Reranker

    return Reranker("likelihood", model=str(ws.model))


def _hold_lock(ws: Workspace) -> None:
    """Another process holds the output's lock for the rest of the row."""
    code = (
        "import fcntl, sys, time\n"
        f"f = open({str(ws.root / 'out.trec.lock')!r}, 'a+'); fcntl.flock(f, fcntl.LOCK_EX)\n"
        "f.write('4242'); f.flush(); print('held', flush=True); time.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    ws.holder = holder  # type: ignore[attr-defined]


def _no_weights(ws: Workspace) -> None:
    shutil.copytree(ws.model, ws.root / "broken-model")
    for p in (ws.root / "broken-model").glob("*.safetensors"):
        p.unlink()


def _truncated_weights(ws: Workspace) -> None:
    shutil.copytree(ws.model, ws.root / "broken-model")
    weights = ws.root / "broken-model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


ROWS = [
    # -- rerank: inputs --
    Row("rerank-no-data-folder", [*RERANK[:2], "{root}/nope", *RERANK[3:], *OUT], 2, match="nope is not a folder"),
    Row("rerank-missing-run", [*RERANK, "--run", "{root}/missing.trec", *OUT], 2, match="missing.trec"),
    Row(
        "rerank-run-short-line",
        [*RERANK, "--run", "{root}/bad.trec", *OUT],
        2,
        match=r"bad.trec, line 2: expected 6 fields",
        prepare=lambda ws: _bad_run(ws, "q1 Q0 d1 1 2.0 t\nq1 Q0 d2 2\n"),
    ),
    Row(
        "rerank-run-nan-score",
        [*RERANK, "--run", "{root}/bad.trec", *OUT],
        2,
        match=r"bad.trec, line 1: score is NaN",
        prepare=lambda ws: _bad_run(ws, "q1 Q0 d1 1 nan t\n"),
    ),
    Row(
        "rerank-run-not-utf8",
        [*RERANK, "--run", "{root}/bad.trec", *OUT],
        2,
        match=r"bad.trec, line 2: not UTF-8",
        prepare=lambda ws: _bad_run(ws, b"q1 Q0 d1 1 2.0 t\nq1 Q0 d\xff2 2 1.0 t\n"),
    ),
    Row(
        "rerank-run-unknown-document",
        [*RERANK, "--run", "{root}/bad.trec", *OUT],
        2,
        match=r"query q1: 1 candidate\(s\) have no text in the corpus, e.g. 'zz'",
        prepare=lambda ws: _bad_run(ws, "q1 Q0 zz 1 2.0 t\n"),
    ),
    Row(
        "rerank-corpus-bad-json",
        [*RERANK, *OUT],
        2,
        match=r"corpus.jsonl, line 2: invalid JSON",
        prepare=lambda ws: ws.write("data/corpus.jsonl", '{"_id": "d1", "text": "a"}\n{"_id": \n'),
    ),
    Row("rerank-top-k-zero", [*RERANK, "--top-k", "0", *OUT], 2, match="top-k"),
    Row("rerank-queries-per-batch-zero", [*RERANK, "--queries-per-batch", "0", *OUT], 2, match="queries-per-batch"),
    Row("rerank-unknown-method", [*RERANK, "--method", "nope", *OUT], 2, match="invalid choice: 'nope'"),
    Row("rerank-option-of-another-method", [*RERANK, "--tokens", "yes_no", *OUT], 2, match="--tokens does not apply"),
    Row("rerank-batch-size-zero", [*RERANK, "--batch-size", "0", *OUT], 2, match="batch.size"),
    Row("rerank-unknown-device", [*RERANK, "--device", "tpu9", *OUT], 2, match="unknown device 'tpu9'"),
    Row("rerank-missing-model", [*RERANK[:4], "{root}/no-model", *RERANK[5:], *OUT], 2, match="no-model"),
    Row(
        "rerank-model-without-weights",
        [*RERANK[:4], "{root}/broken-model", *RERANK[5:], *OUT],
        2,
        match="broken-model",
        prepare=_no_weights,
    ),
    Row(
        "rerank-model-truncated-weights",
        [*RERANK[:4], "{root}/broken-model", *RERANK[5:], *OUT],
        2,
        match="model.safetensors",
        prepare=_truncated_weights,
    ),
    Row("rerank-out-is-the-input-run", [*RERANK, "--run", "{run}", "--out", "{run}"], 2, match="input run"),
    Row("rerank-run-is-a-folder", [*RERANK, "--run", "{data}", *OUT], 2, match=r"data is a folder; give a file"),
    Row(
        "rerank-query-without-text",
        [*RERANK, *OUT],
        2,
        match="query q2: the query-likelihood target is empty",
        prepare=lambda ws: ws.write(
            "data/queries.jsonl",
            (ws.data / "queries.jsonl").read_text().replace("why does a volcano erupt", " "),
        ),
    ),
    # -- rerank: outputs --
    Row("rerank-out-is-a-folder", [*RERANK, "--out", "{root}/data"], 1, match="it is a folder"),
    Row("rerank-out-under-a-file", [*RERANK, "--out", "{root}/plot.png/x.trec"], 1, match="is a file, not a folder"),
    Row(
        "rerank-out-not-writable",
        [*RERANK, "--out", "/sys/llmrerank-test.trec"],
        1,
        match="Permission denied|not writable",
    ),
    Row(
        "rerank-second-writer",
        [*RERANK, *OUT],
        1,
        match=r"being written by another process \(pid 4242\)",
        prepare=_hold_lock,
    ),
    Row(
        "rerank-resume-other-settings",
        [*RERANK, "--max-length", "64", *OUT, "--resume"],
        2,
        match="written with other ranker",
    ),
    Row(
        "rerank-resume-other-batches",
        [*RERANK, "--queries-per-batch", "2", *OUT, "--resume"],
        2,
        match="written with other .*queries_per_batch",
    ),
    Row(
        "rerank-resume-without-sidecar",
        [*RERANK, *OUT, "--resume"],
        2,
        match=r"out.trec.json is missing",
        prepare=lambda ws: (ws.root / "out.trec.json").rename(ws.root / "elsewhere.json"),
    ),
    Row(
        "rerank-resume-half-written-sidecar",
        [*RERANK, *OUT, "--resume"],
        2,
        match=r"out.trec.json is damaged",
        prepare=lambda ws: ws.write("out.trec.json", '{"run": "out.trec", "sta'),
    ),
    # -- retrieve --
    Row(
        "retrieve-negative-k1",
        ["retrieve", "--data", "{data}", "--k1", "-1", "--out", "{root}/bm25.trec"],
        2,
        match="k1",
    ),
    Row(
        "retrieve-b-above-1",
        ["retrieve", "--data", "{data}", "--b", "1.5", "--out", "{root}/bm25.trec"],
        2,
        match=r"\bb\b",
    ),
    Row(
        "retrieve-top-k-zero",
        ["retrieve", "--data", "{data}", "--top-k", "0", "--out", "{root}/bm25.trec"],
        2,
        match="top-k",
    ),
    Row(
        "retrieve-missing-split",
        ["retrieve", "--data", "{data}", "--split", "dev", "--out", "{root}/bm25.trec"],
        2,
        match="available splits: test",
    ),
    Row(
        "retrieve-out-is-a-folder", ["retrieve", "--data", "{data}", "--out", "{root}/data"], 1, match="it is a folder"
    ),
    # -- evaluate --
    Row("evaluate-negative-rel", ["evaluate", "--data", "{data}", "--rel", "-5", "{root}/bm25.trec"], 2, match="rel"),
    Row("evaluate-no-qrels", ["evaluate", "{root}/bm25.trec"], 2, match="--data or --qrels"),
    Row("evaluate-no-run", ["evaluate", "--data", "{data}"], 2, match="needs at least one run file$"),
    Row(
        "evaluate-runs-taken-by-metrics",
        ["evaluate", "--data", "{data}", "--metrics", "nDCG@10", "{root}/bm25.trec"],
        2,
        match=r"--metrics took .*bm25.trec: put the runs before --metrics, or end its list with --",
    ),
    Row(
        "evaluate-unknown-measure",
        ["evaluate", "--data", "{data}", "--metrics", "nDCG@x", "--", "{root}/bm25.trec"],
        2,
        match="nDCG@x",
    ),
    Row(
        "evaluate-qrels-bad-grade",
        ["evaluate", "--qrels", "{root}/bad.tsv", "{root}/bm25.trec"],
        2,
        match=r"bad.tsv, line 2: relevance must be an integer",
        prepare=lambda ws: ws.write("bad.tsv", "query-id\tcorpus-id\tscore\nq1\td1\thigh\n"),
    ),
    Row(
        "evaluate-plot-under-a-file",
        ["evaluate", "--data", "{data}", "--plot", "{root}/plot.png/x.png", "{root}/bm25.trec"],
        1,
        match="is a file, not a folder",
    ),
    # -- train --
    Row("train-missing-config", ["train", "--config", "{root}/nope.toml"], 2, match="nope.toml"),
    Row(
        "train-string-for-a-boolean",
        ["train", "--config", "{root}/train.json"],
        2,
        match="lora",
        prepare=lambda ws: _config(ws, lora="no"),
    ),
    Row(
        "train-fractional-epochs",
        ["train", "--config", "{root}/train.json"],
        2,
        match="epochs",
        prepare=lambda ws: _config(ws, epochs=1.5, max_steps=None),
    ),
    Row(
        "train-negative-max-length",
        ["train", "--config", "{root}/train.json"],
        2,
        match="max_length",
        prepare=lambda ws: _config(ws, options={"max_length": -3}),
    ),
    Row(
        "train-unknown-loss",
        ["train", "--config", "{root}/train.json"],
        2,
        match="loss.*nope",
        prepare=lambda ws: _config(ws, loss="nope"),
    ),
    Row(
        "train-unknown-key",
        ["train", "--config", "{root}/train.json"],
        2,
        match="unknown config key.*lerning_rate",
        prepare=lambda ws: _config(ws, lerning_rate=0.1),
    ),
    Row(
        "train-unparsable-toml",
        ["train", "--config", "{root}/train.toml"],
        2,
        match="train.toml: cannot parse",
        prepare=lambda ws: ws.write("train.toml", 'model = "x\n'),
    ),
    Row(
        "train-max-steps-zero",
        ["train", "--config", "{root}/train.json", "--max-steps", "0"],
        2,
        match="max-steps",
        prepare=lambda ws: _config(ws),
    ),
    Row(
        "train-output-under-a-file",
        ["train", "--config", "{root}/train.json", "--output-dir", "{root}/plot.png/run"],
        1,
        match="is a file, not a folder",
        prepare=lambda ws: _config(ws),
    ),
    # -- serve (refused before the server starts or a model loads; the HTTP rows are in tests/test_serve.py) --
    Row("serve-missing-config", ["serve", "--config", "{root}/nope.toml"], 2, match="config file not found"),
    Row(
        "serve-config-without-rankers",
        ["serve", "--config", "{root}/serve.toml"],
        2,
        match="rankers must be a list of tables",
        prepare=lambda ws: ws.write("serve.toml", 'rankers = "x"\n'),
    ),
    Row(
        "serve-config-unknown-ranker-key",
        ["serve", "--config", "{root}/serve.toml"],
        2,
        match=r"rankers\[0\]: unknown key\(s\) tokens",
        prepare=lambda ws: ws.write("serve.toml", '[[rankers]]\nmethod = "pointwise"\ntokens = "yes_no"\n'),
    ),
    Row(
        "serve-config-bad-option",
        ["serve", "--config", "{root}/serve.toml"],
        2,
        match="unknown normalisation 'nope'",
        prepare=lambda ws: ws.write(
            "serve.toml", '[[rankers]]\nmethod = "pointwise"\noptions = { normalisation = "nope" }\n'
        ),
    ),
    Row(
        "serve-config-ranker-without-method",
        ["serve", "--config", "{root}/serve.toml"],
        2,
        match=r"rankers\[0\] needs a method: its model 'default' is not a trained folder that records one",
        prepare=lambda ws: ws.write("serve.toml", '[[rankers]]\nname = "a"\n'),
    ),
    Row(
        "serve-option-of-another-method",
        ["serve", "--method", "likelihood", "--tokens", "yes_no"],
        2,
        match="--tokens does not apply to --method likelihood",
    ),
    Row(
        "serve-config-and-ranker-flags",
        ["serve", "--config", "{root}/serve.toml", "--model", "x", "--max-length", "64"],
        2,
        match="--config names the rankers to serve; drop --model, --max-length",
        prepare=lambda ws: ws.write("serve.toml", '[[rankers]]\nmethod = "pointwise"\n'),
    ),
    Row("serve-port-zero", ["serve", "--port", "0"], 2, match="argument --port: must be at least 1"),
    # -- the Python API --
    Row(
        "api-unknown-method", call=lambda ws: __import__("llmrerank").Reranker("nope"), raises=ValueError, match="nope"
    ),
    Row(
        "api-bad-option-value",
        call=lambda ws: __import__("llmrerank").Reranker("likelihood", reduction="max"),
        raises=ValueError,
        match="reduction",
    ),
    Row(
        "api-dict-of-documents",
        call=lambda ws: _ranker(ws).rank("honey", {"d1": "honey bees"}),
        raises=TypeError,
        match="dict",
    ),
    Row(
        "api-set-of-documents",
        call=lambda ws: _ranker(ws).rank("honey", {"honey bees", "wasps"}),
        raises=TypeError,
        match="set",
    ),
    Row(
        "api-query-not-a-string",
        call=lambda ws: _ranker(ws).rank(3, ["honey"]),
        raises=TypeError,
        match="query must be a str",
    ),
    Row(
        "api-lists-mismatch",
        call=lambda ws: _ranker(ws).rank_many(["q"], [["a"], ["b"]]),
        raises=ValueError,
        match="1 queries but 2 candidate lists",
    ),
    Row(
        "api-rerank-run-top-k-zero",
        call=lambda ws: _rerank_api(ws, top_k=0),
        raises=ValueError,
        match="top_k must be at least 1",
    ),
    Row(
        "api-rerank-run-fractional-top-k",
        call=lambda ws: _rerank_api(ws, top_k=2.5),
        raises=TypeError,
        match="top_k must be an integer, got float 2.5",
    ),
    Row(
        "api-rerank-run-query-text-not-a-string",
        call=lambda ws: _rerank_api(ws, queries={"q1": 7}),
        raises=TypeError,
        match="query q1: its text must be a str, got int",
    ),
    Row(
        "api-rerank-run-corpus-value-not-a-document",
        call=lambda ws: _rerank_api(ws, corpus={d: 3 for d in ("d1", "d2", "d3", "d4")}, run={"q1": [("d1", 1.0)]}),
        raises=TypeError,
        match=r"corpus\['d1'\] must be a Document or a str, got int",
    ),
    Row(
        "api-rerank-run-query-id-with-a-space",
        call=lambda ws: _rerank_api(ws, queries={"q 1": "honey"}, run={"q 1": [("d1", 1.0)]}),
        raises=ValueError,
        match="query id must be a non-empty string without whitespace",
    ),
    Row(
        "api-trainer-dev-query-it-cannot-score",
        call=lambda ws: _trainer(ws),
        raises=ValueError,
        match="dev query q2: the query-likelihood target is empty",
        prepare=lambda ws: (
            ws.write(
                "data/queries.jsonl", (ws.data / "queries.jsonl").read_text().replace("why does a volcano erupt", "")
            ),
            _config(ws, method="likelihood", dev_split="test", lora=False),
        ),
    ),
    Row(
        "api-rerank-run-list-of-queries",
        call=lambda ws: _rerank_api(ws, queries=["how do honey bees make honey"]),
        raises=TypeError,
        match="queries must be a mapping",
    ),
    Row(
        "api-rerank-run-unknown-document",
        call=lambda ws: _rerank_api(ws, run={"q1": [("zz", 1.0)]}),
        raises=KeyError,
        match="zz",
    ),
    Row("api-rerank-run-bad-tag", call=lambda ws: _rerank_api(ws, tag="a tag"), raises=ValueError, match="run tag"),
    Row(
        "api-bm25-negative-k1",
        call=lambda ws: __import__("llmrerank.retrieve").retrieve.bm25_search(
            {"d": __import__("llmrerank").Document("x")}, {"q": "x"}, k1=-1.0
        ),
        raises=ValueError,
        match="k1",
    ),
    Row(
        "api-evaluate-negative-rel",
        call=lambda ws: __import__("llmrerank.evaluate").evaluate.evaluate_runs(
            {"q": {"d": 1}}, {"r": {"q": [("d", 1.0)]}}, rel=-5
        ),
        raises=ValueError,
        match="rel",
    ),
    Row(
        "api-train-config-fractional-epochs",
        call=lambda ws: __import__("llmrerank.train.config").train.config.TrainConfig(data="x", epochs=1.5),
        raises=ValueError,
        match="epochs",
    ),
]

# -- the Ray engine: its own flags, and the local engine's refusals answered the same through the workers --
RAY = [*RERANK, "--engine", "ray", "--num-workers", "1"]
ROWS += [
    Row(
        "rerank-ray-flag-without-engine",
        [*RERANK, "--num-workers", "2", *OUT],
        2,
        match="--num-workers applies to --engine ray only",
    ),
    Row("rerank-ray-workers-zero", [*RERANK, "--engine", "ray", "--num-workers", "0", *OUT], 2, match="at least 1"),
    Row(
        "rerank-ray-gpus-negative",
        [*RERANK, "--engine", "ray", "--gpus-per-worker", "-1", *OUT],
        2,
        match="argument --gpus-per-worker: must be at least 0, got -1",
    ),
    Row(
        "rerank-ray-cpus-zero",
        [*RERANK, "--engine", "ray", "--cpus-per-worker", "0", *OUT],
        2,
        match="argument --cpus-per-worker: must be positive, got 0",
    ),
    Row(
        "rerank-ray-start-timeout-zero",
        [*RERANK, "--engine", "ray", "--start-timeout", "0", *OUT],
        2,
        match="argument --start-timeout: must be positive, got 0",
    ),
    Row(
        "rerank-ray-replace-timeout-negative",
        [*RERANK, "--engine", "ray", "--replace-timeout", "-5", *OUT],
        2,
        match="argument --replace-timeout: must be positive, got -5",
    ),
    Row(
        "rerank-local-replace-timeout",
        [*RERANK, "--replace-timeout", "30", *OUT],
        2,
        match="--replace-timeout applies to --engine ray only",
    ),
    Row(
        "rerank-ray-empty-address",
        [*RERANK, "--engine", "ray", "--address", "", *OUT],
        2,
        match=r"address must name a Ray cluster \(host:port, auto or ray://...\), got ''",
    ),
    Row(
        "api-ray-engine-bad-cpus",
        call=lambda ws: __import__("llmrerank.distributed").distributed.RayEngine(cpus_per_worker=0),
        raises=ValueError,
        match="cpus_per_worker must be above 0",
    ),
    Row(
        "api-ray-engine-bad-start-timeout",
        call=lambda ws: __import__("llmrerank.distributed").distributed.RayEngine(start_timeout=float("inf")),
        raises=TypeError,
        match="start_timeout must be a number, got inf",
    ),
    Row(
        "api-ray-engine-bad-replace-timeout",
        call=lambda ws: __import__("llmrerank.distributed").distributed.RayEngine(replace_timeout=0),
        raises=ValueError,
        match="replace_timeout must be above 0 seconds, got 0",
    ),
    Row(
        "api-ray-config-without-engine",
        call=lambda ws: _rerank_api_config(ws),
        raises=TypeError,
        match="only with an engine",
    ),
]
if importlib.util.find_spec("ray") is not None and not __import__("torch").cuda.is_available():
    ROWS.append(Row("rerank-ray-no-gpu", [*RAY, "--gpus-per-worker", "1", *OUT], 2, match="the Ray cluster has no GPU"))
if importlib.util.find_spec("ray") is None:
    ROWS.append(Row("rerank-ray-missing-extra", [*RAY, *OUT], 2, match=r'pip install "llmrerank\[ray\]"'))
else:
    ROWS += [
        Row(
            "rerank-ray-too-many-workers",
            [*RAY, "--num-workers", "100000", *OUT],
            2,
            match="100000 workers .* do not fit",
        ),
        Row(
            "rerank-ray-unreachable-cluster",
            [*RAY, "--address", "127.0.0.1:1", *OUT],
            1,
            match="cannot reach the Ray cluster at 127.0.0.1:1",
        ),
        Row(
            "rerank-ray-model-without-weights",
            [*RAY[:4], "{root}/broken-model", *RAY[5:], *OUT],
            2,
            match=r"broken-model: no weights file: .* \(in a Ray worker\)$",
            prepare=_no_weights,
        ),
        Row(
            "rerank-ray-query-without-text",
            [*RAY, *OUT],
            2,
            match="query q2: the query-likelihood target is empty",
            prepare=lambda ws: ws.write(
                "data/queries.jsonl",
                (ws.data / "queries.jsonl").read_text().replace("why does a volcano erupt", " "),
            ),
        ),
    ]


# -- check-model: bad input is exit status 2 as everywhere (a failed check, exit 1, is in test_check_model.py) --
CHECK = ["check-model", "--model", "{model}"]
ROWS += [
    Row("check-model-unknown-method", [*CHECK, "--method", "nope"], 2, match="invalid choice: 'nope'"),
    Row(
        "check-model-flag-of-another-method",
        [*CHECK, "--method", "likelihood", "--tokens", "yes_no"],
        2,
        match="--tokens does not apply to --method likelihood",
    ),
    Row("check-model-min-mass-above-one", [*CHECK, "--min-mass", "2"], 2, match="must be 0 to 1, got 2"),
    Row("check-model-missing-model", [*CHECK[:2], "{root}/no-model"], 2, match="no-model"),
    Row("check-model-missing-prompt-file", [*CHECK, "--prompt-file", "{root}/p.toml"], 2, match="p.toml"),
    Row("check-model-unknown-family", [*CHECK, "--family", "qwen9"], 2, match="invalid choice: 'qwen9'"),
]

# -- rerank --fuse and generate-queries (issue 17) --
GENQ = ["generate-queries", "--data", "{data}", "--model", "{model}", "--quiet", "--out", "{root}/gen"]
ROWS += [
    Row("rerank-fuse-weight-above-one", [*RERANK, "--fuse", "bm25:2", *OUT], 2, match="the weight must be in"),
    Row("rerank-fuse-unknown-stage", [*RERANK, "--fuse", "rrf:0.3", *OUT], 2, match="unknown first stage 'rrf'"),
    Row("rerank-fuse-no-weight", [*RERANK, "--fuse", "bm25", *OUT], 2, match="expected STAGE:WEIGHT"),
    Row("generate-queries-no-passages", [*GENQ, "--passages", "0"], 2, match="--passages: must be at least 1"),
    Row(
        "generate-queries-test-examples",
        [*GENQ, "--passages", "2", "--examples-split", "test"],
        2,
        match="never a test split",
    ),
    Row("generate-queries-missing-split", [*GENQ, "--passages", "2"], 2, match="split 'train'"),
    Row(
        "generate-queries-more-passages-than-the-corpus",
        [*GENQ, "--passages", "100000", "--examples", "0"],
        2,
        match="100000 passages asked for, but the corpus has",
    ),
    Row(
        "generate-queries-out-is-data",
        [*GENQ[:-1], "{data}", "--passages", "2", "--examples", "0"],
        2,
        match="--out is --data",
    ),
    Row("generate-queries-zero-temperature", [*GENQ, "--passages", "2", "--temperature", "0"], 2, match="positive"),
]


def _run_cli(argv: list[str], capsys: Any) -> tuple[int, str]:
    try:
        status = main(argv)
    except SystemExit as e:  # argparse's usage errors
        status = e.code if isinstance(e.code, int) else 1
    return status, capsys.readouterr().err


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input_or_fault(row: Row, ws: Workspace, capsys: Any) -> None:
    if row.prepare:
        row.prepare(ws)
    before = ws.snapshot()
    try:
        if row.argv is not None:
            status, err = _run_cli([ws.fmt(a) for a in row.argv], capsys)
            lines = [line for line in err.splitlines() if line.strip() and "Loading weights" not in line]
            assert status == row.status, err
            assert lines, "no message"
            assert lines[-1].startswith(("error:", "usage:", "llmrerank")), err
            assert "Traceback" not in err, err
            assert any(__import__("re").search(row.match, line) for line in lines), err
            if os.environ.get("SHOW_MESSAGES"):
                print(f"\n{row.id}: {lines[-1]}", file=sys.__stderr__)
        else:
            with pytest.raises(row.raises, match=row.match):
                row.call(ws)
    finally:
        holder = getattr(ws, "holder", None)
        if holder is not None:
            holder.kill()
            holder.wait()
    after = ws.snapshot()
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, f"changed or left behind: {changed}"


def test_the_battery_is_at_least_forty_rows() -> None:
    assert len(ROWS) >= 40 and len({r.id for r in ROWS}) == len(ROWS)


def test_an_unexpected_failure_is_one_line_naming_a_bug() -> None:
    message, status = describe_error(RuntimeError("the cache is inconsistent"))
    assert status == 1 and message.startswith("unexpected RuntimeError: the cache is inconsistent")
    assert "--debug" in message and "bug" in message


def test_debug_shows_the_traceback(ws: Workspace, capsys: Any) -> None:
    argv = ["evaluate", "--qrels", str(ws.write("bad.qrels", "q1 0 d1 high\n")), str(ws.root / "bm25.trec")]
    status, err = _run_cli(argv, capsys)
    assert (
        status == 2
        and "Traceback" not in err
        and err.splitlines() == [f"error: {ws.root}/bad.qrels, line 1: relevance must be an integer, got 'high'"]
    )
    status, err = _run_cli(["--debug", *argv], capsys)
    assert status == 2 and "Traceback (most recent call last)" in err and err.splitlines()[-1].startswith("error:")


# --- faults in a real process -----------------------------------------------------------------------------------

N_QUERIES, N_DOCS, TOP_K, PER_BATCH = 200, 50, 40, 3


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    """A BEIR folder with enough queries and candidates that a rerank with the tiny model runs for a few seconds."""
    return make_beir(tmp_path_factory.mktemp("big"), N_QUERIES, N_DOCS)


def _rerank_argv(big: Path, model: Path, out: Path) -> list[str]:
    """Batched as by default (several queries, several sequences a forward pass): a resume must batch what is
    left as the uninterrupted run did, or the scores move in their last bits."""
    options = ["--method", "likelihood", "--top-k", str(TOP_K), "--batch-size", "4"]
    options += ["--queries-per-batch", str(PER_BATCH), "--quiet", "--out", str(out)]
    return ["rerank", "--data", str(big), "--model", str(model), *options]


@pytest.fixture(scope="module")
def reference(big, tiny_model_dir, tmp_path_factory) -> Path:
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "out.trec"
    assert main(_rerank_argv(big, tiny_model_dir, out)) == 0
    return out


def _default_sigint() -> None:
    # a shell without job control starts its background commands with SIGINT ignored (a CI runner may), and the
    # child would inherit that: Ctrl-C is what these tests send, so the child gets it as a terminal gives it
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(argv: list[str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "llmrerank.cli", *argv]
    return subprocess.Popen(command, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)


def _wait_for_queries(path: Path, n: int, process: subprocess.Popen) -> None:
    """Until ``path`` holds ``n`` finished queries (the process must still be running then)."""
    deadline = time.monotonic() + 120
    while not (path.exists() and path.read_text().count("\n") >= n * N_DOCS):
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "the rerank did not start"
        time.sleep(0.01)


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGKILL, -9)])
def test_an_interrupted_rerank_resumes_to_the_same_bytes(sig, status, big, tiny_model_dir, reference, tmp_path):
    out = tmp_path / "out.trec"
    out.write_text("an earlier complete output\n")
    (tmp_path / "out.trec.json").write_text('{"earlier": true}\n')
    argv = _rerank_argv(big, tiny_model_dir, out)
    process = _start(argv)
    partial = tmp_path / "out.trec.partial"
    _wait_for_queries(partial, 10, process)
    process.send_signal(sig)
    err = process.communicate(timeout=60)[1]
    assert process.returncode == status, err
    if sig != signal.SIGKILL:
        what = "interrupted" if sig == signal.SIGINT else "terminated (SIGTERM)"
        assert err.splitlines()[-1] == (
            f"{what}: the queries finished so far are kept in {partial}; resume with: llmrerank "
            + " ".join(argv)
            + " --resume"
        )
        assert not (tmp_path / "out.trec.lock").exists()
    else:
        assert (tmp_path / "out.trec.lock").exists()  # stale: its holder was killed, so nobody holds the lock
    # the earlier output is untouched until the new run completes
    assert out.read_text() == "an earlier complete output\n"
    assert (tmp_path / "out.trec.json").read_text() == '{"earlier": true}\n'
    finished = partial.read_text().count("\n") // N_DOCS
    assert 10 <= finished < N_QUERIES
    kept = finished - finished % PER_BATCH  # whole batches: one cut short by the signal is reranked again

    resumed = subprocess.run(
        [sys.executable, "-m", "llmrerank.cli", *argv, "--resume"], capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"{kept} queries already done (resume)" in resumed.stderr
    assert out.read_bytes() == reference.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.trec", "out.trec.json"]
    assert json.loads((tmp_path / "out.trec.json").read_text())["status"] == "complete"


def test_a_second_writer_is_refused_and_the_first_finishes(big, tiny_model_dir, reference, tmp_path):
    out = tmp_path / "out.trec"
    argv = _rerank_argv(big, tiny_model_dir, out)
    first = _start(argv)
    _wait_for_queries(tmp_path / "out.trec.partial", 1, first)
    first.send_signal(signal.SIGSTOP)  # paused mid-run, still holding the output, however fast this machine is
    try:
        for extra in ([], ["--resume"]):
            second = subprocess.run(
                [sys.executable, "-m", "llmrerank.cli", *argv, *extra], capture_output=True, text=True, timeout=120
            )
            assert second.returncode == 1
            assert second.stderr.splitlines() == [
                f"error: {out} is being written by another process (pid {first.pid}); wait for it to finish, "
                "or write to another path"
            ]
        assert first.poll() is None and not out.exists()
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=300) == 0, first.communicate()[1]
    assert out.read_bytes() == reference.read_bytes()


def test_resume_keeps_only_finished_queries_that_match_the_input_run(big, tiny_model_dir, reference, tmp_path, capsys):
    """A damaged partial file: each kind of damage is redone, the rest kept, the result as if uninterrupted."""
    lines = reference.read_text().splitlines(keepends=True)
    block = {f"q{i}": lines[i * N_DOCS : (i + 1) * N_DOCS] for i in range(N_QUERIES)}

    def edit(qid: str, position: int, field: int, value: str) -> list[str]:
        out = list(block[qid])
        fields = out[position].split()
        fields[field] = value
        out[position] = " ".join(fields) + "\n"
        return out

    def whole(*qids: str) -> list[str]:
        return [line for q in qids for line in block[q]]

    # batches of PER_BATCH = 3 queries: a batch is kept only if all three are, so that what is reranked again is
    # batched as it was in the uninterrupted run
    score = block["q18"][4].split()[4]
    partial = (
        whole("q0", "q1", "q2")  # kept
        + edit("q3", 3, 4, "nan")
        + whole("q4", "q5")  # a NaN score
        + edit("q6", 0, 2, "d999")
        + whole("q7", "q8")  # a document the run does not have for this query
        + edit("q9", 1, 3, "7")
        + whole("q10", "q11")  # ranks not 1..n
        + edit("q12", 2, 4, "1e9")
        + whole("q13", "q14")  # scores not strictly decreasing
        + edit("q15", 0, 5, "other-tag")
        + whole("q16", "q17")  # another run's line
        + edit("q18", 4, 4, score + "0")
        + whole("q19", "q20")  # the same score, written by hand
        + whole("q21", "q22", "q23")  # kept
        + block["q24"][:5]
        + block["q25"]
        + block["q24"][5:]
        + block["q26"]  # two writers' lines mixed
        + block["q27"][:-1]
        + whole("q28", "q29")  # cut short
        + [block["q30"][0].rstrip("\n")]  # the last line cut mid-way by a crash
    )
    out = tmp_path / "out.trec"
    (tmp_path / "out.trec.partial").write_text("".join(partial))
    sidecar = json.loads(Path(str(reference) + ".json").read_text())
    (tmp_path / "out.trec.partial.json").write_text(json.dumps({**sidecar, "status": "running"}))
    assert main([*_rerank_argv(big, tiny_model_dir, out), "--resume"]) == 0
    err = capsys.readouterr().err
    assert out.read_bytes() == reference.read_bytes()
    assert "6 queries already done (resume); 25 unfinished or damaged, redone" in err, err


def test_byte_order_marks_are_dropped(ws: Workspace, capsys: Any) -> None:
    """A run, qrels, queries and corpus saved with a BOM read as without it: same output, same evaluation."""
    bom = b"\xef\xbb\xbf"
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv", "run.trec"):
        path = ws.data / name
        path.write_bytes(bom + path.read_bytes())
    out = ws.root / "bom.trec"
    argv = ["rerank", "--data", str(ws.data), "--model", str(ws.model), "--method", "likelihood", "--top-k", "3"]
    assert main([*argv, "--quiet", "--out", str(out)]) == 0
    assert out.read_bytes() == (ws.root / "out.trec").read_bytes()
    evaluate = ["evaluate", "--json", "--metrics", "nDCG@10", "--"]
    assert main(["evaluate", "--data", str(TINY), *evaluate[1:], str(ws.root / "out.trec")]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main(["evaluate", "--data", str(ws.data), *evaluate[1:], str(out)]) == 0
    with_bom = json.loads(capsys.readouterr().out)
    assert with_bom["num_queries"] == plain["num_queries"] == 3
    assert with_bom["aggregate"]["bom.trec"] == plain["aggregate"]["out.trec"]


def test_a_terminated_training_names_how_to_resume(tiny_model_dir, tmp_path):
    output = tmp_path / "train"
    table = {"model": str(tiny_model_dir), "data": str(TINY), "split": "test", "group_size": 2, "max_steps": 40}
    table.update(output_dir=str(output), save_every=1, keep_checkpoints=1, lora=False)  # no extra needed
    config = tmp_path / "train.json"
    config.write_text(json.dumps(table))
    argv = ["train", "--config", str(config), "--quiet"]
    process = _start(argv)
    deadline = time.monotonic() + 120
    while not any((output / "checkpoints").glob("step-*")):
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    err = process.communicate(timeout=60)[1]
    assert process.returncode == 143, err
    assert err.splitlines()[-1] == (
        f"terminated (SIGTERM): the checkpoints written so far are kept in {output / 'checkpoints'}; "
        f"resume with: llmrerank {' '.join(argv)}"
    )
    assert not (output / "model").exists() and not (tmp_path / "train.lock").exists()
    resumed = subprocess.run([sys.executable, "-m", "llmrerank.cli", *argv], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr and (output / "model" / "llmrerank.json").is_file()


def test_an_interrupt_before_anything_is_written_says_so(tmp_path):
    from llmrerank.cli import build_parser, rerank

    argv = ["rerank", "--data", "d", "--out", str(tmp_path / "o.trec")]
    args = build_parser().parse_args(argv)
    assert rerank.resume_hint(args, argv) == f"nothing was written yet; run it again: llmrerank {' '.join(argv)}"
    (tmp_path / "o.trec.partial").write_text("")
    assert rerank.resume_hint(args, argv).endswith(f"resume with: llmrerank {' '.join(argv)} --resume")


class InterruptedInC:
    """A real ranker whose second ``rank_many`` call is interrupted inside C code (Ray's ``ray.wait``, say): the
    signal handler's exception comes back as the SystemError CPython raises for a C function that returned with
    an exception set, caused by it."""

    def __init__(self, ranker: Any, interruption: BaseException):
        self.ranker, self.interruption, self.calls = ranker, interruption, 0
        self.method, self.options = ranker.method, ranker.options

    def rank_many(self, queries: Any, docs: Any) -> Any:
        self.calls += 1
        if self.calls == 2:
            try:
                raise self.interruption
            except BaseException as e:
                raise SystemError("<cyfunction CoreWorker.wait> returned a result with an exception set") from e
        return self.ranker.rank_many(queries, docs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ranker, name)


@pytest.mark.parametrize(
    ("interruption", "status", "what"),
    [(KeyboardInterrupt(), 130, "interrupted"), (Terminated(), 143, "terminated (SIGTERM)"), (None, 1, None)],
)
def test_an_interruption_inside_c_code_ends_the_command_as_the_interruption(
    interruption, status, what, tiny_model_dir, tmp_path, monkeypatch, capsys
):
    from llmrerank.cli import rerank as rerank_command

    build = rerank_command.ranker_from_args
    cause = interruption if interruption is not None else ZeroDivisionError("a C function's own failure")
    monkeypatch.setattr(rerank_command, "ranker_from_args", lambda args: InterruptedInC(build(args), cause))
    data = make_beir(tmp_path / "data", 6, 5)
    out = tmp_path / "out.trec"
    argv = ["rerank", "--data", str(data), "--model", str(tiny_model_dir), "--method", "likelihood", "--top-k", "5"]
    argv += ["--queries-per-batch", "2", "--quiet", "--out", str(out)]
    status_got, err = _run_cli(argv, capsys)
    assert status_got == status, err
    if what is None:  # a SystemError of another cause is what it says: a bug, with its message
        assert err.splitlines()[-1].startswith("error: unexpected SystemError: <cyfunction CoreWorker.wait>")
        return
    partial = out.with_name(out.name + ".partial")
    assert err.splitlines()[-1] == (
        f"{what}: the queries finished so far are kept in {partial}; resume with: llmrerank {' '.join(argv)} --resume"
    )
    assert partial.read_text().count("\n") == 2 * 5  # the first batch of two queries, kept


class FailsAtCall:
    """A real ranker whose ``rank_many`` fails at its n-th call, as a model can mid-run (out of memory, NaN)."""

    def __init__(self, ranker: Any, n: int):
        self.ranker, self.n, self.calls = ranker, n, 0
        self.method, self.options = ranker.method, ranker.options

    def rank_many(self, queries: Any, docs: Any) -> Any:
        self.calls += 1
        if self.calls == self.n:
            raise FloatingPointError("the model produced 3 non-finite scores (NaN or inf); check the dtype")
        return self.ranker.rank_many(queries, docs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ranker, name)


def test_a_failure_mid_run_keeps_the_earlier_output_and_resumes(big, tiny_model_dir, reference, tmp_path):
    from llmrerank import Reranker
    from llmrerank.data import load_beir, load_run
    from llmrerank.pipeline import rerank_run

    ds, run = load_beir(big), load_run(big / "run.trec")
    ranker = Reranker("likelihood", model=str(tiny_model_dir), batch_size=4)
    out = tmp_path / "out.trec"
    out.write_text("an earlier complete output\n")
    kw = dict(top_k=TOP_K, queries_per_batch=PER_BATCH, progress=False, tag="llmrerank-likelihood")
    sidecar = json.loads(Path(str(reference) + ".json").read_text())
    kw["sidecar"] = {k: sidecar[k] for k in ("data", "split", "input_run")}
    with pytest.raises(FloatingPointError, match="non-finite"):
        rerank_run(FailsAtCall(ranker, 5), ds.queries, ds.corpus, run, out, **kw)
    assert out.read_text() == "an earlier complete output\n"
    assert (tmp_path / "out.trec.partial").read_text().count("\n") == 4 * PER_BATCH * N_DOCS  # 4 batches done
    report = rerank_run(ranker, ds.queries, ds.corpus, run, out, resume=True, **kw)
    assert report.queries_skipped_resume == 4 * PER_BATCH
    assert out.read_bytes() == reference.read_bytes()


def test_resume_reads_the_same_files_under_another_spelling(ws: Workspace, capsys: Any) -> None:
    argv = [*RERANK, "--out", "{root}/new.trec"]
    assert main([ws.fmt(a) for a in argv]) == 0
    spelled = [a.replace("{data}", "{root}/./data/../data") for a in argv]
    assert main([ws.fmt(a) for a in spelled] + ["--resume"]) == 0
    assert "3 queries already done (resume)" in capsys.readouterr().err
    # a sidecar that holds the paths as typed (as before they were stored resolved) resumes too
    side = ws.root / "new.trec.json"
    meta = json.loads(side.read_text())
    side.write_text(json.dumps({**meta, "data": os.path.relpath(meta["data"])}))
    assert main([ws.fmt(a) for a in argv] + ["--resume"]) == 0
    assert "3 queries already done (resume)" in capsys.readouterr().err


def test_a_crash_between_the_last_two_renames_is_completed(ws: Workspace, capsys: Any) -> None:
    argv = [ws.fmt(a) for a in [*RERANK, "--out", "{root}/new.trec"]]
    assert main(argv) == 0
    run, side = (ws.root / "new.trec").read_bytes(), (ws.root / "new.trec.json").read_bytes()
    (ws.root / "new.trec.json").rename(ws.root / "new.trec.partial.json")  # the run renamed, its sidecar not yet
    assert main([*argv, "--resume"]) == 0
    assert "3 queries already done (resume)" in capsys.readouterr().err
    assert (ws.root / "new.trec").read_bytes() == run
    assert json.loads((ws.root / "new.trec.json").read_bytes())["sha256"] == json.loads(side)["sha256"]
    assert not (ws.root / "new.trec.partial.json").exists()


def test_outputs_in_the_current_folder(tmp_path, monkeypatch) -> None:
    from llmrerank.outputs import OutputLock, check_writable

    monkeypatch.chdir(tmp_path)
    assert check_writable(".", "training output", folder=True) == Path(".")
    with OutputLock("."):
        assert (tmp_path.parent / f"{tmp_path.name}.lock").is_file()
    with pytest.raises(OSError, match="give a file name"):
        check_writable("/", "output run")


def test_a_lock_is_re_entrant_in_its_thread_and_refuses_another(tmp_path) -> None:
    import threading

    from llmrerank.outputs import OutputLock, OutputLockedError

    out = tmp_path / "out.trec"
    refused: list[BaseException] = []

    def other() -> None:
        try:
            with OutputLock(out):
                pass
        except OutputLockedError as e:
            refused.append(e)

    with OutputLock(out), OutputLock(out):  # the command line, then the writer it calls
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        assert (tmp_path / "out.trec.lock").read_text() == f"{os.getpid()}\n"
    assert len(refused) == 1 and "being written by another thread of this process" in str(refused[0])
    assert not (tmp_path / "out.trec.lock").exists()
    with OutputLock(out):  # released: taken again
        pass
