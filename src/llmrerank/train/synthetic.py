"""Synthetic training queries: one query generated for each of N sampled passages (InPars, Promptagator), filtered.

The flow (``llmrerank generate-queries``):

1. **Examples**: a few (query, relevant passage) pairs from a *labelled training* split of the same collection
   (DL21 train, SciFact train; a split named ``test`` is refused, so no test query leaks into the prompt).
2. **Generation**: for each sampled passage, a few-shot prompt (the examples, then the passage) and one sampled
   continuation, cut at its first line, at a set temperature with a seed of its own (:func:`passage_seed`), so a
   resumed run writes the same queries. Written to ``generated.jsonl`` as it goes (resumable).
3. **Cheap filters**, each counted: too short, copied from the passage, a duplicate of an earlier query.
4. **The BEIR folder**: ``queries.jsonl``, ``qrels/generated.tsv`` (each kept query with its source passage),
   ``corpus.jsonl`` (a link to the source corpus) and the BM25 run of the kept queries (``bm25.trec``).
5. **Consistency filter** (with a teacher's run of that folder, e.g. ``llmrerank rerank`` with the strongest
   affordable ranker): a query is kept only if the teacher puts its source passage in its top ``k`` among the
   query's BM25 candidates. ``qrels/train.tsv`` holds the queries that pass; the teacher run is what the trainer's
   ``teacher_run`` reads, so the teacher's scores are computed once.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..data import BeirDataset, read_jsonl
from ..outputs import fsync_file, make_parent, write_atomic
from ..types import Document

# InPars' "vanilla" few-shot format (Bonifacio et al., 2022): examples of a document and a query it answers.
EXAMPLE = "Example {number}:\nDocument: {passage}\nRelevant Query: {query}\n\n"
TASK = "Example {number}:\nDocument: {passage}\nRelevant Query:"

GENERATED = "generated.jsonl"
SETTINGS = "generate.json"
REPORT = "report.json"
RUN = "bm25.trec"


@dataclass(frozen=True)
class GenerationSettings:
    """What a generation run is made of; a resume must share all of it (``model`` included)."""

    passages: int
    examples: int = 3
    examples_split: str | None = "train"
    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 32
    passage_tokens: int = 192
    example_tokens: int = 96
    seed: int = 0
    min_words: int = 3
    candidates: int = 100
    model: str = ""
    dtype: str = "float32"

    def __post_init__(self) -> None:
        for name in ("passages", "max_new_tokens", "passage_tokens", "example_tokens", "min_words", "candidates"):
            _count(name, getattr(self, name), minimum=1)
        _count("examples", self.examples, minimum=0)
        _count("seed", self.seed, minimum=0)
        if self.examples_split is not None and self.examples_split.lower().startswith("test"):
            raise ValueError(
                f"examples come from a labelled training split, never a test split ({self.examples_split!r}): "
                "its queries would leak into the training data"
            )
        if self.examples and self.examples_split is None:
            raise ValueError("examples > 0 needs examples_split (a labelled training split), or set examples = 0")


def _count(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def passage_seed(seed: int, passage_id: str) -> int:
    """The sampling seed of one passage: a function of the run's seed and the passage's id alone, so the query
    does not depend on the batch, the order, or an interruption."""
    digest = hashlib.sha256(f"{seed}\x00{passage_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def few_shot_examples(ds: BeirDataset, k: int, seed: int, rel: int = 1) -> list[tuple[str, str, str]]:
    """``k`` (query id, query, passage text) examples: judged pairs of ``ds``'s split at grade >= ``rel`` whose
    passage has text, one per query, drawn with ``seed``."""
    pairs = []
    for qid, text in ds.queries.items():
        judged = sorted(d for d, g in ds.qrels.get(qid, {}).items() if g >= rel and d in ds.corpus)
        if judged:
            pairs.append((qid, text, ds.corpus[judged[0]].text))
    if len(pairs) < k:
        raise ValueError(f"{k} examples asked for, but the split has {len(pairs)} queries with a judged passage")
    return random.Random(seed).sample(pairs, k)


def sample_passages(corpus: Mapping[str, Document], n: int, seed: int, exclude: Sequence[str] = ()) -> list[str]:
    """``n`` passage ids drawn with ``seed`` from the corpus (its ids sorted first), none of ``exclude`` and none
    without text."""
    skip = set(exclude)
    pool = sorted(d for d, doc in corpus.items() if d not in skip and doc.text.strip())
    if n > len(pool):
        raise ValueError(f"{n} passages asked for, but the corpus has {len(pool)} to draw from")
    return random.Random(seed).sample(pool, n)


def cut(tokenizer: Any, text: str, tokens: int) -> str:
    """``text`` cut to its first ``tokens`` tokens (whole when shorter)."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    return text if len(ids) <= tokens else tokenizer.decode(ids[:tokens]).strip()


