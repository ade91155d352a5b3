from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from llmrerank.data import (
    BeirDataset,
    DataFormatError,
    find_run,
    format_run_lines,
    load_beir,
    load_corpus,
    load_qrels,
    load_queries,
    load_run,
    read_jsonl,
    sample_path,
    write_run,
)
from llmrerank.types import Document

FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "tiny"
BAD = FIXTURES / "malformed"

TINY_QRELS = {
    "q1": {"d1": 3, "d4": 2, "d2": 1, "d3": 0},
    "q2": {"d5": 3, "d6": 2, "d8": 1, "d7": 0},
    "q3": {"d9": 3, "d10": 1, "d11": 1, "d12": 0},
}


@contextmanager
def _raises_at(path: Path, line: int, contains: str = "") -> Iterator[None]:
    """Expect a DataFormatError whose message starts with '<path>, line <n>: ' and contains a phrase."""
    with pytest.raises(DataFormatError) as info:
        yield
    message = str(info.value)
    assert message.startswith(f"{path}, line {line}: "), message
    assert contains in message, message
    assert info.value.line == line


# --- JSONL, corpus, queries -------------------------------------------------------------------------


def test_read_jsonl_skips_blank_lines_and_reports_bad_json_line():
    path = BAD / "bad_json.jsonl"
    records = read_jsonl(path)
    assert next(records) == {"_id": "d1", "text": "fine"}
    with _raises_at(path, 3, "invalid JSON"):
        next(records)


def test_data_format_error_is_a_value_error():
    assert issubclass(DataFormatError, ValueError)


def test_load_corpus_reads_documents_and_turns_empty_title_into_none():
    corpus = load_corpus(TINY / "corpus.jsonl")
    assert len(corpus) == 12
    assert list(corpus)[:3] == ["d1", "d2", "d3"]
    assert corpus["d1"] == Document(
        text="Honey bees make honey from flower nectar and store it in wax combs.", id="d1", title="Honey bees"
    )
    assert corpus["d3"].title is None


@pytest.mark.parametrize(
    ("name", "line", "field"), [("corpus_missing_id.jsonl", 2, "'_id'"), ("corpus_missing_text.jsonl", 1, "'text'")]
)
def test_load_corpus_missing_field(name, line, field):
    with _raises_at(BAD / name, line, f"missing field {field}"):
        load_corpus(BAD / name)


