"""Reranking a whole run: the in-memory iterator every layer shares, and writing a TREC run (resumable).

:func:`rerank` is the one reranking loop: it takes queries, a corpus and a first-stage run and yields each
query's :class:`~llmrerank.types.Ranking` of its top k in run order, batching the queries together. The
file writer :func:`rerank_run`, the trainer's dev evaluation and the benchmark scripts all call it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .data import DataFormatError, check_token, format_run_lines, read_text
from .fusion import Fusion, fuse_ranking
from .outputs import OutputError, OutputLock, check_writable, make_parent, partial_path, write_atomic
from .rankers.base import Ranker
from .types import Document, Ranking

Run = Mapping[str, Sequence[tuple[str, float]]]


def rerank(
    ranker: Ranker,
    queries: Mapping[str, str],
    corpus: Mapping[str, Document],
    run: Run,
    top_k: int = 100,
    skip: Collection[str] = (),
    queries_per_batch: int = 4,
    fuse: Fusion | None = None,
) -> Iterator[tuple[str, Ranking]]:
    """Rerank the top ``top_k`` candidates of each query of ``run``: ``(query id, Ranking)`` in run order.

    Queries of ``run`` that are not in ``queries`` (another split) or are in ``skip`` are passed over. The
    candidates of each batch of queries (:func:`batches`) go to :meth:`~llmrerank.rankers.base.Ranker.rank_many`
    together. Each Ranking orders the query's top ``top_k`` (``ranking.ids`` are the run's document ids).
    The arguments are checked before anything is ranked: a ``top_k`` or batch below 1, a query the ranker's
    ``check_query`` refuses, or a candidate without text in ``corpus`` (a KeyError naming the query and the
    document), raise at the call.

    A ranker that ranks whole batches elsewhere (``rank_batches``: the Ray engine's
    :class:`~llmrerank.distributed.RayRanker`) is given the batches ``(query ids, texts, candidates)`` and
    yields each batch's queries as that batch finishes: in run order within a batch, the batches in the order
    they finish.

    With ``fuse`` (a :class:`~llmrerank.fusion.Fusion`), each Ranking is reordered by the fused score of the
    reranker's and the run's scores (:func:`~llmrerank.fusion.fuse_ranking`), as ``rerank --fuse`` writes it.
    """
    if fuse is not None and not isinstance(fuse, Fusion):
        raise TypeError(f"fuse must be a Fusion (llmrerank.fusion.Fusion), got {type(fuse).__name__}")
    groups = check_inputs(ranker, queries, corpus, run, top_k, skip, queries_per_batch)
    heads: dict[int, tuple[list[str], list[list[str]]]] = {}  # each batch's query ids and candidate ids

    def payloads() -> Iterator[tuple[list[str], list[str], list[list[Document]]]]:  # built as ranked, not at once
        for index, chunk in enumerate(groups):
            heads[index] = (chunk, [[d for d, _ in list(run[q])[:top_k]] for q in chunk])
            yield chunk, [queries[q] for q in chunk], [[_with_id(corpus[d], d) for d in h] for h in heads[index][1]]

    rank_batches = getattr(ranker, "rank_batches", None)
    if rank_batches is not None:
        rankings = _accepted(rank_batches(payloads()), heads)
    else:
        rankings = _accepted(((i, ranker.rank_many(t, d)) for i, (_, t, d) in enumerate(payloads())), heads)
    if fuse is None:
        return rankings
    return ((qid, fuse_ranking(r, dict(list(run[qid])[:top_k]), fuse)) for qid, r in rankings)


def check_inputs(
    ranker: Ranker,
    queries: Mapping[str, str],
    corpus: Mapping[str, Document],
    run: Run,
    top_k: int,
    skip: Collection[str],
    queries_per_batch: int,
) -> list[list[str]]:
    """What :func:`rerank` checks before it ranks anything (see there); the batches of query ids to rank."""
    check_arguments(queries, corpus, run, top_k, queries_per_batch)
    loaded = [q for q in run if q in queries]
    texts: dict[str, str] = {}
    for qid in loaded:
        if qid in skip:
            continue
        text = queries[qid]
        if not isinstance(text, str):
            raise TypeError(f"query {qid}: its text must be a str, got {type(text).__name__}")
        texts[qid] = text
        head = [d for d, _ in list(run[qid])[:top_k]]
        missing = [d for d in head if d not in corpus]
        if missing:
            raise KeyError(f"query {qid}: {len(missing)} candidate(s) have no text in the corpus, e.g. {missing[0]!r}")
        for d in head:
            if not isinstance(corpus[d], (Document, str)):
                raise TypeError(f"corpus[{d!r}] must be a Document or a str, got {type(corpus[d]).__name__}")
    _check_queries(ranker, texts)
    groups = [[q for q in group if q not in skip] for group in batches(loaded, queries_per_batch)]
    return [g for g in groups if g]


def _check_queries(ranker: Ranker, texts: Mapping[str, str]) -> None:
    """What the ranker would refuse half-way through the run (an empty target, ...), refused now: through its
    ``check_queries`` (all at once: a remote ranker asks once) or else its ``check_query`` (one by one)."""
    check_many = getattr(ranker, "check_queries", None)
    if check_many is not None:
        refused = check_many(texts)
        if refused:
            qid = next(q for q in texts if q in refused)
            raise ValueError(f"query {qid}: {refused[qid]}")
        return
    check = getattr(ranker, "check_query", None)
    if check is None:
        return
    for qid, text in texts.items():
        try:
            check(text)
        except ValueError as e:
            raise ValueError(f"query {qid}: {e}") from e


def batches(qids: Sequence[str], queries_per_batch: int) -> list[list[str]]:
    """The queries ranked together: ``qids`` (a run's loaded queries, in run order) in groups of
    ``queries_per_batch``. Fixed before any query is skipped, so that a resumed run ranks what is left in the
    same company as the uninterrupted run did, and its scores agree to the last bit (a batch's padding can move
    them)."""
    return [list(qids[i : i + queries_per_batch]) for i in range(0, len(qids), queries_per_batch)]


def check_arguments(queries: Any, corpus: Any, run: Any, top_k: Any, queries_per_batch: Any) -> None:
    """What :func:`rerank` and :func:`rerank_run` take: three mappings of ids and two counts of at least 1."""
    for name, value in (("queries", queries), ("corpus", corpus), ("run", run)):
        if not isinstance(value, Mapping):
            raise TypeError(f"{name} must be a mapping of ids (a dict), got {type(value).__name__}")
    for name, value in (("top_k", top_k), ("queries_per_batch", queries_per_batch)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")


def _accepted(
    results: Iterator[tuple[int, Sequence[Ranking]]], heads: dict[int, tuple[list[str], list[list[str]]]]
) -> Iterator[tuple[str, Ranking]]:
    """Each batch's rankings, ``(batch index, rankings)`` as batches finish, checked (one per query, each a
    permutation of its candidates) and given the run's ids; ``heads`` holds each batch's query and candidate ids.
    However this ends (done, failed, or closed by its consumer), ``results`` is closed with it: an engine's
    ``rank_batches`` then withdraws the batches it still has queued."""
    try:
        for index, rankings in results:
            chunk, candidates = heads.pop(index)
            if len(rankings) != len(chunk):
                raise ValueError(f"the ranker returned {len(rankings)} rankings for {len(chunk)} queries")
            for qid, head, ranking in zip(chunk, candidates, rankings):
                if sorted(ranking.indices) != list(range(len(head))):
                    raise ValueError(f"query {qid}: the ranking does not order each of the {len(head)} candidates once")
                # the run's ids in the ranking's order, whatever ids the ranker did or did not set
                yield qid, replace(ranking, ids=tuple(head[i] for i in ranking.indices))
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()


def chain_scores(head_scores: Sequence[float], n_tail: int) -> list[float]:
    """Scores to write for a reranked head followed by an unchanged tail: strictly decreasing down the list.

    The head keeps its own scores where they already decrease strictly; a tie (or a rise, which a ranking
    never has) is nudged down to the next float below its predecessor. The tail's scores continue below the
    head's last score one unit apart, so rank-by-score tools (trec_eval, ir_measures) agree with the ranks and a
    later stage's head always stays above an earlier stage's tail.
    """
    out: list[float] = []
    prev = math.inf
    for s in head_scores:
        if not math.isfinite(s):
            raise ValueError(f"cannot write a non-finite score ({s})")
        s = min(float(s), math.nextafter(prev, -math.inf))
        out.append(s)
        prev = s
    if prev == math.inf:
        prev = 1.0  # no head: the tail starts at 0.0
    for _ in range(n_tail):
        prev = min(prev - 1.0, math.nextafter(prev, -math.inf))
        out.append(prev)
    return out


@dataclass
class RerankReport:
    """What a run did, for the console and the JSON sidecar."""

    queries: int = 0
    queries_skipped_resume: int = 0
    queries_redone_resume: int = 0  # found in the output being resumed but not kept (cut short, mixed, edited)
    queries_not_loaded: int = 0  # in the run but not among the loaded queries (another split)
    queries_left: int = 0  # not reranked yet: the run stopped at its time bound (max_seconds); a resume goes on
    documents: int = 0
    seconds: float = 0.0
    # The rankers' per-query accounting (Ranking.metadata numbers: tokens, truncated, LLM calls, ...), kept
    # queries of a resumed output included, and this session's totals.
    counts: dict[str, float] = field(default_factory=dict)
    per_query: dict[str, dict[str, float]] = field(default_factory=dict)

    def add(self, qid: str, metadata: Mapping[str, Any]) -> None:
        numbers = {k: v for k, v in metadata.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.per_query[qid] = numbers
        for k, v in numbers.items():
            self.counts[k] = self.counts.get(k, 0) + v

    @property
    def tokens(self) -> int:
        return int(self.counts.get("tokens", 0))

    @property
    def docs_per_second(self) -> float:
        return self.documents / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["docs_per_second"] = round(self.docs_per_second, 3)
        d["tokens_per_second"] = round(self.tokens_per_second, 1)
        return d

    def summary(self) -> str:
        return (
            f"{self.queries} queries, {self.documents} documents in {self.seconds:.1f} s: "
            f"{self.docs_per_second:.2f} docs/s, {self.tokens_per_second:.0f} tokens/s"
            + "".join(f"; {k}={v:g}" for k, v in self.counts.items() if k != "tokens")
            + (f"; {self.queries_skipped_resume} queries already done (resume)" if self.queries_skipped_resume else "")
            + (f"; {self.queries_redone_resume} unfinished or damaged, redone" if self.queries_redone_resume else "")
            + (f"; {self.queries_not_loaded} run queries not in the split, left out" if self.queries_not_loaded else "")
            + (f"; stopped at the time bound with {self.queries_left} queries left" if self.queries_left else "")
        )


def sidecar_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".json")


def _valid_block(qid: str, lines: Sequence[str], candidates: Sequence[tuple[str, float]], top_k: int, tag: str) -> bool:
    """Whether one query's lines of an earlier output are a finished reranking of its ``candidates``, exactly as
    this module writes one: every candidate once (the top ``top_k`` in any order, the rest in run order), ranks
    1..n, finite scores strictly decreasing, the run's tag, each line in the canonical form."""
    if len(lines) != len(candidates):
        return False
    docs, prev = [], math.inf
    for rank, line in enumerate(lines, start=1):
        fields = line.split(" ")
        if len(fields) != 6:
            return False
        try:
            score = float(fields[4])
        except ValueError:
            return False
        if not (math.isfinite(score) and score < prev):
            return False
        if line != f"{qid} Q0 {fields[2]} {rank} {score!r} {tag}\n":  # an edited line is not ours
            return False
        prev = score
        docs.append(fields[2])
    head = [d for d, _ in list(candidates)[:top_k]]
    tail = [d for d, _ in list(candidates)[top_k:]]
    return sorted(docs[: len(head)]) == sorted(head) and docs[len(head) :] == tail


