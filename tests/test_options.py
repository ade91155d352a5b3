"""The option specs: validation in one place, the dict round trip (``config()`` -> ``Reranker.from_config``) for
every method, and the CLI flags generated from them."""

from __future__ import annotations

import json

import pytest

from conftest import make_model
from llmrerank import Reranker
from llmrerank.backends.hf import HFBackend
from llmrerank.cli import build_parser, main
from llmrerank.options import BackendOptions
from llmrerank.prompts import TRUE_FALSE
from llmrerank.rankers.likelihood import LikelihoodOptions
from llmrerank.rankers.listwise import ListwiseOptions
from llmrerank.rankers.pairwise import PairwiseOptions
from llmrerank.rankers.pointwise import PointwiseOptions
from llmrerank.rankers.setwise import SetwiseOptions
from llmrerank.registry import METHODS, method_options, options_class
from test_listwise import QUERY, docs_numbered, listwise_tokenizer

# Non-default options for each method, which the round trips below must carry over.
OPTIONS = {
    "pointwise": {"tokens": "true_false", "normalisation": "logit", "max_length": 200},
    "likelihood": {"reduction": "sum", "max_length": 128},
    "listwise": {"window_size": 4, "step": 2, "decoding": "first", "passage_tokens": 8},
    "pairwise": {"aggregation": "heapsort", "sort_top_k": 3, "passage_tokens": 8},
    "setwise": {"set_size": 3, "aggregation": "bubblesort", "sort_top_k": 2},
}


@pytest.fixture(scope="module")
def tiny():
    tok = listwise_tokenizer()
    return HFBackend(make_model(len(tok)), tok, batch_size=3, name="tiny")


# --- validation --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "given", "error", "message"),
    [
        (
            PointwiseOptions,
            {"normalisation": "softmax"},
            ValueError,
            "unknown normalisation 'softmax' for pointwise: "
            "choose one of pair_softmax, vocab_softmax, yes_logit, logit",
        ),
        (ListwiseOptions, {"window_size": "20"}, ValueError, "listwise option window_size must be int, got str '20'"),
        (ListwiseOptions, {"passes": True}, ValueError, "listwise option passes must be int, got bool"),
        (ListwiseOptions, {"window_size": 1}, ValueError, "window_size must be at least 2, got 1"),
        (SetwiseOptions, {"set_size": 27}, ValueError, "set_size must be 2 to 26, got 27"),
        (
            PairwiseOptions,
            {"sort_top_k": 5},
            ValueError,
            "sort_top_k applies to aggregation='heapsort' or 'bubblesort' only",
        ),
        (
            PairwiseOptions,
            {"aggregation": "heapsort", "pair_top_k": 5},
            ValueError,
            "pair_top_k applies to aggregation='allpairs'",
        ),
        (
            PointwiseOptions,
            {"head": "dense", "normalisation": "logit"},
            ValueError,
            "normalisation applies to head='tokens' only",
        ),
        (
            ListwiseOptions,
            {"decoding": "first", "max_new_tokens": 9},
            ValueError,
            "max_new_tokens applies to decoding='generate'",
        ),
        (LikelihoodOptions, {"template": "yes_no"}, ValueError, "has no target"),
        (
            LikelihoodOptions,
            {"template": 3},
            ValueError,
            "template must be str or Path or Mapping or Template, got int",
        ),
        (
            LikelihoodOptions,
            {"normalisation": "logit"},
            TypeError,
            "unknown option.*normalisation; accepted: reduction, template, max_length",
        ),
        (BackendOptions, {"dtype": "float64"}, ValueError, "unknown dtype 'float64' for backend"),
        (BackendOptions, {"threads": 0}, ValueError, "threads must be at least 1"),
        (BackendOptions, {"device": "gpu9"}, ValueError, "unknown device 'gpu9'"),
        (PointwiseOptions, {"max_length": 0}, ValueError, "max_length must be positive, got 0"),
        (ListwiseOptions, {"passage_tokens": -1}, ValueError, "passage_tokens must be positive, got -1"),
        (
            ListwiseOptions,
            {"template": "mine.toml"},
            FileNotFoundError,
            "listwise option template: prompt file not found",
        ),
    ],
)
def test_a_bad_option_is_refused_naming_it(cls, given, error, message):
    with pytest.raises(error, match=message):
        cls.build(given)


