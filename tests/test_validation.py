"""Nonsense is refused up front, with a message naming the key, flag or argument, what it must be and what was
given: training config keys, BM25 and evaluation arguments, the Python API's document lists, the CLI's numbers."""

from __future__ import annotations

import math
from functools import cache

import pytest

from conftest import make_model, make_tokenizer
from llmrerank.cli import main
from llmrerank.data import DataFormatError
from llmrerank.evaluate import evaluate_runs
from llmrerank.rankers.base import check_batch
from llmrerank.retrieve import bm25_search
from llmrerank.train.config import TrainConfig
from llmrerank.types import Document, as_documents

QUERY = "how do honey bees make honey"
CORPUS = {"d1": Document("honey bees make honey"), "d2": Document("why does a volcano erupt")}
QUERIES = {"q1": "honey bees"}
QRELS = {"q1": {"d1": 1}}
RUNS = {"bm25": {"q1": [("d1", 2.0), ("d2", 1.0)]}}


@cache
def _ranker():
    from llmrerank.backends.hf import HFBackend
    from llmrerank.rankers import PointwiseRanker

    tok = make_tokenizer()
    return PointwiseRanker(HFBackend(make_model(len(tok)), tok, batch_size=4, name="tiny"))


# --- the training config: one row per key (or rule), the override and the message ----------------------------


