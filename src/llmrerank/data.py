"""Reading and writing the files of an IR experiment: BEIR folders, TREC runs and qrels, JSONL.

The in-memory shapes are plain dicts, so they are easy to build by hand:

- corpus: ``{doc_id: Document}``
- queries: ``{query_id: text}``
- qrels: ``{query_id: {doc_id: grade}}``
- run: ``{query_id: [(doc_id, score), ...]}``, best first

Every parse failure raises :class:`DataFormatError` naming the file and the 1-based line number.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from llmrerank.types import Document

PathLike = Union[str, Path]
Run = dict[str, list[tuple[str, float]]]
Qrels = dict[str, dict[str, int]]

_BEIR_LAYOUT = "a BEIR folder holds corpus.jsonl, queries.jsonl and qrels/<split>.tsv"


class DataFormatError(ValueError):
    """A data file does not parse; the message names the file and the 1-based line number."""

    def __init__(self, path: PathLike, line: int, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.reason = message
        super().__init__(f"{path}, line {line}: {message}")


BOM = b"\xef\xbb\xbf"


def _decode(raw: bytes, path: PathLike, number: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataFormatError(
            path, number, f"not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); save the file as UTF-8"
        ) from None


def read_lines(path: PathLike) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` for every line of a UTF-8 text file, newline (``\\n`` or ``\\r\\n``)
    stripped, streaming. A byte-order mark at the start is dropped; bytes that are not UTF-8 are a
    :class:`DataFormatError` naming the file and the line. Every text reader of the package goes through here
    or :func:`read_text`."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if number == 1 and raw.startswith(BOM):
                raw = raw[len(BOM) :]
            yield number, _decode(raw, path, number).rstrip("\r\n")


def read_text(path: PathLike) -> str:
    """The whole of a UTF-8 text file (a config, a prompt template, a JSON record), read as :func:`read_lines`
    reads: a leading byte-order mark dropped, bytes that are not UTF-8 a :class:`DataFormatError` with their line."""
    raw = Path(path).read_bytes()
    if raw.startswith(BOM):
        raw = raw[len(BOM) :]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        number = raw.count(b"\n", 0, e.start) + 1
        line_start = raw.rfind(b"\n", 0, e.start) + 1
        raise DataFormatError(
            path,
            number,
            f"not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start - line_start + 1}); save the file as UTF-8",
        ) from None


def _open_lines(path: PathLike) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` for the non-blank lines of a UTF-8 text file, newline stripped."""
    for number, line in read_lines(path):
        if line.strip():
            yield number, line


def read_jsonl(path: PathLike) -> Iterator[dict[str, Any]]:
    """Yield one dict per non-blank line of a JSON Lines file.

    Raises:
        DataFormatError: a line is not valid JSON, or is JSON but not an object.
    """
    for _, record in _numbered_jsonl(path):
        yield record


def _required_str(record: Mapping[str, Any], key: str, path: PathLike, number: int) -> str:
    if key not in record or record[key] is None:
        raise DataFormatError(path, number, f"missing field {key!r}")
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataFormatError(path, number, f"field {key!r} must be a string, got {type(value).__name__}")
    return str(value)


def load_corpus(path: PathLike) -> dict[str, Document]:
    """Load a BEIR ``corpus.jsonl`` (``_id``, ``title``, ``text``) into ``{doc_id: Document}``.

    An absent or empty title becomes ``None``. A missing ``_id`` or ``text``, or a repeated ``_id``,
    is a :class:`DataFormatError`.
    """
    corpus: dict[str, Document] = {}
    for number, record in _numbered_jsonl(path):
        doc_id = _required_str(record, "_id", path, number)
        text = _required_str(record, "text", path, number)
        title = record.get("title")
        if title is not None and not isinstance(title, str):
            raise DataFormatError(path, number, f"field 'title' must be a string, got {type(title).__name__}")
        if doc_id in corpus:
            raise DataFormatError(path, number, f"duplicate document id {doc_id!r}")
        corpus[doc_id] = Document(text=text, id=doc_id, title=title or None)
    return corpus