def build_prompt(examples: Sequence[tuple[str, str]], passage: str) -> str:
    """The few-shot prompt: each (query, passage) example, then the passage whose query is to be written."""
    shots = "".join(
        EXAMPLE.format(number=i, passage=_one_line(p), query=_one_line(q)) for i, (q, p) in enumerate(examples, 1)
    )
    return shots + TASK.format(number=len(examples) + 1, passage=_one_line(passage))


def _one_line(text: str) -> str:
    return " ".join(text.split())


def clean_query(text: str) -> str:
    """A generated continuation as a query: its first non-empty line, stripped of spaces and quotes."""
    for line in text.splitlines():
        line = line.strip().strip('"').strip()
        if line:
            return line
    return ""


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def filter_reason(query: str, passage: str, min_words: int, seen: set[str]) -> str | None:
    """Why a generated query is dropped, or None to keep it: ``too_short`` (fewer than ``min_words`` words),
    ``copied`` (its words appear in the passage as one run, in order), ``duplicate`` (the same words as an
    earlier kept query; ``seen`` is updated with a kept one)."""
    words = _words(query)
    if len(words) < min_words:
        return "too_short"
    if f" {' '.join(words)} " in f" {' '.join(_words(passage))} ":
        return "copied"
    key = " ".join(words)
    if key in seen:
        return "duplicate"
    seen.add(key)
    return None


def newline_ids(tokenizer: Any) -> set[int]:
    """The ids of every vocabulary token whose text holds a line break ("\n", "\n\n", "?\n", ...)."""
    vocab = tokenizer.get_vocab()
    return {i for token, i in vocab.items() if "\n" in tokenizer.convert_tokens_to_string([token])}


def read_generated(path: Path) -> dict[str, dict[str, Any]]:
    """The records of ``generated.jsonl`` by passage id (a last line cut short by a kill is dropped)."""
    if not path.exists():
        return {}
    records: dict[str, dict[str, Any]] = {}
    text = path.read_bytes()
    if text and not text.endswith(b"\n"):  # a write cut short: keep the whole lines only
        path.write_bytes(text[: text.rfind(b"\n") + 1])
    for record in read_jsonl(path):
        records[str(record["passage_id"])] = record
    return records