def kept_queries(path: Path, run: Run, qids: Collection[str], top_k: int, tag: str) -> tuple[dict[str, str], int]:
    """The queries of ``qids`` that an earlier output (``path``) holds finished, with their exact text, and how
    many others of ``qids`` it holds but cannot be kept (cut short, mixed with another writer's lines, edited,
    another run's).

    A query is kept only if its lines are one unbroken block that :func:`_valid_block` accepts; a query with no
    candidates has no lines and is always finished.
    """
    blocks: dict[str, list[str]] = {}
    broken: set[str] = set()
    current = None
    with open(path, "rb") as f:
        for raw in f:
            line = raw.decode("utf-8", errors="replace")
            fields = line.split()
            if not fields:
                continue
            qid = fields[0]
            if not line.endswith("\n"):  # the last line, cut by a crash
                broken.add(qid)
            if qid != current and qid in blocks:  # a query in two places: lines of two writers mixed
                broken.add(qid)
            current = qid
            blocks.setdefault(qid, []).append(line)
    kept = {
        q: "".join(lines)
        for q, lines in blocks.items()
        if q not in broken and q in qids and _valid_block(q, lines, run[q], top_k, tag)
    }
    kept.update({q: "" for q in qids if not run[q] and q not in blocks})
    return kept, sum(q in qids and q not in kept for q in blocks)


