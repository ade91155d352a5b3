"""Every text reader of the package reads through data.read_lines/read_text: a byte-order mark changes nothing,
bytes that are not UTF-8 are an error naming the file and the line; damaged checkpoint and model files are
errors that name the file and say what to do."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import needs
from llmrerank import trained
from llmrerank.data import DataFormatError, load_corpus, load_qrels, load_queries, load_run, read_jsonl
from llmrerank.models import ModelLoadError, load_causal_lm
from llmrerank.prompts.base import load_template
from llmrerank.rankers.pointwise import DenseHead
from llmrerank.registry import Reranker
from llmrerank.train import checkpoint
from llmrerank.train.config import TrainConfig

BOM = b"\xef\xbb\xbf"
RECORD = {"format": 1, "method": "pointwise", "options": {"max_length": 64}, "base_model": "m", "weights": "full"}

# reader, file name, its text (at least four lines; the third is replaced by a bad byte below)
READERS = {
    "run": (load_run, "run.trec", "q1 Q0 d1 1 2.5 t\nq1 Q0 d2 2 1.5 t\nq2 Q0 d1 1 0.5 t\nq2 Q0 d3 2 0.1 t\n"),
    "qrels-beir": (load_qrels, "test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t0\nq2\td1\t2\n"),
    "qrels-trec": (load_qrels, "qrels.txt", "q1 0 d1 1\nq1 0 d2 0\nq2 0 d1 2\nq2 0 d3 0\n"),
    "queries": (
        load_queries,
        "queries.jsonl",
        '{"_id": "q1", "text": "bees"}\n{"_id": "q2", "text": "bread"}\n{"_id": "q3", "text": "cats"}\n'
        '{"_id": "q4", "text": "wax"}\n',
    ),
    "corpus": (
        load_corpus,
        "corpus.jsonl",
        '{"_id": "d1", "title": "Bees", "text": "honey"}\n{"_id": "d2", "text": "rise"}\n'
        '{"_id": "d3", "text": "mat"}\n{"_id": "d4", "text": "combs"}\n',
    ),
    "jsonl": (lambda p: list(read_jsonl(p)), "rows.jsonl", '{"a": 1}\n{"b": 2}\n{"c": 3}\n{"d": 4}\n'),
    "prompt-toml": (
        load_template,
        "mine.toml",
        'system = "Be brief."\nassistant = "A:"\nuser = "{query} {document}"\n',
    ),
    "prompt-json": (
        load_template,
        "mine.json",
        '{\n"system": "Be brief.",\n"user": "{query} {document}",\n"chat": false\n}\n',
    ),
    "trained": (lambda p: trained.read(p.parent), "llmrerank.json", json.dumps(RECORD, indent=1) + "\n"),
}


def _write(folder: Path, name: str, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("kind", READERS)
def test_a_byte_order_mark_changes_nothing(tmp_path, kind):
    read, name, text = READERS[kind]
    plain = read(_write(tmp_path / "plain", name, text.encode()))
    marked = read(_write(tmp_path / "bom", name, BOM + text.encode()))
    if kind == "trained":  # the record knows its folder
        plain, marked = plain.__dict__ | {"path": None}, marked.__dict__ | {"path": None}
    assert marked == plain


def test_a_bom_does_not_reach_the_first_id(tmp_path):
    run = load_run(_write(tmp_path, "run.trec", BOM + READERS["run"][2].encode()))
    assert list(run) == ["q1", "q2"] and run["q1"] == [("d1", 2.5), ("d2", 1.5)]
    qrels = load_qrels(_write(tmp_path, "test.tsv", BOM + READERS["qrels-beir"][2].encode()))
    assert qrels == {"q1": {"d1": 1, "d2": 0}, "q2": {"d1": 2}}  # the header is still seen as one
    assert list(load_qrels(_write(tmp_path, "qrels.txt", BOM + READERS["qrels-trec"][2].encode()))) == ["q1", "q2"]
    assert list(load_queries(_write(tmp_path, "queries.jsonl", BOM + READERS["queries"][2].encode())))[0] == "q1"


@pytest.mark.parametrize("kind", READERS)
def test_a_bad_byte_names_the_file_and_line(tmp_path, kind):
    read, name, text = READERS[kind]
    lines = text.encode().split(b"\n")
    lines[2] = lines[2][:3] + b"\xff" + lines[2][3:]
    path = _write(tmp_path, name, b"\n".join(lines))
    with pytest.raises(DataFormatError, match=re.escape(f"{path}, line 3: not UTF-8 text (byte 0xff at column 4)")):
        read(path)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.toml", 'system = "x"\nuser = \n', "line 2: cannot parse prompt template: Invalid value at column 8"),
        ("bad.json", '{\n"user": }', "line 2: cannot parse prompt template: Expecting value at column 9"),
    ],
)
def test_a_prompt_file_that_does_not_parse_names_the_line(tmp_path, name, text, message):
    path = _write(tmp_path, name, text.encode())
    with pytest.raises(DataFormatError, match=re.escape(f"{path}, {message}")):
        load_template(path)


def test_a_trained_record_that_does_not_parse_names_the_line(tmp_path):
    path = _write(tmp_path, "llmrerank.json", b'{\n"method": "pointwise",\n"options": }\n')
    with pytest.raises(DataFormatError, match=re.escape(f"{path}, line 3: not valid JSON (Expecting value at column")):
        trained.read(tmp_path)


# --- checkpoints ---------------------------------------------------------------------------------------------


def _checkpoint(out: Path, step: int = 2) -> Path:
    from safetensors.torch import save_file

    folder = out / "checkpoints" / f"step-{step:08d}"
    folder.mkdir(parents=True)
    (folder / "step.json").write_text(json.dumps({"step": step, "total_steps": 6}) + "\n")
    save_file({}, str(folder / checkpoint.WEIGHTS))
    return folder


# nothing trainable: the checkpoint's empty weights fit, so resume goes on to read state.pt
NOTHING_TRAINABLE = SimpleNamespace(trainable_parameters=lambda: [])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"step": ', r"step\.json, line 1: damaged file: not valid JSON"),
        ('{"total_steps": 6}', r'step\.json: damaged file: expected \{"step": <a positive integer>\}'),
        ("[2]", r'step\.json: damaged file: expected \{"step"'),
    ],
)
def test_a_damaged_step_record_names_the_file_and_what_to_do(tmp_path, text, message):
    folder = _checkpoint(tmp_path)
    (folder / "step.json").write_text(text)
    fix = f"remove {folder} to resume from the checkpoint before it, or start over with --no-resume"
    with pytest.raises(ValueError, match=f"{re.escape(str(folder))}/{message}.*; {re.escape(fix)}$"):
        checkpoint.resume(tmp_path, NOTHING_TRAINABLE, None, None, None, 6)


def test_damaged_checkpoint_weights_and_state_name_the_file(tmp_path):
    folder = _checkpoint(tmp_path)
    (folder / "state.pt").write_bytes(b"garbage" * 10)
    with pytest.raises(ValueError, match=re.escape(f"{folder / 'state.pt'}: damaged file (UnpicklingError")):
        checkpoint.resume(tmp_path, NOTHING_TRAINABLE, None, None, None, 6)
    weights = folder / checkpoint.WEIGHTS
    weights.write_bytes(b"garbage" * 10)
    message = f"{weights}: the weights file is damaged (truncated or not a safetensors file"
    with pytest.raises(ValueError, match=re.escape(message)):
        checkpoint.resume(tmp_path, NOTHING_TRAINABLE, None, None, None, 6)


def test_a_damaged_saved_config_names_the_file(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    path = tmp_path / "config.json"
    fix = "use another output_dir, or start over with --no-resume"
    for text, message in [
        ('{"model": ', "line 1: damaged file: not valid JSON (Expecting value at column 11)"),
        ("[]", ": damaged file: expected a JSON object of config keys"),
        ('{"no_such_key": 1}', ": not a training config this version reads (unknown config key(s): no_such_key)"),
    ]:
        path.write_text(text)
        separator = ", " if message.startswith("line") else ""
        with pytest.raises(ValueError, match=re.escape(f"{path}{separator}{message}; {fix}")):
            checkpoint.check_same_config(tmp_path, TrainConfig())


def test_the_log_keeps_a_cut_last_line_out_and_refuses_a_damaged_one(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_bytes(BOM + b'{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.9}\n{"step": 3, "lo')
    checkpoint.truncate_log(log, 2)
    assert log.read_text() == '{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.9}\n'
    for text, line, message in [
        ('{"step": 1}\n{"step": 2\n{"step": 3}\n', 2, "not valid JSON (Expecting ',' delimiter at column 11)"),
        ('{"step": 1}\n{"loss": 2}\n', 2, 'not a log entry (a JSON object with an integer "step")'),
        ('{"step": 1}\n{"step": 2}\n{"step": 3, "x": "\xff"}\n', 3, "not UTF-8 text"),
    ]:
        log.write_bytes(text.encode("latin-1"))
        with pytest.raises(DataFormatError, match=re.escape(f"{log}, line {line}: {message}")):
            checkpoint.truncate_log(log, 5)
        with pytest.raises(DataFormatError, match=re.escape("the log is damaged: start over with --no-resume")):
            checkpoint.truncate_log(log, 5)


def test_a_run_killed_before_its_first_checkpoint_starts_its_log_again(tmp_path):
    (tmp_path / "log.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    assert checkpoint.resume(tmp_path, None, None, None, None, 6) == 0
    assert (tmp_path / "log.jsonl").read_text() == ""


def test_a_damaged_best_record_names_the_file(tmp_path):
    best = tmp_path / "best"
    best.mkdir()
    keep = checkpoint.KeepBest(tmp_path, on=True)
    fix = f"remove {best} to resume without the best evaluation so far, or start over with --no-resume"
    for text, message in [
        ('{"step": 2, ', "best.json, line 1: damaged file: not valid JSON"),
        ('{"step": 2}', 'best.json: damaged file: expected {"step": <an integer>, "nDCG@10": <a number>}'),
    ]:
        (best / "best.json").write_text(text)
        with pytest.raises(ValueError, match=re.escape(f"{best}/{message}") + ".*" + re.escape(fix)):
            keep.restore(4)
    (best / "best.json").write_bytes(BOM + b'{"step": 2, "nDCG@10": 0.5}\n')
    keep.restore(4)
    assert keep.record == {"step": 2, "nDCG@10": 0.5}


# --- model files ---------------------------------------------------------------------------------------------


@pytest.fixture
def model_dir(tiny_model_dir, tmp_path):
    """A copy of the tiny saved model, free to damage."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


