"""What the benchmark scripts share: the repository and data folders, the command line as run, the environment,
peak memory, the options several scripts take, the datasets as the benchmarks load them, the JSON they write, and
the timing of the pipeline's rerank iterator (``llmrerank.pipeline.rerank``), which every script reranks with."""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import resource
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "benchmarks" / "results"
# SciFact comes without a first stage: BM25 (bm25s) over the whole corpus, and a fixed sample of test queries
BM25_K1 = 0.9
BM25_B = 0.4
SCIFACT_SAMPLE = 100
SCIFACT_SEED = 0
DL_RUN = "bm25-top100.trec"  # the distributed BM25 run of the DL folders
MEASURE = "nDCG@10"
STOPPED = 3  # the exit status of an llmrerank command that stopped at its --max-minutes


# --- the command line and the machine ----------------------------------------------------------------------


def rel(path: str) -> str:
    """A path relative to the repository root when it is inside it."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return path


def command_line() -> str:
    """How this script was run, from the repository root."""
    return "python " + " ".join(shlex.quote(a) for a in [rel(sys.argv[0]), *sys.argv[1:]])


def stamp() -> str:
    """The local time now, as the JSONs record ``started`` and ``finished``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _status_mib(field: str) -> float | None:
    """A memory line of /proc/self/status (``VmHWM``, ``VmRSS``) in MiB; None where there is none (not Linux)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


def peak_rss_mib() -> float:
    """The process's peak resident memory so far: ``VmHWM`` of /proc/self/status on Linux (the peak of this
    program's own memory), else ``ru_maxrss`` (which on Linux also counts the parent's resident memory at the
    fork that started a child, so a child of a large process would report the parent's size)."""
    peak = _status_mib("VmHWM")
    if peak is not None:
        return peak
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kib / 1024 if sys.platform != "darwin" else kib / 2**20, 1)


def resident_mib() -> float:
    """The process's resident memory now (``VmRSS``), MiB; NaN where /proc is not there."""
    now = _status_mib("VmRSS")
    return float("nan") if now is None else now


def run_child(script: Path, argv: list[str], python: str | Path = sys.executable, isolated: bool = False
              ) -> dict[str, Any]:
    """Run ``python script ARGV --out FILE`` from the repository root and read the JSON it writes to FILE; on a
    failure, ``{"error": [its last lines], "returncode": ...}``. The child sees this checkout's ``src`` first on
    its path, or, ``isolated`` (a peer's own virtualenv), none of llmrerank's packages."""
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        env = dict(os.environ)
        if isolated:
            env.pop("PYTHONPATH", None)
        else:
            env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
        done = subprocess.run([str(python), str(script), *argv, "--out", str(result)], capture_output=True, text=True,
                              cwd=REPO, env=env)
        if done.returncode != 0 or not result.exists():
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            return {"error": tail or ["failed"], "returncode": done.returncode}
        return json.loads(result.read_text())


def environment() -> dict[str, Any]:
    """Versions, threads and devices of this run."""
    import torch
    import transformers

    import llmrerank

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "llmrerank": llmrerank.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


# --- options several scripts take ---------------------------------------------------------------------------


def add_data_option(parser: argparse.ArgumentParser, holding: str) -> None:
    """``--data``: the folder of the BEIR folders, ``../shared/data`` next to the repository by default."""
    default = "../shared/data from the repository root"
    parser.add_argument("--data", type=Path, default=DATA, help=f"folder holding {holding} (default: {default})")


def add_backend_options(parser: argparse.ArgumentParser) -> None:
    """``--batch-size``, ``--dtype``, ``--device`` and ``--threads`` as the library declares them
    (``llmrerank.options.BackendOptions``: the same help, choices and defaults as ``llmrerank rerank``), except
    ``--dtype``: float32 here, one dtype for every method a benchmark compares on one model (the library's default
    is each method's own: auto for likelihood), as the recorded figures were measured."""
    from llmrerank.options import BackendOptions

    for name, (spec, default) in BackendOptions.specs().items():
        kind = int if int in spec.types else str
        help_ = spec.help
        if name == "dtype":
            default, help_ = "float32", f"{spec.help.split(' (default')[0]} (default here: float32)"
        parser.add_argument(spec.cli_flag(name), type=kind, default=default, choices=spec.choices, help=help_)