def _source(out: Path) -> Path | None:
    """What a resumed run picks up: the partial file of an interrupted run, else a complete output, else none."""
    return next((p for p in (partial_path(out), out) if p.exists()), None)


def _read_sidecar(path: Path, out: Path) -> dict[str, Any]:
    side = sidecar_path(path)
    if not side.exists():
        raise ValueError(
            f"cannot resume {out}: {side} is missing, so nothing shows how {path.name} was made; drop --resume to "
            "start over"
        )
    try:
        previous = json.loads(read_text(side))
    except (json.JSONDecodeError, DataFormatError) as e:
        raise ValueError(f"cannot resume {out}: {side} is damaged ({e}); drop --resume to start over") from None
    if not isinstance(previous, dict):
        raise ValueError(f"cannot resume {out}: {side} is damaged (not a JSON object); drop --resume to start over")
    return previous


def check_resumable(out: str | Path) -> None:
    """Refuse a resume of ``out`` whose earlier run shows no readable sidecar, before a model is loaded (its
    settings are compared once the ranker exists, in :func:`rerank_run`)."""
    out = Path(out)
    _finish_rename(out)
    source = _source(out)
    if source is not None:
        _read_sidecar(source, out)


OPTIONAL_SETTINGS = ("fuse",)  # settings whose absence from a sidecar means None


