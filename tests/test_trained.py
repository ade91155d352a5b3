"""The trained-folder record (llmrerank.json) and the training config's options table, including the shapes
written before the table: they read the same."""

from __future__ import annotations

import json

import pytest

from llmrerank import trained
from llmrerank.train.checkpoint import check_same_config
from llmrerank.train.config import LEGACY_OPTIONS, TRAIN_DEFAULTS, TrainConfig

# The record the trainer wrote before the options table (a dense pointwise run, as it was on disk).
OLD_RECORD = {
    "format": 1,
    "method": "pointwise",
    "options": {"max_length": 192, "template": {"name": "yes_no", "user": "Q: {query} D: {document}"}, "head": "dense"},
    "base_model": "smollm2-135m",
    "weights": "lora",
    "trained_with": {"loss": "listnet", "steps": 30, "seed": 0},
}


def test_an_old_record_reads_and_points_at_its_head(tmp_path):
    (tmp_path / "llmrerank.json").write_text(json.dumps(OLD_RECORD))
    folder = trained.read(tmp_path)
    assert (folder.method, folder.base_model, folder.weights) == ("pointwise", "smollm2-135m", "lora")
    assert folder.ranker_options() == {**OLD_RECORD["options"], "head_weights": str(tmp_path / "head.safetensors")}
    assert folder.trained_with["loss"] == "listnet"
    assert trained.read(tmp_path / "elsewhere") is None  # not a trained folder: nothing to restore


def test_write_then_read_gives_the_options_back(tmp_path):
    options = {"reduction": "sum", "template": {"name": "t"}, "max_length": 64}
    trained.write(tmp_path / "m", "likelihood", options, "smollm2-135m", "full", {"loss": "kl", "steps": 3})
    folder = trained.read(tmp_path / "m")
    assert folder.options == options and folder.ranker_options() == options and folder.weights == "full"
    with pytest.raises(ValueError, match="weights must be one of lora, full"):
        trained.write(tmp_path / "n", "likelihood", options, "x", "half", {})


def test_the_record_names_a_base_preset_by_name_even_beside_a_folder_so_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("smollm2-135m", "default", "plain"):
        (tmp_path / name).mkdir()
    for base, recorded in (
        ("smollm2-135m", "smollm2-135m"),
        ("default", "default"),
        ("plain", str(tmp_path / "plain")),
    ):
        trained.write(tmp_path / "out", "likelihood", {}, base, "lora", {})
        assert trained.read(tmp_path / "out").base_model == recorded  # as the loader resolves it: presets first


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"method": "pointwise", "options": {}}), "missing field.*base_model, weights"),
        (json.dumps({**OLD_RECORD, "weights": "half"}), "weights must be one of"),
        (json.dumps({**OLD_RECORD, "options": [1]}), "options must be a table"),
    ],
)
def test_a_damaged_record_names_the_file(tmp_path, text, message):
    (tmp_path / "llmrerank.json").write_text(text)
    with pytest.raises(ValueError, match=message):
        trained.read(tmp_path)


def test_old_top_level_option_keys_read_into_the_options_table():
    old = TrainConfig.from_dict(
        {"method": "pointwise", "head": "tokens", "normalisation": "yes_logit", "max_length": 96}
    )
    new = TrainConfig.from_dict({"method": "pointwise", "options": {"normalisation": "yes_logit", "max_length": 96}})
    assert old == new and old.options["normalisation"] == "yes_logit" and old.options["tokens"] == ["yes", "no"]
    # an old key the method has no use for is dropped when it holds the default it had then, else refused
    ql = TrainConfig.from_dict({"method": "likelihood", "normalisation": "logit", "head": "tokens"})
    assert "normalisation" not in ql.options and ql.options["reduction"] == "mean"
    with pytest.raises(ValueError, match="normalisation does not apply to method 'likelihood'"):
        TrainConfig.from_dict({"method": "likelihood", "normalisation": "yes_logit"})
    # a dense head reads no answer tokens: an old config naming them at their old defaults loads, others do not
    dense = TrainConfig.from_dict({"head": "dense", "tokens": "yes_no", "normalisation": "logit", "max_length": 96})
    assert dense.options == TrainConfig(options={"head": "dense", "max_length": 96}).options
    with pytest.raises(ValueError, match="normalisation does not apply with head='dense'"):
        TrainConfig.from_dict({"head": "dense", "normalisation": "yes_logit"})
    with pytest.raises(ValueError, match="max_length is given both at the top level and in options"):
        TrainConfig.from_dict({"max_length": 96, "options": {"max_length": 128}})


def test_training_defaults_apply_where_they_apply():
    assert TrainConfig().options["normalisation"] == TRAIN_DEFAULTS["normalisation"] == "logit"
    assert TrainConfig().options["max_length"] == TRAIN_DEFAULTS["max_length"]
    dense = TrainConfig(options={"head": "dense"}).options
    assert "normalisation" not in dense and dense["max_length"] == TRAIN_DEFAULTS["max_length"]
    assert TrainConfig(options={"max_length": 64}).options["max_length"] == 64
    with pytest.raises(ValueError, match="unknown reduction 'max'"):
        TrainConfig(method="likelihood", options={"reduction": "max"})
    with pytest.raises(TypeError, match="unknown option.*heads"):
        TrainConfig(options={"heads": "dense"})


@pytest.mark.parametrize("head", ["tokens", "dense"])
def test_a_run_started_before_the_options_table_resumes(tmp_path, head):
    config = TrainConfig.from_dict({"method": "pointwise", "head": head, "max_length": 96, "output_dir": str(tmp_path)})
    old = config.to_dict()
    options = old.pop("options")
    for newer in ("head_weights", "answer_ids", "family", "instruction", "adapter"):  # not options before the table
        options.pop(newer, None)
    old.update(options)  # the flat config.json such a run wrote: it named every key
    old = {**{k: v for k, v in LEGACY_OPTIONS.items() if k not in old}, **old}
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "config.json").write_text(json.dumps(old))
    check_same_config(tmp_path, config)  # the same settings: no complaint
    other = TrainConfig.from_dict({"head": head, "max_length": 128, "output_dir": str(tmp_path)})
    with pytest.raises(ValueError, match="other options"):
        check_same_config(tmp_path, other)