def plot_options(description: str, png: str, argv: list[str] | None) -> argparse.Namespace:
    """The plot scripts' ``--results`` (the benchmarks' JSONs) and ``--out`` (``docs/{png}``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / png)
    return parser.parse_args(argv)


def ndcg_bars(
    ax: Any,
    datasets: Mapping[str, Mapping[str, Any]],
    bars: Iterable[tuple[str, str]],
    title: str,
    legend: str = "upper left",
) -> None:
    """Grouped bars of nDCG@10 on ``ax``: a group a dataset (``{name: {"queries": n, "runs": {key: {"nDCG@10":
    v}}}}``), a bar a run (``bars``: (key, label)), each labelled with its value."""
    bars = list(bars)
    width = 0.8 / len(bars)
    for i, (key, label) in enumerate(bars):
        xs = [j + (i - (len(bars) - 1) / 2) * width for j in range(len(datasets))]
        drawn = ax.bar(xs, [entry["runs"][key]["nDCG@10"] for entry in datasets.values()], width, label=label)
        ax.bar_label(drawn, fmt="%.3f", fontsize=7 if len(bars) < 5 else 6)
    ax.set_xticks(range(len(datasets)), [f"{name} ({e['queries']} q)" for name, e in datasets.items()])
    ax.set_ylim(0.4, 0.72)
    ax.set_ylabel("nDCG@10 (BM25 top 20 reranked)")
    ax.set_title(title)
    ax.legend(fontsize=7, loc=legend)
    ax.grid(alpha=0.3, axis="y")


def save_png(fig: Any, path: Path, dpi: int) -> Path:
    """Save a matplotlib figure as a PNG at ``path`` (its folder made if need be) and say so."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi)
    print(f"wrote {path}")
    return path


# --- the datasets -------------------------------------------------------------------------------------------


@dataclass
class Dataset:
    """The evaluated queries (in ``queries.jsonl`` order), the corpus, their judgements and first-stage run."""

    name: str
    queries: dict[str, str]
    corpus: Mapping[str, Any]
    qrels: dict[str, dict[str, int]]
    run: dict[str, list[tuple[str, float]]]
    first_stage: dict[str, Any]

    @property
    def qids(self) -> list[str]:
        return list(self.queries)


def load_dataset(
    name: str, data: Path, top_k: int | None = None, limit: int | None = None, split: str = "test"
) -> Dataset:
    """A benchmark dataset from ``data/name``: its judged queries of ``split`` and their first stage, cut to the
    top ``top_k`` (None: the whole distributed run).

    - ``dl19``, ``dl21``: the queries of the distributed ``bm25-top100.trec``;
    - ``scifact``: a fixed sample of 100 test queries (``random.Random(0).sample(sorted(test qids), 100)``, then
      sorted), candidates from BM25 (bm25s, k1 0.9, b 0.4) over the whole corpus (so ``top_k`` is needed).

    ``limit`` keeps only the first N queries. A candidate without text in the corpus is a KeyError.
    """
    from llmrerank.data import load_beir, load_run

    folder = data / name
    beir = load_beir(folder, split)
    if name == "scifact":
        if top_k is None:
            raise ValueError("scifact has no distributed run: BM25 retrieves the top top_k, so give top_k")
        all_test = sorted(beir.queries)
        qids = sorted(random.Random(SCIFACT_SEED).sample(all_test, SCIFACT_SAMPLE))
        first_stage = {
            "source": "bm25s over the whole corpus (llmrerank.retrieve.bm25_search)",
            "k1": BM25_K1,
            "b": BM25_B,
            "sample": f"random.Random({SCIFACT_SEED}).sample(sorted(test qids), {SCIFACT_SAMPLE}), sorted",
            "test_queries": len(all_test),
        }
        full_run = None
    else:
        full_run = load_run(folder / DL_RUN)
        qids = [q for q in beir.queries if q in full_run]
        first_stage = {"source": f"{name}/{DL_RUN}", "note": "the distributed BM25 run, cut to top_k"}
    if limit is not None:
        qids = qids[:limit]
    queries = {q: beir.queries[q] for q in qids}
    if full_run is None:
        from llmrerank.retrieve import bm25_search

        full_run = bm25_search(beir.corpus, queries, top_k=top_k, k1=BM25_K1, b=BM25_B, show_progress=False)
    run = {q: list(full_run[q])[:top_k] for q in qids}
    missing = [(q, d) for q in qids for d, _ in run[q] if d not in beir.corpus]
    if missing:
        raise KeyError(f"{len(missing)} candidate(s) have no text, e.g. query {missing[0][0]} doc {missing[0][1]}")
    qrels = {q: dict(beir.qrels[q]) for q in qids}
    return Dataset(name, queries, beir.corpus, qrels, run, first_stage)