def _previous_run(path: Path, out: Path, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The sidecar of ``path`` (the output, or its partial file) being resumed; refuses one made with other
    settings, a damaged one, or none."""
    previous = _read_sidecar(path, out)
    # a setting an older sidecar lacks is compared only where absence has a meaning (no fusion)
    pairs = {
        k: (_comparable(k, previous.get(k)), _comparable(k, v))
        for k, v in settings.items()
        if k in previous or k in OPTIONAL_SETTINGS
    }
    differ = [_differing(k, then, now) for k, (then, now) in pairs.items() if not _same(then, now)]
    before, now = previous.get("backend"), settings.get("backend")
    then = before.get("resolved_dtype") if isinstance(before, dict) else None
    hint = ""
    if then and then != (now or {}).get("resolved_dtype"):
        hint = f" (it ran in {then}: the dtype option {then} continues it)"
    if differ and path != out:
        raise ValueError(
            f"cannot resume {out}: its unfinished run {path} was written with other {', '.join(differ)}; rerun with "
            f"those settings{hint}, or drop --resume to start over"
        )
    if differ:
        raise ValueError(
            f"cannot resume {out}: it was written with other {', '.join(differ)}; use another --out or drop "
            f"--resume{hint}"
        )
    return previous


def _comparable(key: str, value: Any) -> Any:
    """A setting as a resume compares it: the backend by the dtype it ran in (``resolved_dtype``) where the sidecar
    records one, not by the option that chose it (``"auto"`` that became float32 is float32; a run written when
    likelihood's default was float32 resumes under its default ``auto`` on a machine where that is float32)."""
    if key == "backend" and isinstance(value, dict) and "resolved_dtype" in value:
        return {k: v for k, v in value.items() if k != "dtype"}
    return value


def _differing(key: str, before: Any, now: Any) -> str:
    """A differing setting named for the refusal; a table's differing entries with their two values."""
    if not (isinstance(before, dict) and isinstance(now, dict)):
        return key
    keys = sorted(k for k in set(before) | set(now) if not _same(before.get(k), now.get(k)))
    detail = ", ".join(f"{k}: {before.get(k)!r} then, {now.get(k)!r} now" for k in keys)
    return f"{key} ({detail})" if detail else key


def _same(a: Any, b: Any) -> bool:
    """Settings as equal as a resume needs: equal values, where two strings naming the same existing file or
    folder are equal however they are spelled (a relative path, a trailing slash, an older sidecar's path)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if a == b:
        return True
    if isinstance(a, str) and isinstance(b, str) and a and b:
        try:
            return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)
        except OSError:
            return False
    return False


def _settings(ranker: Ranker, top_k: int, queries_per_batch: int, sidecar: Mapping[str, Any] | None) -> dict[str, Any]:
    """What a resumed run must share with the run it continues: the ranker, how its model runs (all but the
    thread count, which does not change a score), the top k, the batches (they move scores in their last bits)
    and the caller's own keys."""
    settings: dict[str, Any] = {"ranker": ranker.describe()}
    config = getattr(ranker, "config", None)
    if callable(config):
        settings["backend"] = {k: v for k, v in config().get("backend", {}).items() if k != "threads"}
        resolved = getattr(getattr(ranker, "backend", None), "dtype", None)
        if isinstance(resolved, str):  # what dtype="auto" became on this machine
            settings["backend"]["resolved_dtype"] = resolved
    settings.update({"top_k": top_k, "queries_per_batch": queries_per_batch, **(dict(sidecar) if sidecar else {})})
    return json.loads(json.dumps(settings))  # as it reads back from the sidecar (tuples become lists)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _finish_rename(out: Path) -> None:
    """Complete the last step of an earlier run killed between renaming its run and renaming its sidecar: the
    partial sidecar says complete and describes (by digest) the run now at ``out``."""
    partial, side = partial_path(out), sidecar_path(partial_path(out))
    if partial.exists() or not side.exists() or not out.exists():
        return
    try:
        meta = json.loads(read_text(side))
    except (json.JSONDecodeError, DataFormatError):
        return
    if isinstance(meta, dict) and meta.get("status") == "complete" and meta.get("sha256") == _sha256(out):
        os.replace(side, sidecar_path(out))


def rerank_run(
    ranker: Ranker,
    queries: Mapping[str, str],
    corpus: Mapping[str, Document],
    run: Run,
    out: str | Path,
    top_k: int = 100,
    resume: bool = False,
    tag: str | None = None,
    queries_per_batch: int = 1,
    progress: bool = True,
    sidecar: Mapping[str, Any] | None = None,
    engine: Any = None,
    fuse: Fusion | None = None,
    max_seconds: float | None = None,
) -> RerankReport:
    """Rerank the top ``top_k`` of each query in ``run`` with ``ranker`` and write a TREC run to ``out``.

    The documents below ``top_k`` follow in their input order, and the written scores strictly decrease down
    each list (:func:`chain_scores`). Queries of ``run`` that are not in ``queries`` (another split) are left out.
    Writes a JSON sidecar next to ``out`` describing the model, method, prompt, options and timings, and the
    run's SHA-256.

    The output is never harmed: the arguments are checked before anything is written; the queries are written
    to ``<out>.partial`` (with its sidecar ``<out>.partial.json``) and renamed to ``out`` once all are done, so
    an earlier ``out`` stays as it was until then; a second process writing the same ``out`` is refused with
    :class:`~llmrerank.outputs.OutputLockedError`. With ``resume``, the batches (:func:`batches`) whose queries
    the partial file of an interrupted run (else ``out``) holds finished are kept, if :func:`kept_queries` accepts
    them, and the rest reranked; the result is the file an uninterrupted run with the same settings writes, byte
    for byte. A resume with other settings (ranker, backend, top k, the caller's ``sidecar`` keys) is refused.

    With ``engine`` (a :class:`~llmrerank.distributed.RayEngine`), the batches are ranked on its workers, each
    rebuilding the ranker from its options table: ``ranker`` is then a Ranker (its ``config()`` is sent) or a
    config mapping (``Reranker.from_config``'s keys; no model is loaded here). The output, sidecar and resume are
    the local engine's, and either engine resumes the other's output.

    With ``fuse`` (a :class:`~llmrerank.fusion.Fusion`), each query's reranked head is reordered by the fused
    score (:func:`~llmrerank.fusion.fuse_ranking`: the reranker's and the input run's scores, each min-max
    normalised per query, weighted); the tail stays below it. The fusion is a setting a resume must share.

    With ``max_seconds``, the run stops at the end of the first batch that ends past that many seconds of
    reranking: what it reranked stays in ``<out>.partial`` (its sidecar says ``"status": "stopped"`` and holds
    the report so far), ``out`` is not written, and the report's ``queries_left`` says how many are left; a
    resume goes on from there and ends with the file an uninterrupted run writes. Local engine only.
    """
    from tqdm.auto import tqdm

    check_arguments(queries, corpus, run, top_k, queries_per_batch)
    if max_seconds is not None:
        if isinstance(max_seconds, bool) or not isinstance(max_seconds, (int, float)) or not max_seconds > 0:
            raise ValueError(f"max_seconds must be a positive number of seconds, got {max_seconds!r}")
        if engine is not None:
            raise ValueError("max_seconds bounds a run on the local engine; a Ray run is bounded by its workers")
    out = check_writable(out, "output run")
    if engine is None and isinstance(ranker, Mapping):
        raise TypeError("a ranker config (a mapping) is ranked only with an engine; build it: Reranker.from_config")
    method = ranker.get("method") if isinstance(ranker, Mapping) else ranker.method
    tag = tag or f"llmrerank-{method}"
    check_token(tag, "run tag")
    qids = [q for q in run if q in queries]
    if not qids:
        raise ValueError("no query of the run is among the loaded queries (wrong --split or --run?)")
    for qid in qids:  # what the TREC format cannot hold is refused now, not half-way through the run
        check_token(qid, "query id")
        for d, _ in run[qid]:
            check_token(d, f"document id (query {qid})")
    report = RerankReport(queries_not_loaded=len(run) - len(qids))
    partial = partial_path(out)
    with OutputLock(out, "output run"), _on_engine(ranker, engine) as ranker:
        settings = {**_settings(ranker, top_k, queries_per_batch, sidecar), "fuse": fuse.to_dict() if fuse else None}
        _finish_rename(out)
        source = _source(out) if resume else None
        previous = _previous_run(source, out, settings) if source else {}
        kept, damaged = kept_queries(source, run, qids, top_k, tag) if source else ({}, 0)
        # whole batches only, so what is reranked again is batched as the uninterrupted run batched it
        done = {
            q: kept[q] for group in batches(qids, queries_per_batch) if all(q in kept for q in group) for q in group
        }
        report.queries_skipped_resume = len(done)
        report.queries_redone_resume = damaged + sum(q not in done for q in kept)
        old_report = previous.get("report")
        old_per_query = old_report.get("per_query") if isinstance(old_report, dict) else None
        old_per_query = old_per_query if isinstance(old_per_query, dict) else {}
        report.per_query.update({q: old_per_query[q] for q in done if q in old_per_query})
        rankings = rerank(ranker, queries, corpus, run, top_k, done, queries_per_batch, fuse)
        todo = [q for q in qids if q not in done]
        # the engine is not a setting: either engine resumes the other's output
        base = {"run": str(out), **settings, "engine": getattr(ranker, "engine_info", {"name": "local"})}

        make_parent(out, "output run")
        # the kept queries' accounting rides along, so that a run killed in this slice loses only its own
        _write_sidecar(partial, {**base, "status": "running", "report": {"per_query": dict(report.per_query)}})
        # the partial file starts as exactly the kept queries, written beside it and renamed: nothing is lost if
        # this run dies before it has reranked anything
        write_atomic(partial, "".join(done[q] for q in qids if q in done), "output run")
        stats = getattr(getattr(ranker, "backend", None), "stats", None)
        before = stats.snapshot() if stats else {}
        start = time.perf_counter()
        bar = tqdm(total=len(todo), desc="rerank", unit="q", disable=not progress, file=sys.stderr)
        written = [q for q in qids if q in done]
        batch_ends = {group[-1] for group in batches(qids, queries_per_batch)}  # a stop keeps whole batches
        with _open_for_append(partial) as f, bar:  # the bar ends its line however the loop ends
            for qid, ranking in rankings:
                written.append(qid)
                tail = list(run[qid])[top_k:]
                order = [*ranking.ids, *(d for d, _ in tail)]
                _append(f, format_run_lines(qid, list(zip(order, chain_scores(ranking.scores, len(tail)))), tag))
                report.documents += len(ranking)
                report.add(qid, ranking.metadata)
                bar.update(1)
                if stats is None:
                    bar.set_postfix(docs=report.documents)
                else:
                    elapsed = time.perf_counter() - start
                    bar.set_postfix(docs_s=f"{report.documents / elapsed:.1f}", tok_s=f"{report.tokens / elapsed:.0f}")
                if (max_seconds is not None and qid in batch_ends and len(written) < len(qids)
                        and time.perf_counter() - start >= max_seconds):
                    report.queries_left = len(qids) - len(written)
                    break
        report.queries = len(written) - len(done)
        report.seconds = time.perf_counter() - start
        if report.queries_left:  # stopped: the partial file is what a resume picks up, with this report
            _write_sidecar(partial, {**base, "status": "stopped", "report": report.to_dict(),
                                     "backend_stats": stats.since(before) if stats else None})
            return report
        # kept queries that do not all come before the new ones, or batches that finished out of order (an
        # engine with several workers): put the file in run order
        if written != qids:
            blocks, _ = kept_queries(partial, run, qids, top_k, tag)
            write_atomic(partial, "".join(blocks[q] for q in qids), "output run")
        meta = {
            **base,
            "engine": getattr(ranker, "engine_info", {"name": "local"}),  # with the faults the run met
            "status": "complete",
            "sha256": _sha256(partial),
            "report": report.to_dict(),
            "backend_stats": stats.since(before) if stats else None,
        }
        # The earlier output and its sidecar stay a pair until the run is renamed over it; the new sidecar
        # follows at once (a crash between the two is completed by the next call, _finish_rename).
        _write_sidecar(partial, meta)
        os.replace(partial, out)
        os.replace(sidecar_path(partial), sidecar_path(out))
    return report


@contextmanager
def _on_engine(ranker: Any, engine: Any) -> Iterator[Any]:
    """The ranker that ranks the run: ``ranker`` itself, or with ``engine`` its workers, started for the run and
    ended after it however it ends."""
    if engine is None:
        yield ranker
        return
    with engine.start(ranker) as remote:
        yield remote


def _open_for_append(path: Path) -> Any:
    try:
        return open(path, "a", encoding="utf-8")
    except OSError as e:
        raise OutputError(f"cannot write the output run {path}: {e.strerror or e}") from e


def _append(f: Any, text: str) -> None:
    """Write one query's lines and flush them, so a crash keeps every finished query."""
    try:
        f.write(text)
        f.flush()
    except OSError as e:
        raise OutputError(
            f"cannot write the output run {f.name}: {e.strerror or e}; the queries written so far are kept there, "
            "rerun with --resume once it can be written"
        ) from e


def _write_sidecar(out: Path, meta: Mapping[str, Any]) -> None:
    write_atomic(sidecar_path(out), json.dumps(meta, indent=2) + "\n", "sidecar")


def _with_id(doc: Document | str, docid: str) -> Document:
    if isinstance(doc, str):
        return Document(text=doc, id=docid)
    return doc if doc.id == docid else Document(text=doc.text, id=docid, title=doc.title)