def _load(folder: Path) -> None:
    load_causal_lm(str(folder), torch.float32, torch.device("cpu"))


def _cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


EXPECTED = (
    "model.safetensors, model.safetensors.index.json, pytorch_model.bin, pytorch_model.bin.index.json, or a .gguf"
)


def test_a_folder_without_weights_lists_what_was_expected(model_dir):
    (model_dir / "model.safetensors").unlink()
    message = f"{model_dir}: no weights file: expected {EXPECTED} file; re-export or re-download it, or retrain"
    with pytest.raises(ModelLoadError, match=f"^{re.escape(message)}$"):
        _load(model_dir)
    with pytest.raises(ModelLoadError, match=f"^{re.escape(message)}$"):
        Reranker("pointwise", model=str(model_dir))


def test_a_truncated_weights_file_is_named(model_dir):
    _cut(model_dir / "model.safetensors")
    message = (
        f"{model_dir / 'model.safetensors'}: the weights file is damaged (truncated or not a safetensors file: "
        "Error while deserializing header: incomplete metadata, file not fully covered); "
        "re-export or re-download it, or retrain"
    )
    with pytest.raises(ModelLoadError, match=f"^{re.escape(message)}$"):
        _load(model_dir)
    with pytest.raises(ModelLoadError, match=f"^{re.escape(message)}$"):
        Reranker("pointwise", model=str(model_dir))