# --- the JSON -----------------------------------------------------------------------------------------------


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` whole or not at all: a temporary file beside it, then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)


def read_json(path: str | Path) -> dict[str, Any] | None:
    """A JSON file's object, or None where it is missing or does not parse (a run cut short, a first run)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def zero_shot_per_query(dataset: str, model: str) -> dict[str, float]:
    """A preset's zero-shot likelihood per-query nDCG@10 on ``dataset`` in the core benchmark's JSON
    (``zero_shot.py``: BM25 top 20, ``max_length`` 256)."""
    z = json.loads((RESULTS / f"zero_shot-{dataset}-{model}.json").read_text())
    return dict(zip(z["query_ids"], z["per_query_nDCG@10"]["likelihood"]))


def student_rows(per: Mapping[str, Mapping[str, float]], qids: list[str], student: str) -> dict[str, Any]:
    """Each run's mean nDCG@10 over ``qids`` (``per``: run -> query -> nDCG@10), and for every run but
    ``student`` the student's difference, paired two-sided t-test p, wins and losses against it."""
    from llmrerank.evaluate import paired_p

    ours = [per[student][q] for q in qids]
    rows: dict[str, Any] = {}
    for name, values in per.items():
        theirs = [values[q] for q in qids]
        row: dict[str, Any] = {"nDCG@10": round(sum(theirs) / len(theirs), 4)}
        if name != student:
            row["student_minus_this"] = round((sum(ours) - sum(theirs)) / len(qids), 4)
            row["p"] = p_round(paired_p(ours, theirs), 3)
            row["wins"] = sum(a > b for a, b in zip(ours, theirs))
            row["losses"] = sum(a < b for a, b in zip(ours, theirs))
        rows[name] = row
    return rows


def p_round(p: float | None, digits: int = 3) -> float | None:
    """A p-value to ``digits`` significant digits, None where there is none (no test, or no variance)."""
    return None if p is None or math.isnan(p) else float(f"{p:.{digits}g}")


def numbers(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The numeric accounting of a Ranking's metadata (booleans left out)."""
    return {k: v for k, v in metadata.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class Report:
    """A benchmark's JSON (``result``), rewritten whole at every :meth:`write` so a run cut short keeps it."""

    def __init__(self, out: str | Path, result: dict[str, Any]):
        self.out = Path(out)
        self.result = result

    def write(self) -> None:
        write_json(self.out, self.result)

    def finish(self, summary: str) -> dict[str, Any]:
        """Mark the benchmark complete, write it, and print ``summary`` (its table) and where it went."""
        self.result["status"] = "complete"
        self.result["finished"] = stamp()
        self.write()
        print(summary)
        print(f"wrote {self.out}")
        return self.result


def header(benchmark: str, status: str = "running", **first: Any) -> dict[str, Any]:
    """The first fields of a benchmark JSON: its name, ``first``, the command line, when it started, its status."""
    return {"benchmark": benchmark, **first, "command": command_line(), "started": stamp(), "status": status}


def markdown_table(rows: list[list[str]]) -> list[str]:
    """Rows of cells, the header first, as the lines of a Markdown table with its columns padded alike."""
    rows = [rows[0], ["---"] * len(rows[0]), *rows[1:]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in rows]


RUN_COLUMNS = ["queries", "BM25 nDCG@10", "nDCG@10", "p"]  # of a per-query run, as :func:`run_cells` fills them


def run_cells(run: dict[str, Any]) -> list[str]:
    """A :class:`PerQueryReport` run's queries done (of those planned), BM25's nDCG@10 on them, the run's, and
    the p-value of the paired t-test."""
    p = run.get(f"p_{MEASURE}")
    return [
        f"{run['queries_done']}/{run['queries_planned']}",
        f"{run[f'bm25_{MEASURE}']:.4f}",
        f"{run[MEASURE]:.4f}",
        "" if p is None else f"{p:.3g}",
    ]


def text_table(rows: list[list[str]], left: int) -> list[str]:
    """Rows of cells, the header first, as aligned plain-text lines: the first ``left`` columns to the left, the
    others to the right, and a dashed line under the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


# --- timing the rerank iterator -----------------------------------------------------------------------------


def timed(rankings: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any, float]]:
    """``(query id, Ranking, seconds)``: the seconds from asking the iterator for the next query to getting it,
    so what the caller does in between is not counted. With queries batched, a batch's first query carries the
    whole batch's time."""
    it = iter(rankings)
    while True:
        start = time.perf_counter()
        try:
            qid, ranking = next(it)
        except StopIteration:
            return
        yield qid, ranking, time.perf_counter() - start


def describe(ranker: Any) -> dict[str, Any]:
    """The ranker's options as the JSONs record them: without its template (a name is enough there)."""
    options = ranker.describe()
    options.pop("template", None)
    return options


class PerQueryReport(Report):
    """A benchmark whose runs rank one query at a time (timed), each under a time budget; a run is an entry of
    ``result["runs"]`` with ``status``, ``queries_planned``, ``queries_done`` and ``per_query``, summarised
    (:meth:`summarise`) and written after every query."""

    def __init__(self, args: argparse.Namespace, data: Dataset, result: dict[str, Any]):
        self.args = args
        self.data = data
        super().__init__(args.out, result)

    def summarise(self, name: str) -> None:
        raise NotImplementedError

    def postfix(self, entry: dict[str, Any]) -> dict[str, str]:
        """The progress bar's figures."""
        return {"s_q": f"{entry['seconds_per_query']:.1f}", "ndcg": f"{entry[MEASURE]:.3f}"}

    def measure(
        self,
        name: str,
        fields: dict[str, Any],
        ranker: Any,
        qids: list[str],
        top_k: int,
        max_minutes: float,
        record: Callable[[Any], dict[str, Any]],
    ) -> None:
        """Rerank the top ``top_k`` of ``qids`` one by one into run ``name`` (an entry that starts with
        ``fields``): per query its seconds and ``record(ranking)``. No new query starts once ``max_minutes``
        (0: no limit) of ranking time are spent."""
        from tqdm.auto import tqdm

        from llmrerank.pipeline import rerank

        data = self.data
        entry = {**fields, "status": "running", "queries_planned": len(qids), "queries_done": 0, "per_query": {}}
        self.result["runs"][name] = entry
        budget = max_minutes * 60 if max_minutes else math.inf
        spent = 0.0
        run = {q: data.run[q] for q in qids}
        bar = tqdm(total=len(qids), desc=name, unit="q", file=sys.stderr)
        for qid, ranking, seconds in timed(rerank(ranker, data.queries, data.corpus, run, top_k, queries_per_batch=1)):
            spent += seconds
            entry["per_query"][qid] = {"seconds": round(seconds, 2), **record(ranking)}
            entry["queries_done"] += 1
            self.summarise(name)
            self.write()
            bar.update(1)
            bar.set_postfix(self.postfix(entry))
            if spent >= budget and entry["queries_done"] < len(qids):
                entry["status"] = f"stopped: time budget of {max_minutes} min spent"
                break
        bar.close()
        if entry["status"] == "running":
            entry["status"] = "complete"
        entry["peak_rss_mib"] = peak_rss_mib()
        self.write()

    def timing(self, entry: dict[str, Any]) -> list[str]:
        """The queries done so far; their seconds, in all and per query, into ``entry``."""
        per_query = entry["per_query"]
        done = list(per_query)
        entry["seconds"] = round(sum(per_query[q]["seconds"] for q in done), 1)
        entry["seconds_per_query"] = round(entry["seconds"] / len(done), 2)
        return done

    def against_bm25(self, name: str, top_k: int) -> Any:
        """nDCG@10 of run ``name`` on the queries done so far, and of BM25's top ``top_k`` on those same queries,
        with a paired t-test of the two; returns the evaluation."""
        from llmrerank.evaluate import evaluate_runs

        entry = self.result["runs"][name]
        per_query = entry["per_query"]
        done = list(per_query)
        qrels = {q: self.data.qrels[q] for q in done}
        runs = {
            "bm25": {q: list(self.data.run[q])[:top_k] for q in done},
            name: {q: [(d, float(top_k - i)) for i, d in enumerate(per_query[q]["order"])] for q in done},
        }
        ev = evaluate_runs(qrels, runs, measures=[MEASURE])
        entry[MEASURE] = round(ev.aggregate[name][MEASURE], 4)
        entry[f"bm25_{MEASURE}"] = round(ev.aggregate["bm25"][MEASURE], 4)
        entry[f"p_{MEASURE}"] = p_round(ev.p_values[name][MEASURE])
        return ev


def rerank_to(out: Path, options: list[str]) -> dict[str, Any]:
    """``llmrerank rerank OPTIONS --out OUT`` in a child process from the repository root, unless OUT's sidecar
    says it is complete; a run cut short (its file or its partial file is there) is resumed. Returns the sidecar."""
    from llmrerank.outputs import partial_path

    sidecar = out.with_name(out.name + ".json")
    if (read_json(sidecar) or {}).get("status") != "complete":
        cmd = [sys.executable, "-m", "llmrerank.cli", "rerank", *options, "--out", str(out)]
        started = out.is_file() or partial_path(out).exists()  # a killed run leaves its partial file: resume it
        print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
        done = subprocess.run([*cmd, *(["--resume"] if started else [])], cwd=REPO)
        if done.returncode == STOPPED:
            raise SystemExit(STOPPED)  # its --max-minutes: it said how far it got; running this again goes on
        done.check_returncode()
    return read_json(sidecar) or {}