@pytest.mark.parametrize(
    ("override", "error", "message"),
    [
        ({"unjudged": "no"}, ValueError, r"^config: unjudged must be true or false, got str 'no'$"),
        ({"keep_best": "false"}, ValueError, r"^config: keep_best must be true or false, got str 'false'$"),
        ({"lora": 1}, ValueError, r"^config: lora must be true or false, got int 1$"),
        ({"gradient_checkpointing": 0}, ValueError, r"gradient_checkpointing must be true or false, got int 0"),
        ({"epochs": 1.5}, ValueError, r"^config: epochs must be an integer, got float 1\.5$"),
        ({"seed": True}, ValueError, r"^config: seed must be an integer, got bool True$"),
        ({"save_every": 2.0}, ValueError, r"^config: save_every must be an integer, got float 2\.0$"),
        ({"threads": 0}, ValueError, r"^config: threads must be at least 1, got int 0$"),
        ({"threads": "4"}, ValueError, r"^config: threads must be an integer or None, got str '4'$"),
        ({"group_size": 0}, ValueError, r"^config: group_size must be at least 1, got int 0$"),
        (
            {"group_size": 1},
            ValueError,
            r"^config: group_size must be at least 2 for loss grouped_ce \(a positive and a negative\), got 1; only "
            r"nll learns from the positive alone$",
        ),
        (
            {"loss": "nll", "method": "likelihood"},
            ValueError,
            r"^config: loss nll reads the positive alone: set group_size = 1 \(its 7 negatives a group would be "
            r"scored and never used\)$",
        ),
        (
            {"loss": "nll", "group_size": 1},
            ValueError,
            r"^config: loss nll maximises the positive's score, which only a log-probability bounds: use it with "
            r"method likelihood, not pointwise$",
        ),
        ({"top_k": 0}, ValueError, r"^config: top_k must be at least 1, got int 0$"),
        ({"rel": 0}, ValueError, r"^config: rel must be at least 1, got int 0$"),
        ({"max_positives": -1}, ValueError, r"^config: max_positives must be at least 1, got int -1$"),
        ({"max_steps": 0}, ValueError, r"^config: max_steps must be at least 1, got int 0$"),
        ({"eval_every": -1}, ValueError, r"^config: eval_every must be at least 0, got int -1$"),
        ({"warmup_steps": -5}, ValueError, r"^config: warmup_steps must be at least 0, got int -5$"),
        ({"keep_checkpoints": 0}, ValueError, r"^config: keep_checkpoints must be at least 1, got int 0$"),
        ({"lora_r": 0}, ValueError, r"^config: lora_r must be at least 1, got int 0$"),
        ({"lora_alpha": 16.5}, ValueError, r"^config: lora_alpha must be an integer, got float 16\.5$"),
        ({"lora_dropout": 1.5}, ValueError, r"^config: lora_dropout must be at least 0 and below 1, got float 1\.5$"),
        ({"lora_dropout": 1}, ValueError, r"^config: lora_dropout must be at least 0 and below 1, got int 1$"),
        ({"weight_decay": -0.1}, ValueError, r"^config: weight_decay must be at least 0, got float -0\.1$"),
        ({"learning_rate": 0}, ValueError, r"^config: learning_rate must be positive, got int 0$"),
        ({"head_learning_rate": -1e-3}, ValueError, r"^config: head_learning_rate must be positive, got float"),
        ({"learning_rate": math.inf}, ValueError, r"^config: learning_rate must be a finite number, got float inf$"),
        (
            {"learning_rate": "2e-4"},
            ValueError,
            r"^config: learning_rate must be a number, got str '2e-4' \(YAML reads 2e-4 as text: write 2\.0e-4\)$",
        ),
        ({"max_grad_norm": 0.0}, ValueError, r"^config: max_grad_norm must be positive, got float 0\.0$"),
        ({"max_grad_norm": "1"}, ValueError, r"^config: max_grad_norm must be a number or None, got str '1'"),
        ({"model": ""}, ValueError, r"^config: model must be a non-empty string, got str ''$"),
        ({"output_dir": 7}, ValueError, r"^config: output_dir must be a string, got int 7$"),
        ({"data": None}, ValueError, r"^config: data must be a string, got NoneType None$"),
        ({"run": ["a.trec"]}, ValueError, r"^config: run must be a string or None, got list \['a\.trec'\]$"),
        ({"dev_split": 1}, ValueError, r"^config: dev_split must be a string or None, got int 1$"),
        ({"dev_data": 1}, ValueError, r"^config: dev_data must be a string or None, got int 1$"),
        ({"dev_data": "dl21"}, ValueError, r"^config: dev_data names the folder of the dev split: set dev_split too$"),
        ({"method": "listwise"}, ValueError, r'^config: method must be "pointwise" or "likelihood", got str'),
        ({"dtype": "float64"}, ValueError, r'^config: dtype must be "float32", "bfloat16" or "float16", got str'),
        ({"bf16_autocast": "no"}, ValueError, r'^config: bf16_autocast must be true, false or "auto", got str \'no\'$'),
        ({"bf16_autocast": 1}, ValueError, r'^config: bf16_autocast must be true, false or "auto", got int 1$'),
        ({"eval_dtype": "int8"}, ValueError, r'^config: eval_dtype must be "auto", "float32" or "bfloat16", got str'),
        ({"eval_dtype": 1}, ValueError, r'^config: eval_dtype must be "auto", "float32" or "bfloat16", got int 1$'),
        ({"teacher_mode": "rank"}, ValueError, r'^config: teacher_mode must be "scores" or "order", got str \'rank\'$'),
        (
            {"loss": "nope"},
            ValueError,
            r'^config: loss must be "bce", "grouped_ce", "nll", "ranknet", "listnet", "poly1", "listmle", '
            r'"lambdaloss", "kl" or "margin_mse", got str \'nope\'$',
        ),
        (
            {"loss_options": {"tau": 1.0}},
            ValueError,
            r'^config: loss_options tau not taken by loss "grouped_ce": it takes temperature$',
        ),
        (
            {"loss": "listmle", "loss_options": {"temperature": 1.0}},
            ValueError,
            r'^config: loss_options temperature not taken by loss "listmle": it takes none$',
        ),
        (
            {"loss": "ranknet", "loss_options": {"weighted": "yes"}},
            ValueError,
            r"^config: loss_options\.weighted must be true or false, got str 'yes'$",
        ),
        (
            {"loss_options": {"temperature": 0}},
            ValueError,
            r"^config: loss_options: grouped_ce: temperature must be a finite number > 0, got 0\.0$",
        ),
        ({"loss_options": [1]}, ValueError, r"^config: loss_options must be a table, got list \[1\]$"),
        ({"options": ["head"]}, ValueError, r"^config: options must be a table, got list \['head'\]$"),
        ({"options": {"max_length": -3}}, ValueError, r"^config: options: max_length must be positive, got -3$"),
        ({"options": {"heads": "dense"}}, TypeError, r"^config: options: unknown option\(s\).*heads; accepted: "),
        (
            {"lora_targets": "q_proj"},
            ValueError,
            r'^config: lora_targets must be "all-linear" or a non-empty list of module names, got str \'q_proj\'$',
        ),
        ({"lora_targets": 3}, ValueError, r'^config: lora_targets must be "all-linear" or .*, got int 3$'),
        ({"lora_targets": []}, ValueError, r'^config: lora_targets must be "all-linear" or a non-empty list'),
        ({"lora_targets": ["q_proj", 3]}, ValueError, r"lora_targets must be .*, got list \['q_proj', 3\]$"),
    ],
)
def test_a_bad_config_value_is_refused_naming_the_key(override, error, message):
    with pytest.raises(error, match=message):
        TrainConfig(**override)