def test_a_garbage_pytorch_bin_is_named(model_dir):
    (model_dir / "model.safetensors").unlink()
    (model_dir / "pytorch_model.bin").write_bytes(b"garbage" * 100)
    message = f"{model_dir / 'pytorch_model.bin'}: the weights file is damaged (truncated or not a PyTorch checkpoint)"
    with pytest.raises(ModelLoadError, match=re.escape(message)):
        _load(model_dir)
    # one that looks like a pickle gets past the cheap check: torch.load's refusal is converted
    (model_dir / "pytorch_model.bin").write_bytes(b"\x80\x02garbage")
    with pytest.raises(ModelLoadError, match=re.escape(f"{model_dir}: the model could not be loaded (UnpicklingError")):
        _load(model_dir)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", ", line 1: the model config is damaged (not valid JSON: Expecting property name enclosed"),
        ("[1]", ": the model config is damaged (expected a JSON object, got list)"),
        ("{}", ": the model config names no model_type (not a transformers config)"),
    ],
)
def test_a_damaged_config_is_named(model_dir, text, message):
    (model_dir / "config.json").write_text(text)
    with pytest.raises(ModelLoadError, match=re.escape(f"{model_dir / 'config.json'}{message}")):
        Reranker("pointwise", model=str(model_dir))