def load_queries(path: PathLike) -> dict[str, str]:
    """Load a BEIR ``queries.jsonl`` (``_id``, ``text``) into ``{query_id: text}``, in file order."""
    queries: dict[str, str] = {}
    for number, record in _numbered_jsonl(path):
        query_id = _required_str(record, "_id", path, number)
        text = _required_str(record, "text", path, number)
        if query_id in queries:
            raise DataFormatError(path, number, f"duplicate query id {query_id!r}")
        queries[query_id] = text
    return queries


def _numbered_jsonl(path: PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    # read_jsonl without losing the line number, for field-level errors
    for number, line in _open_lines(path):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFormatError(path, number, f"invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(record, dict):
            raise DataFormatError(path, number, f"expected a JSON object, got {type(record).__name__}")
        yield number, record


def _parse_int(text: str, what: str, path: PathLike, number: int) -> int:
    try:
        return int(text)
    except ValueError:
        raise DataFormatError(path, number, f"{what} must be an integer, got {text!r}") from None


def load_qrels(path: PathLike) -> Qrels:
    """Load relevance judgements into ``{query_id: {doc_id: grade}}``.

    Two layouts are accepted, detected from the first non-blank line of the file:

    - BEIR: tab-separated ``query-id  corpus-id  score``, with a header line (also read without one);
    - TREC: whitespace-separated ``qid iter docid rel``, no header.

    A non-integer grade, a wrong number of fields, or one (query, doc) pair judged twice with different
    grades is a :class:`DataFormatError`.
    """
    lines = _open_lines(path)
    first = next(lines, None)
    qrels: Qrels = {}
    if first is None:
        return qrels
    number, line = first
    n_fields = len(line.split())
    if n_fields == 4:
        layout = "trec"
    elif len(line.split("\t")) == 3:
        layout = "beir"
    else:
        raise DataFormatError(
            path,
            number,
            "cannot tell the qrels layout: expected 3 tab-separated fields (query-id corpus-id score, BEIR) "
            f"or 4 fields (qid iter docid rel, TREC), got {n_fields}",
        )
    is_header = layout == "beir" and not _looks_like_int(line.split("\t")[2].strip())

    def records() -> Iterator[tuple[int, str]]:
        if not is_header:
            yield number, line
        yield from lines

    for n, text in records():
        if layout == "trec":
            fields = text.split()
            if len(fields) != 4:
                raise DataFormatError(path, n, f"expected 4 fields (qid iter docid rel), got {len(fields)}")
            qid, _, doc_id, grade_text = fields
        else:
            fields = [f.strip() for f in text.split("\t")]
            if len(fields) != 3:
                raise DataFormatError(
                    path, n, f"expected 3 tab-separated fields (query-id corpus-id score), got {len(fields)}"
                )
            qid, doc_id, grade_text = fields
        grade = _parse_int(grade_text, "relevance", path, n)
        judged = qrels.setdefault(qid, {})
        if doc_id in judged and judged[doc_id] != grade:
            raise DataFormatError(
                path, n, f"query {qid!r} judges document {doc_id!r} twice ({judged[doc_id]} and {grade})"
            )
        judged[doc_id] = grade
    return qrels


def _looks_like_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def load_run(path: PathLike) -> Run:
    """Load a TREC run (``qid Q0 docid rank score tag``) into ``{query_id: [(doc_id, score), ...]}``.

    Each query's list is ordered by the rank column, ascending (equal ranks keep file order); queries keep
    the order of their first appearance. A repeated document within a query, a rank that is not an
    integer, or a score that is not a number (NaN included) is a :class:`DataFormatError`.
    """
    ranked: dict[str, list[tuple[int, str, float]]] = {}
    seen: dict[str, set[str]] = {}
    for number, line in _open_lines(path):
        fields = line.split()
        if len(fields) != 6:
            raise DataFormatError(path, number, f"expected 6 fields (qid Q0 docid rank score tag), got {len(fields)}")
        qid, _, doc_id, rank_text, score_text, _ = fields
        rank = _parse_int(rank_text, "rank", path, number)
        try:
            score = float(score_text)
        except ValueError:
            raise DataFormatError(path, number, f"score must be a number, got {score_text!r}") from None
        if math.isnan(score):
            raise DataFormatError(path, number, "score is NaN")
        docs = seen.setdefault(qid, set())
        if doc_id in docs:
            raise DataFormatError(path, number, f"document {doc_id!r} appears twice for query {qid!r}")
        docs.add(doc_id)
        ranked.setdefault(qid, []).append((rank, doc_id, score))
    run: Run = {}
    for qid, rows in ranked.items():
        rows.sort(key=lambda row: row[0])  # stable: equal ranks keep file order
        run[qid] = [(doc_id, score) for _, doc_id, score in rows]
    return run


def check_token(value: str, what: str) -> None:
    if not value or any(c.isspace() for c in value):
        raise ValueError(f"{what} must be a non-empty string without whitespace for a TREC run, got {value!r}")


def format_run_lines(qid: str, items: Sequence[tuple[str, float]], tag: str) -> str:
    """Format one query's ranking as TREC run lines (``qid Q0 docid rank score tag``), ranks 1..n.

    Scores are written with ``repr(float(score))``, which round-trips exactly, so scores that differ
    stay different on disk and a reader that sorts by score recovers the same order.
    """
    check_token(qid, "query id")
    check_token(tag, "run tag")
    lines = []
    for rank, (doc_id, score) in enumerate(items, start=1):
        check_token(doc_id, "document id")
        lines.append(f"{qid} Q0 {doc_id} {rank} {float(score)!r} {tag}\n")
    return "".join(lines)


def write_run(
    path: PathLike, run: Mapping[str, Sequence[tuple[str, float]]], tag: str = "llmrerank", append: bool = False
) -> None:
    """Write a run in TREC format, queries in mapping order, each list best first.

    The file is written whole or not at all (:func:`llmrerank.outputs.write_atomic`): an earlier file at ``path``
    stays as it was until the new one is complete, and a bad id leaves it untouched. With ``append=True`` the
    lines are added to the end of an existing file instead (e.g. to write query by query). Parent folders are
    created when missing.
    """
    from .outputs import make_parent, write_atomic

    text = "".join(format_run_lines(qid, items, tag) for qid, items in run.items())
    path = Path(path)
    if not append:
        write_atomic(path, text, "run")
        return
    make_parent(path, "run")
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


@dataclass(frozen=True)
class BeirDataset:
    """A loaded BEIR folder: the corpus, the judged queries of one split, their qrels, and where it lives."""

    corpus: dict[str, Document]
    queries: dict[str, str]
    qrels: Qrels
    path: Path


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: expected {what} ({_BEIR_LAYOUT})")
    return path


def load_beir(folder: PathLike, split: str = "test") -> BeirDataset:
    """Load a BEIR folder: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``.

    Only the queries judged in that split are kept, in the order of ``queries.jsonl``.

    Raises:
        FileNotFoundError: the folder or one of its files is missing (the message says what was expected,
            and for a missing split, which splits the folder has).
        DataFormatError: a file does not parse.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder: expected a BEIR folder ({_BEIR_LAYOUT})")
    corpus_path = _require(root / "corpus.jsonl", "the documents, one JSON object per line")
    queries_path = _require(root / "queries.jsonl", "the queries, one JSON object per line")
    qrels_path = root / "qrels" / f"{split}.tsv"
    if not qrels_path.exists():
        splits = sorted(p.stem for p in (root / "qrels").glob("*.tsv")) if (root / "qrels").is_dir() else []
        have = f"; available splits: {', '.join(splits)}" if splits else ""
        raise FileNotFoundError(
            f"{qrels_path} not found: expected the judgements of split {split!r} ({_BEIR_LAYOUT}){have}"
        )
    qrels = load_qrels(qrels_path)
    all_queries = load_queries(queries_path)
    queries = {qid: text for qid, text in all_queries.items() if qrels.get(qid)}
    return BeirDataset(corpus=load_corpus(corpus_path), queries=queries, qrels=qrels, path=root)


def find_run(folder: PathLike) -> Path | None:
    """Return the run file of a folder: its single ``*.trec`` file, or ``None`` if there are none or several."""
    runs = sorted(Path(folder).glob("*.trec"))
    return runs[0] if len(runs) == 1 else None


def sample_path() -> Path:
    """Path of the bundled demo sample (5 TREC DL 2019 queries with BM25 top-20 candidates), a BEIR folder."""
    return Path(__file__).resolve().parent / "sample" / "dl19-sample"