def test_good_config_values_are_kept():
    c = TrainConfig(
        learning_rate=1, lora_dropout=0.1, max_grad_norm=None, bf16_autocast="auto", lora_targets=("q_proj",), rel=2
    )
    assert (c.learning_rate, c.lora_dropout, c.max_grad_norm, c.bf16_autocast) == (1, 0.1, None, "auto")
    assert c.lora_targets == ["q_proj"] and c.rel == 2
    assert TrainConfig(loss="ranknet", loss_options={"sigma": 2, "weighted": True}).loss_options == {
        "sigma": 2,
        "weighted": True,
    }


# --- the config file: read as the data files are, a wrong value named by its key ---------------------------------

TOML = 'model = "smollm2-135m"\nloss = "listnet"\nmax_steps = 10\nunjudged = true\n[loss_options]\ntemperature = 2.0\n'


def test_a_config_with_a_byte_order_mark_loads_as_without(tmp_path):
    plain, marked = tmp_path / "plain.toml", tmp_path / "marked.toml"
    plain.write_text(TOML, encoding="utf-8")
    marked.write_bytes(b"\xef\xbb\xbf" + TOML.encode("utf-8"))
    assert TrainConfig.load(marked) == TrainConfig.load(plain)
    assert TrainConfig.load(marked).loss_options == {"temperature": 2.0}


@pytest.mark.parametrize(
    ("text", "overrides", "error", "message"),
    [
        ('epochs = "3"\n', {}, ValueError, r"^config: epochs must be an integer, got str '3'$"),
        ('unjudged = "no"\n', {}, ValueError, r"^config: unjudged must be true or false, got str 'no'$"),
        ("lora_dropout = 1.0\n", {}, ValueError, r"^config: lora_dropout must be at least 0 and below 1"),
        ('loss = "grouped_ce"\n', {"max_steps": 1.5}, ValueError, r"^config: max_steps must be an integer"),
        ('loss = "grouped_ce"\n', {"output_dir": ""}, ValueError, r"^config: output_dir must be a non-empty string"),
    ],
)
def test_a_bad_value_in_a_config_file_or_its_overrides_names_the_key(tmp_path, text, overrides, error, message):
    path = tmp_path / "c.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(error, match=message):
        TrainConfig.load(path, **overrides)


def test_a_config_file_that_is_not_utf8_names_the_file_and_line(tmp_path):
    path = tmp_path / "c.toml"
    path.write_bytes(b'model = "smollm2-135m"\nsplit = "tr\xe9in"\n')
    with pytest.raises(DataFormatError, match=r"c\.toml, line 2: not UTF-8 text \(byte 0xe9 at column 12\)"):
        TrainConfig.load(path)


# --- Python API arguments -------------------------------------------------------------------------------------