def test_load_corpus_duplicate_id(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n')
    with _raises_at(path, 2, "duplicate"):
        load_corpus(path)


def test_load_queries_keeps_file_order():
    queries = load_queries(TINY / "queries.jsonl")
    assert list(queries) == ["q1", "q2", "q3"]
    assert queries["q2"] == "why does a volcano erupt"


# --- qrels ------------------------------------------------------------------------------------------


def test_load_qrels_beir_tsv_with_header():
    assert load_qrels(TINY / "qrels" / "test.tsv") == TINY_QRELS


def test_load_qrels_trec_format_gives_the_same_dict(tmp_path):
    path = tmp_path / "qrels.txt"
    path.write_text("".join(f"{q}  0 {d}   {g}\n" for q, docs in TINY_QRELS.items() for d, g in docs.items()))
    assert load_qrels(path) == TINY_QRELS


def test_load_qrels_beir_without_header(tmp_path):
    path = tmp_path / "qrels.tsv"
    path.write_text("q1\td1\t2\nq1\td2\t0\n")
    assert load_qrels(path) == {"q1": {"d1": 2, "d2": 0}}


@pytest.mark.parametrize(("name", "line"), [("qrels_bad_grade.tsv", 3), ("qrels_bad_grade.trec", 2)])
def test_load_qrels_non_integer_grade(name, line):
    with _raises_at(BAD / name, line, "relevance must be an integer"):
        load_qrels(BAD / name)


def test_load_qrels_unknown_layout(tmp_path):
    path = tmp_path / "qrels.txt"
    path.write_text("q1 d1\n")
    with _raises_at(path, 1, "cannot tell the qrels layout"):
        load_qrels(path)


def test_load_qrels_conflicting_duplicate(tmp_path):
    path = tmp_path / "qrels.txt"
    path.write_text("q1 0 d1 1\nq1 0 d1 1\nq1 0 d1 3\n")
    with _raises_at(path, 3, "twice"):
        load_qrels(path)


# --- runs -------------------------------------------------------------------------------------------


def test_load_run_tiny():
    run = load_run(TINY / "run.trec")
    assert list(run) == ["q1", "q2", "q3"]
    assert run["q1"] == [("d4", 12.5), ("d1", 11.0), ("d3", 4.25), ("d2", 3.0)]
    assert all(len(items) == 4 for items in run.values())


def test_load_run_orders_by_rank_column_and_keeps_first_appearance_query_order(tmp_path):
    path = tmp_path / "run.trec"
    path.write_text(
        "qB Q0 b2 2 0.5 t\n"
        "qA Q0 a3 3 9.0 t\n"  # score order disagrees with rank: rank wins
        "qB Q0 b1 1 0.7 t\n"
        "qA Q0 a1 1 1.0 t\n"
        "qA Q0 a2 2 5.0 t\n"
    )
    run = load_run(path)
    assert list(run) == ["qB", "qA"]
    assert run["qA"] == [("a1", 1.0), ("a2", 5.0), ("a3", 9.0)]
    assert run["qB"] == [("b1", 0.7), ("b2", 0.5)]


def test_load_run_wrong_field_count_message_is_exact():
    path = BAD / "run_short_line.trec"
    with pytest.raises(DataFormatError) as info:
        load_run(path)
    assert str(info.value) == f"{path}, line 3: expected 6 fields (qid Q0 docid rank score tag), got 4"


@pytest.mark.parametrize(
    ("name", "line", "contains"),
    [
        ("run_duplicate_doc.trec", 3, "appears twice"),
        ("run_bad_score.trec", 2, "score must be a number"),
        ("run_bad_rank.trec", 1, "rank must be an integer"),
    ],
)
def test_load_run_errors(name, line, contains):
    with _raises_at(BAD / name, line, contains):
        load_run(BAD / name)


def test_load_run_rejects_nan(tmp_path):
    path = tmp_path / "run.trec"
    path.write_text("q Q0 d 1 nan t\n")
    with _raises_at(path, 1, "NaN"):
        load_run(path)


def test_format_run_lines():
    text = format_run_lines("q1", [("d2", 2.5), ("d1", 1)], "mine")
    assert text == "q1 Q0 d2 1 2.5 mine\nq1 Q0 d1 2 1.0 mine\n"


def test_write_run_keeps_close_scores_distinct_and_round_trips(tmp_path):
    close = 0.1 + 0.2  # 0.30000000000000004, a different float from 0.3
    run = {"q1": [("a", close), ("b", 0.3), ("c", 1e-300), ("d", -2.0)], "q0": [("x", 1.0)]}
    path = tmp_path / "out" / "run.trec"
    write_run(path, run, tag="t")
    back = load_run(path)
    assert back == run
    assert back["q1"][0][1] > back["q1"][1][1]
    assert list(back) == ["q1", "q0"]


def test_write_run_append(tmp_path):
    path = tmp_path / "run.trec"
    write_run(path, {"q1": [("a", 1.0)]})
    write_run(path, {"q2": [("b", 2.0)]}, append=True)
    assert path.read_text() == "q1 Q0 a 1 1.0 llmrerank\nq2 Q0 b 1 2.0 llmrerank\n"
    write_run(path, {"q3": [("c", 3.0)]})
    assert path.read_text() == "q3 Q0 c 1 3.0 llmrerank\n"


@pytest.mark.parametrize(("qid", "doc", "tag"), [("q 1", "d", "t"), ("q", "d d", "t"), ("q", "d", "")])
def test_write_run_rejects_whitespace_in_fields(tmp_path, qid, doc, tag):
    with pytest.raises(ValueError):
        write_run(tmp_path / "r.trec", {qid: [(doc, 1.0)]}, tag=tag)


# --- BEIR folders -----------------------------------------------------------------------------------


def test_load_beir_tiny():
    ds = load_beir(TINY)
    assert isinstance(ds, BeirDataset)
    assert ds.path == TINY
    assert list(ds.queries) == ["q1", "q2", "q3"]
    assert ds.qrels == TINY_QRELS
    assert len(ds.corpus) == 12


def test_load_beir_keeps_only_judged_queries_in_file_order(tmp_path):
    folder = tmp_path / "ds"
    shutil.copytree(TINY, folder)
    lines = [
        {"_id": "q9", "text": "not judged"},
        {"_id": "q3", "text": "third"},
        {"_id": "q1", "text": "first"},
        {"_id": "q2", "text": "second"},
    ]
    (folder / "queries.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert list(load_beir(folder).queries) == ["q3", "q1", "q2"]


def test_load_beir_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="BEIR folder"):
        load_beir(tmp_path / "nope")


def test_load_beir_missing_corpus(tmp_path):
    folder = tmp_path / "ds"
    shutil.copytree(TINY, folder)
    (folder / "corpus.jsonl").unlink()
    with pytest.raises(FileNotFoundError) as info:
        load_beir(folder)
    assert str(folder / "corpus.jsonl") in str(info.value)


def test_load_beir_missing_split_lists_available_ones():
    with pytest.raises(FileNotFoundError) as info:
        load_beir(TINY, split="dev")
    message = str(info.value)
    assert str(TINY / "qrels" / "dev.tsv") in message
    assert "available splits: test" in message


def test_find_run(tmp_path):
    assert find_run(TINY) == TINY / "run.trec"
    assert find_run(tmp_path) is None
    (tmp_path / "a.trec").write_text("")
    (tmp_path / "b.trec").write_text("")
    assert find_run(tmp_path) is None


# --- the bundled sample -----------------------------------------------------------------------------


def test_sample_is_a_complete_beir_folder():
    folder = sample_path()
    assert folder.is_dir()
    ds = load_beir(folder)
    assert len(ds.queries) == 5
    run = load_run(find_run(folder))
    assert list(run) == list(ds.queries)
    for qid, items in run.items():
        assert len(items) == 20
        assert all(doc_id in ds.corpus for doc_id, _ in items)
        # the selection rule: at least one rel >= 2 document among the top 20
        assert any(ds.qrels[qid].get(doc_id, 0) >= 2 for doc_id, _ in items)
    assert len(ds.corpus) == len({d for items in run.values() for d, _ in items})
    # all judgements kept, also of passages outside the top 20, so the ideal ranking is the real one
    assert any(d not in ds.corpus for docs in ds.qrels.values() for d in docs)
    assert (folder / "README.md").is_file()