def test_the_tables_fill_in_their_method_defaults():
    assert ListwiseOptions(decoding="first").identifiers == "letters"
    assert ListwiseOptions().identifiers == "numbers"
    assert PointwiseOptions(tokens="true_false").template is TRUE_FALSE  # the template matching the pair
    assert PointwiseOptions(tokens=["true", "false"]).tokens == ("true", "false")
    assert PointwiseOptions().max_length == 512 and ListwiseOptions().max_length == 4096


@pytest.mark.parametrize("method", sorted(OPTIONS))
def test_to_dict_is_plain_data_that_builds_the_same_options(method):
    cls = options_class(method)
    options = cls.build(OPTIONS[method])
    table = options.to_dict()
    assert json.loads(json.dumps(table)) == table
    assert cls.build(json.loads(json.dumps(table))) == options
    assert set(table) <= set(method_options(method))


def test_to_dict_leaves_out_what_does_not_apply():
    assert "pair_top_k" not in PairwiseOptions(aggregation="heapsort").to_dict()
    assert "sort_top_k" not in PairwiseOptions().to_dict()
    dense = PointwiseOptions(head="dense").to_dict()
    assert "tokens" not in dense and "normalisation" not in dense and dense["head_weights"] is None
    assert "max_new_tokens" not in ListwiseOptions(decoding="first").to_dict()


# --- config() and Reranker.from_config ---------------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(METHODS))
def test_config_rebuilds_an_equal_ranker_from_its_dict(tiny, method):
    ranker = Reranker(method, backend=tiny, **OPTIONS[method])
    config = json.loads(json.dumps(ranker.config()))  # survives a config file or a message to a worker
    assert config["method"] == method and config["model"] == "tiny"
    assert config["backend"] == {
        "batch_size": 3, "batch_tokens": 8192, "reuse_prefix": True, "dtype": "float32", "device": "cpu"
    }
    rebuilt = Reranker.from_config(config, backend=tiny)
    assert type(rebuilt) is type(ranker) and rebuilt.options == ranker.options
    docs = docs_numbered(6)
    assert rebuilt.rank(QUERY, docs).indices == ranker.rank(QUERY, docs).indices
    assert rebuilt.score(QUERY, docs) == pytest.approx(ranker.score(QUERY, docs), abs=1e-6)
    assert rebuilt.describe() == ranker.describe()


def test_from_config_loads_the_model_and_the_backend_options(tiny_model_dir):
    from llmrerank.backends.hf import native_bf16

    ranker = Reranker("likelihood", model=str(tiny_model_dir), batch_size=3, max_length=64)
    config = ranker.config()
    assert config["backend"] == {  # no dtype given: likelihood's own default, auto
        "batch_size": 3, "batch_tokens": 8192, "dtype": "auto", "device": "auto", "threads": None,
        "reuse_prefix": True, "quantize": None, "pass_cost": None, "compile": False,
    }
    assert ranker.backend.dtype == ("bfloat16" if native_bf16("cpu") else "float32")
    assert config["model"] == str(tiny_model_dir)
    rebuilt = Reranker.from_config(json.loads(json.dumps(config)))
    assert rebuilt.backend is not ranker.backend and rebuilt.backend.batch_size == 3
    docs = ["how do bees make honey", "the cat sat on the mat"]
    assert rebuilt.score("honey bees", docs) == pytest.approx(ranker.score("honey bees", docs), abs=1e-5)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"model": "x"}, "needs 'method'"),
        ({"method": "likelihood", "opts": {}}, "unknown ranker config key.*opts"),
        ({"method": "likelihood", "options": [1]}, "'options' must be a table"),
        ({"method": "likelihood", "backend": {"batch_size": 2}, "options": {"batch_size": 2}}, "both as backend"),
        ({"method": "likelihood", "options": {"reduction": "max"}}, "unknown reduction 'max'"),
        ({"method": "listwize"}, "unknown method 'listwize'"),
    ],
)
def test_from_config_refuses_a_bad_config_before_loading_a_model(config, message):
    with pytest.raises(ValueError, match=message):
        Reranker.from_config(config)


def test_from_config_refuses_an_unknown_name_or_what_is_not_a_mapping():
    with pytest.raises(TypeError, match="a ranker config is a mapping"):
        Reranker.from_config([("method", "likelihood")])
    with pytest.raises(TypeError, match="unknown backend option.*color; accepted: batch_size, batch_tokens, dtype"):
        Reranker.from_config({"method": "likelihood", "backend": {"dtype": "float32", "color": 1}})
    with pytest.raises(ValueError, match="'options' must be a table"):
        Reranker.from_config({"method": "likelihood", "options": ""})


# --- the generated command-line flags ----------------------------------------------------------------------