def generate(
    backend: Any,
    corpus: Mapping[str, Document],
    examples: Sequence[tuple[str, str, str]],
    out: Path,
    settings: GenerationSettings,
    batch_size: int = 8,
    progress: bool = True,
    max_seconds: float | None = None,
) -> dict[str, dict[str, Any]]:
    """Write one generated query per sampled passage to ``out/generated.jsonl``, resuming what it holds.

    ``out/generate.json`` records the settings and the examples; a folder written with other settings is
    refused (start over in another folder), except that a run may grow to more passages when the larger sample
    holds every passage it has (each passage's query depends on its own seed alone, so they are kept). Returns
    the records by passage id, in sampling order. With ``max_seconds``, it stops after the first batch that ends
    past that many seconds and returns the records written so far (fewer than ``settings.passages``); running
    it again goes on."""
    import time

    from tqdm.auto import tqdm

    from ..backends.base import Sampling

    example_passages = {p for _, _, p in examples}
    exclude = [d for d, doc in corpus.items() if doc.text in example_passages]
    ids = sample_passages(corpus, settings.passages, settings.seed, exclude)  # refused before anything is written
    out.mkdir(parents=True, exist_ok=True)
    record = {"settings": asdict(settings), "examples": [qid for qid, _, _ in examples]}
    side = out / SETTINGS
    done = read_generated(out / GENERATED)
    if side.exists():
        before = json.loads(side.read_text(encoding="utf-8"))
        if before != json.loads(json.dumps(record)):
            differ = sorted(k for k in record["settings"] if before.get("settings", {}).get(k) != record["settings"][k])
            differ += ["examples"] if before.get("examples") != record["examples"] else []
            if differ != ["passages"]:  # only the number of passages may change: the run grows
                raise ValueError(f"{out} holds queries generated with other {', '.join(differ)}; use another --out")
            _check_growth(out, before["settings"]["passages"], settings.passages, set(done) - set(ids))
            write_atomic(side, json.dumps(record, indent=2) + "\n", "generation settings")
    else:
        write_atomic(side, json.dumps(record, indent=2) + "\n", "generation settings")
    tokenizer = backend.tokenizer
    shots = [(q, cut(tokenizer, p, settings.example_tokens)) for _, q, p in examples]
    todo = [d for d in ids if d not in done]
    bar = tqdm(total=len(ids), initial=len(ids) - len(todo), desc="generate", unit="passage", disable=not progress,
               file=sys.stderr)
    stops = set(backend.stop_ids()) | newline_ids(tokenizer)  # a query is one line: stop at its end
    began = time.perf_counter()
    with open(out / GENERATED, "a", encoding="utf-8") as f, bar:
        for start in range(0, len(todo), batch_size):
            if max_seconds is not None and start and time.perf_counter() - began >= max_seconds:
                break
            batch = todo[start : start + batch_size]
            prompts = [build_prompt(shots, cut(tokenizer, corpus[d].text, settings.passage_tokens)) for d in batch]
            seeds = tuple(passage_seed(settings.seed, d) for d in batch)
            sequences = [tokenizer.encode(p, add_special_tokens=True) for p in prompts]
            sampling = Sampling(temperature=settings.temperature, seeds=seeds, top_p=settings.top_p)
            continuations = backend.generate(sequences, settings.max_new_tokens, stop_ids=sorted(stops),
                                             sampling=sampling)
            for d, seed, tokens in zip(batch, seeds, continuations):
                raw = tokenizer.decode(tokens, skip_special_tokens=True)
                line = {"passage_id": d, "seed": seed, "query": clean_query(raw), "raw": raw}
                done[d] = line
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
            f.flush()
            fsync_file(f)
            bar.update(len(batch))
    return {d: done[d] for d in ids if d in done}


def write_dataset(
    out: Path,
    corpus_path: Path,
    corpus: Mapping[str, Document],
    generated: Mapping[str, Mapping[str, Any]],
    settings: GenerationSettings,
    progress: bool = True,
) -> dict[str, Any]:
    """The BEIR folder of the generated queries that pass the cheap filters, with their BM25 run; returns the
    report (written to ``out/report.json``)."""
    from ..data import write_run
    from ..retrieve import bm25_search

    counts = {"generated": len(generated), "too_short": 0, "copied": 0, "duplicate": 0}
    seen: set[str] = set()
    queries: dict[str, str] = {}
    sources: dict[str, str] = {}
    for d, record in generated.items():
        reason = filter_reason(str(record["query"]), corpus[d].text, settings.min_words, seen)
        if reason is not None:
            counts[reason] += 1
            continue
        qid = f"gen-{d}"
        queries[qid] = str(record["query"])
        sources[qid] = d
    counts["kept"] = len(queries)
    if not queries:
        raise ValueError(f"no generated query passed the filters ({counts}): see {out / GENERATED}")
    write_atomic(
        out / "queries.jsonl",
        "".join(json.dumps({"_id": q, "text": t}, ensure_ascii=False) + "\n" for q, t in queries.items()),
        "queries",
    )
    write_qrels(out / "qrels" / "generated.tsv", sources)
    check_out_folder(out)
    link = out / "corpus.jsonl"
    if link.is_symlink():
        link.unlink()
    link.symlink_to(corpus_path.resolve())
    run = bm25_search(corpus, queries, top_k=settings.candidates, show_progress=progress)
    write_run(out / RUN, run, tag="bm25")
    report = {"settings": asdict(settings), "counts": counts, "consistency": None}
    write_atomic(out / REPORT, json.dumps(report, indent=2) + "\n", "report")
    return report