def _count(n):
    yield from (f"doc {i}" for i in range(n))


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda: bm25_search(CORPUS, QUERIES, k1=-1),
            ValueError,
            r"^bm25_search: k1 must be a finite number >= 0, got int -1$",
        ),
        (
            lambda: bm25_search(CORPUS, QUERIES, k1=math.nan),
            ValueError,
            r"^bm25_search: k1 must be a finite number >= 0",
        ),
        (
            lambda: bm25_search(CORPUS, QUERIES, k1="0.9"),
            ValueError,
            r"k1 must be a finite number >= 0, got str '0\.9'",
        ),
        (
            lambda: bm25_search(CORPUS, QUERIES, b=1.5),
            ValueError,
            r"^bm25_search: b must be a number in \[0, 1\], got float 1\.5$",
        ),
        (lambda: bm25_search(CORPUS, QUERIES, b=-0.1), ValueError, r"^bm25_search: b must be a number in \[0, 1\]"),
        (
            lambda: bm25_search(CORPUS, QUERIES, top_k=2.5),
            ValueError,
            r"^bm25_search: top_k must be a positive integer, got float 2\.5$",
        ),
        (
            lambda: bm25_search(CORPUS, QUERIES, top_k=True),
            ValueError,
            r"^bm25_search: top_k must be a positive integer, got bool",
        ),
        (
            lambda: bm25_search(CORPUS, QUERIES, top_k=0),
            ValueError,
            r"^bm25_search: top_k must be a positive integer, got int 0$",
        ),
        (
            lambda: evaluate_runs(QRELS, RUNS, ["RR@10"], rel=-5),
            ValueError,
            r"^rel is the grade at or above which a judged document counts as relevant for the binary measures: "
            r"an integer >= 1, got int -5$",
        ),
        (lambda: evaluate_runs(QRELS, RUNS, ["RR@10"], rel=True), ValueError, r"rel is the grade .* got bool True$"),
        (lambda: evaluate_runs(QRELS, RUNS, ["RR@10"], rel=1.5), ValueError, r"rel is the grade .* got float 1\.5$"),
        (
            lambda: evaluate_runs(QRELS, RUNS, "nDCG@10"),
            TypeError,
            r"^measures must be a sequence of measure names, e\.g\. \['nDCG@10'\], not a single string$",
        ),
        (
            lambda: evaluate_runs(QRELS, [RUNS["bm25"]]),
            TypeError,
            r"^runs must be a mapping \{run_name: run\}, got list$",
        ),
        (lambda: evaluate_runs(QRELS, {"bm25": [("d1", 1.0)]}), TypeError, r"^run 'bm25' must be a mapping"),
        (
            lambda: as_documents({"d1": "honey bees", "d2": "volcano"}),
            TypeError,
            r"^docs must be a sequence of documents, got a dict \(its keys would be ranked\): "
            r"pass a list of documents, e\.g\. list\(d\.values\(\)\)$",
        ),
        (
            lambda: as_documents({"honey", "bees"}),
            TypeError,
            r"^docs must be a sequence of documents, got a set, which has no order",
        ),
        (lambda: as_documents(frozenset({"bees"})), TypeError, r"got a frozenset, which has no order"),
        (
            lambda: as_documents(_count(2)),
            TypeError,
            r"^docs must be a sequence of documents \(a list or tuple\), got generator",
        ),
        (lambda: as_documents({"d": "x"}.values()), TypeError, r"got dict_values: pass list\(docs\)$"),
        (lambda: as_documents("honey bees"), TypeError, r"^docs must be a sequence of documents, not a single string$"),
        (
            lambda: check_batch({"q1": QUERY}, [["bees"]]),
            TypeError,
            r"^queries must be a sequence with one entry per query, got a dict",
        ),
        (
            lambda: check_batch([QUERY], {"q1": ["bees"]}),
            TypeError,
            r"^docs must be a sequence with one entry per query, got a dict",
        ),
        (
            lambda: check_batch([QUERY], [{"d1": "bees"}]),
            TypeError,
            r"^docs\[0\] must be a sequence of documents, got a dict",
        ),
        (
            lambda: _ranker().rank(QUERY, {"d1": "honey bees make honey", "d2": "volcano"}),
            TypeError,
            r"^docs\[0\] must be a sequence of documents, got a dict \(its keys would be ranked\): pass a list",
        ),
        (lambda: _ranker().rank_many({"q1": QUERY}, [["bees"]]), TypeError, r"^queries must be a sequence"),
        (lambda: _ranker().score(QUERY, {"bees"}), TypeError, r"^docs\[0\] must be .*got a set, which has no order"),
    ],
)
def test_a_bad_argument_is_refused_naming_it(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_good_arguments_still_work():
    import numpy as np

    assert [d.text for d in as_documents(("a", Document("b")))] == ["a", "b"]
    assert [d.text for d in as_documents(np.array(["a", "b"]))] == ["a", "b"]  # an array is a sequence
    assert evaluate_runs(QRELS, RUNS, ["RR@10"], rel=np.int64(1)).rel == 1
    assert bm25_search(CORPUS, QUERIES, top_k=np.int64(1), k1=0, b=1, show_progress=False)["q1"][0][0] == "d1"


# --- command-line numbers: parse errors (exit status 2) naming the flag --------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["retrieve", "--data", "d", "--out", "o", "--top-k", "0"], "argument --top-k: must be at least 1, got 0"),
        (
            ["retrieve", "--data", "d", "--out", "o", "--top-k", "2.5"],
            "argument --top-k: must be an integer, got '2.5'",
        ),
        (["retrieve", "--data", "d", "--out", "o", "--k1", "-1"], "argument --k1: must be at least 0, got -1"),
        (["retrieve", "--data", "d", "--out", "o", "--k1", "nan"], "argument --k1: must be a finite number, got 'nan'"),
        (["retrieve", "--data", "d", "--out", "o", "--b", "1.5"], "argument --b: must be 0 to 1, got 1.5"),
        (["retrieve", "--data", "d", "--out", "o", "--b", "x"], "argument --b: must be a number, got 'x'"),
        (["evaluate", "--qrels", "q", "--rel", "-5", "run.trec"], "argument --rel: must be at least 1, got -5"),
        (["evaluate", "--qrels", "q", "--rel", "0", "run.trec"], "argument --rel: must be at least 1, got 0"),
        (["train", "--config", "c.toml", "--max-steps", "0"], "argument --max-steps: must be at least 1, got 0"),
        (["rerank", "--max-length", "-3"], "argument --max-length: must be positive, got -3"),
        (["rerank", "--set-size", "1"], "argument --set-size: must be 2 to 26, got 1"),
        (["rerank", "--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
        (["demo", "--window-size", "1"], "argument --window-size: must be at least 2, got 1"),
        (["rerank", "--batch-tokens", "0"], "argument --batch-tokens: must be at least 1, got 0"),
        (
            ["rerank", "--reuse-prefix", "maybe"],
            "argument --reuse-prefix: 'maybe' is not one of true/false, on/off, yes/no, 1/0",
        ),
        (["rerank", "--quantize", "int4"], "argument --quantize: invalid choice: 'int4'"),
        (["rerank", "--dtype", "fp8"], "argument --dtype: invalid choice: 'fp8'"),
        (["rerank", "--pass-cost", "-1"], "argument --pass-cost: must be at least 0, got -1"),
        (
            ["generate-queries", "--data", "d", "--model", "m", "--passages", "1", "--out", "o"]
            + ["--teacher-dtype", "fp8"],
            "argument --teacher-dtype: invalid choice: 'fp8'",
        ),
        (
            ["rerank", "--compile", "perhaps"],
            "argument --compile: 'perhaps' is not one of true/false, on/off, yes/no, 1/0",
        ),
        (["rerank", "--max-minutes", "0"], "argument --max-minutes: must be positive, got 0"),
        (["rerank", "--max-minutes", "-2"], "argument --max-minutes: must be positive, got -2"),
        (["rerank", "--max-minutes", "abc"], "argument --max-minutes: must be a number, got 'abc'"),
        (["rerank", "--max-minutes", "nan"], "argument --max-minutes: must be a finite number, got 'nan'"),
        (
            ["generate-queries", "--data", "d", "--model", "m", "--passages", "1", "--out", "o", "--max-minutes", "0"],
            "argument --max-minutes: must be positive, got 0",
        ),
    ],
)
def test_a_bad_number_on_the_command_line_is_a_parse_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_bad_config_value_on_the_command_line_is_one_error_line(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text('teacher_mode = "rank"\n', encoding="utf-8")
    assert main(["train", "--config", str(path)]) == 2
    assert capsys.readouterr().err == 'error: config: teacher_mode must be "scores" or "order", got str \'rank\'\n'