# The flags of the command line before they were generated: they keep their names.
TODAYS_FLAGS = (
    "--max-length --batch-size --dtype --device --threads --prompt-file --tokens --normalisation --reduction "
    "--window-size --step --passes --decoding --identifiers --passage-tokens --max-new-tokens --aggregation "
    "--sort-top-k --pair-top-k --set-size"
).split()


def _rerank_parser():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices["rerank"]


def test_every_declared_option_has_its_flag_and_todays_names_stay():
    flags = {f for a in _rerank_parser()._actions for f in a.option_strings}
    assert set(TODAYS_FLAGS) <= flags
    for cls in [BackendOptions, *(c.Options for c in METHODS.values())]:
        for name, (spec, _) in cls.specs().items():
            assert spec.cli_flag(name) is None or spec.cli_flag(name) in flags
    assert "--head" not in flags and "--head-weights" not in flags  # set by a trained folder, not by hand


def test_a_shared_flag_says_what_it_means_for_each_method():
    actions = {a.dest: a for a in _rerank_parser()._actions}
    assert actions["aggregation"].choices == ["allpairs", "heapsort", "bubblesort"]
    assert "pairwise:" in actions["aggregation"].help and "setwise:" in actions["aggregation"].help
    assert "(default 512)" in actions["max_length"].help and "(default 4096)" in actions["max_length"].help
    assert actions["max_length"].default is None  # unset: the method's own default


def test_a_flag_value_is_checked_by_its_spec(tmp_path, tiny_model_dir, capsys):
    from conftest import TINY

    base = ["rerank", "--data", str(TINY), "--run", str(TINY / "run.trec"), "--model", str(tiny_model_dir)]
    out = str(tmp_path / "o.trec")
    with pytest.raises(SystemExit) as exit_info:  # the flag's range is checked when it is parsed
        main([*base, "--method", "setwise", "--set-size", "30", "--out", out])
    assert exit_info.value.code == 2
    assert "argument --set-size: must be 2 to 26, got 30" in capsys.readouterr().err
    assert main([*base, "--method", "pairwise", "--sort-top-k", "3", "--out", out]) == 2
    assert "sort_top_k applies to aggregation='heapsort' or 'bubblesort' only" in capsys.readouterr().err


def test_the_speed_flags_parse_into_backend_options():
    from llmrerank.cli.ranker_args import ranker_options_from_args

    parser = _rerank_parser()
    given = ["--data", "d", "--run", "r", "--out", "o"]
    args = parser.parse_args([*given, "--reuse-prefix", "off", "--batch-tokens", "4096", "--quantize", "int8"])
    backend, _ = ranker_options_from_args(args)
    assert (backend["reuse_prefix"], backend["batch_tokens"], backend["quantize"]) == (False, 4096, "int8")
    assert parser.parse_args([*given, "--reuse-prefix", "TRUE"]).reuse_prefix is True
    with pytest.raises(SystemExit):
        parser.parse_args([*given, "--reuse-prefix", "maybe"])


def test_a_ranker_takes_an_options_object_or_keywords_not_both(tiny):
    from llmrerank.rankers import ListwiseRanker, PointwiseRanker

    ranker = ListwiseRanker(tiny, ListwiseOptions(window_size=4, step=2, decoding="first"))
    assert ranker.options.identifiers == "letters" and ranker.labels == ["A", "B", "C", "D"]
    with pytest.raises(TypeError, match="an options object or keyword options, not both"):
        PointwiseRanker(tiny, PointwiseOptions(), tokens="true_false")
    with pytest.raises(TypeError, match="takes PointwiseOptions, got ListwiseOptions"):
        PointwiseRanker(tiny, ListwiseOptions())


def test_the_dtype_default_is_the_methods_own():
    from llmrerank.options import BackendOptions
    from llmrerank.registry import METHODS, backend_options_for

    # likelihood's bfloat16 ranking passed the agreement rule on DL19; the others stay float32
    assert {m: backend_options_for(m, {}).dtype for m in METHODS} == {
        "likelihood": "auto", "listwise": "float32", "pairwise": "float32", "pointwise": "float32",
        "setwise": "float32",
    }
    assert backend_options_for("likelihood", {"dtype": "float32", "batch_size": 4}) == BackendOptions(
        dtype="float32", batch_size=4
    )
    assert BackendOptions().dtype is None  # the table's own default: "the method's"
    with pytest.raises(TypeError, match=r"unknown option\(s\) for method 'backend': dtyp;"):
        backend_options_for("likelihood", {"dtyp": "float32"})
    with pytest.raises(ValueError, match="unknown method"):
        backend_options_for("nope", {})