def _check_growth(out: Path, had: int, asked: int, outside: set[str]) -> None:
    """A run of ``had`` passages asked for ``asked``: refused unless it grows and the larger sample holds every
    passage generated so far (``outside``: those it does not)."""
    if asked < had:
        raise ValueError(
            f"{out} holds queries of {had} passages: a run grows but does not shrink; ask for {had} or more, or "
            "use another --out"
        )
    if outside:
        raise ValueError(
            f"{out} holds queries of {had} passages, and the sample of {asked} leaves out {len(outside)} of them "
            f"(e.g. {sorted(outside)[0]}): it cannot grow to that size; use another --out"
        )


def generated_sources(out: Path) -> dict[str, str]:
    """Each kept generated query's source passage, from ``qrels/generated.tsv``."""
    from ..data import load_qrels

    return {q: next(iter(judged)) for q, judged in load_qrels(out / "qrels" / "generated.tsv").items() if judged}


def check_out_folder(out: Path) -> None:
    """Refuse an output folder that holds a corpus of its own (another BEIR folder): generate-queries writes
    its corpus as a link to the source's, and would overwrite that folder's queries and qrels."""
    corpus = out / "corpus.jsonl"
    if corpus.exists() and not corpus.is_symlink():
        raise ValueError(
            f"{out} holds a corpus.jsonl of its own (another BEIR folder?): give generate-queries a folder of its own"
        )


def write_qrels(path: Path, sources: Mapping[str, str]) -> None:
    """A qrels file judging each query's source passage relevant (grade 1)."""
    make_parent(path, "qrels")
    lines = "".join(f"{q}\t{d}\t1\n" for q, d in sources.items())
    write_atomic(path, "query-id\tcorpus-id\tscore\n" + lines, "qrels")


def consistency_filter(out: Path, teacher_run: Mapping[str, Sequence[tuple[str, float]]], k: int) -> dict[str, Any]:
    """Keep the generated queries whose source passage the teacher ranks in its top ``k`` (by score) among their
    candidates; writes ``qrels/train.tsv`` and adds the counts to the report."""
    _count("consistency k", k, minimum=1)
    sources = generated_sources(out)
    missing = [q for q in sources if q not in teacher_run]
    if len(missing) == len(sources):
        raise ValueError(f"the teacher run ranks none of the generated queries (such as {missing[0]!r}): rerank them")
    kept = {}
    for q, d in sources.items():
        if q not in teacher_run:  # counted below as not ranked
            continue
        top = [doc for doc, _ in sorted(teacher_run[q], key=lambda item: -item[1])[:k]]
        if d in top:
            kept[q] = d
    write_qrels(out / "qrels" / "train.tsv", kept)
    report = json.loads((out / REPORT).read_text(encoding="utf-8"))
    report["consistency"] = {
        "k": k,
        "checked": len(sources),
        "kept": len(kept),
        "dropped": len(sources) - len(kept),
        "not_in_teacher_run": len(missing),
    }
    write_atomic(out / REPORT, json.dumps(report, indent=2) + "\n", "report")
    return report