def test_a_sharded_index_listing_a_missing_shard_is_named(model_dir):
    (model_dir / "model.safetensors").rename(model_dir / "model-00001-of-00002.safetensors")
    shards = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (model_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": shards}))
    message = f"{model_dir / shards['b']}: the weights file is missing (model.safetensors.index.json lists it)"
    with pytest.raises(ModelLoadError, match=re.escape(message)):
        _load(model_dir)


def test_a_damaged_tokenizer_is_converted(model_dir):
    _cut(model_dir / "tokenizer.json")
    with pytest.raises(
        ModelLoadError, match=re.escape(f"{model_dir}: the tokenizer could not be loaded (JSONDecodeError")
    ):
        _load(model_dir)


def _lora_folder(tmp_path: Path, base: Path) -> Path:
    folder = tmp_path / "trained"
    folder.mkdir()
    record = {**RECORD, "base_model": str(base), "weights": "lora"}
    (folder / "llmrerank.json").write_text(json.dumps(record))
    return folder


def test_a_trained_folder_with_missing_or_damaged_adapters(tiny_model_dir, tmp_path):
    from safetensors.torch import save_file

    folder = _lora_folder(tmp_path, tiny_model_dir)
    fix = "retrain, or copy the whole folder `llmrerank train` wrote again"
    missing = f"{folder}: the LoRA adapters are missing (no adapter_config.json beside llmrerank.json); {fix}"
    with pytest.raises(ModelLoadError, match=f"^{re.escape(missing)}$"):
        Reranker("pointwise", model=str(folder))
    (folder / "adapter_config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match=re.escape("adapter_config.json: the adapter config names no peft_type")):
        _load(folder)
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    no_weights = (
        f"{folder}: the LoRA adapter weights are missing (expected adapter_model.safetensors or adapter_model.bin)"
    )
    with pytest.raises(ModelLoadError, match=re.escape(no_weights)):
        _load(folder)
    save_file({"x": torch.zeros(64)}, str(folder / "adapter_model.safetensors"))
    _cut(folder / "adapter_model.safetensors")
    damaged = (
        f"{folder / 'adapter_model.safetensors'}: the adapter weights file is damaged (truncated or not a safetensors"
    )
    with pytest.raises(ModelLoadError, match=re.escape(damaged)):
        _load(folder)


def test_a_truncated_dense_head_is_named(tiny_model_dir, tmp_path):
    path = tmp_path / "head.safetensors"
    DenseHead(32).save(path)
    _cut(path)
    message = f"{path}: the dense head's weights file is damaged (truncated or not a safetensors file: "
    with pytest.raises(ModelLoadError, match=re.escape(message)):
        DenseHead(32).load(path)
    with pytest.raises(ModelLoadError, match=re.escape(message)):
        Reranker("pointwise", model=str(tiny_model_dir), head="dense", head_weights=str(path))


def test_a_file_that_is_not_gguf_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMRERANK_CACHE", str(tmp_path / "cache"))
    path = _write(tmp_path / "gguf", "model.gguf", b"garbage" * 10)
    message = f"{path}: not a GGUF file (it does not start with the GGUF magic bytes); re-download it"
    with pytest.raises(ModelLoadError, match=f"^{re.escape(message)}$"):
        _load(path.parent)


def test_adapters_that_do_not_fit_the_base_model_are_refused(tiny_model_dir, tmp_path):
    """peft only warns when the file lacks adapter weights the model expects; the model would then run with those
    adapters at their initial values. Refused, naming the file."""
    needs("peft", "LoRA adapters")
    import peft
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    folder = _lora_folder(tmp_path, tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    adapted = peft.get_peft_model(
        base, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    adapted.save_pretrained(folder)
    Reranker("pointwise", model=str(folder))  # whole: loads
    weights = folder / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    dropped = sorted(tensors)[0]
    save_file({k: v for k, v in tensors.items() if k != dropped}, str(weights))
    message = f"{weights}: the LoRA adapters do not fit the base model {tiny_model_dir}: 1 adapter weight(s)"
    with pytest.raises(ModelLoadError, match=re.escape(message)):
        Reranker("pointwise", model=str(folder))
