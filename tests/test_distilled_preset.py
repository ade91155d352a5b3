"""The trained preset shipped inside the package (smollm2-135m-distilled, issue 17): a small adapter whose
record names its method, loaded by name like the other presets, in Python and on the command line."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from conftest import needs, require_preset
from llmrerank import Reranker, trained
from llmrerank.cli import main
from llmrerank.data import sample_path
from llmrerank.models import ModelLoadError, check_adapter_folder, preset_names

PRESET = "smollm2-135m-distilled"
METHOD = "likelihood"  # what the distillation benchmark chose by DL21 dev nDCG@10 (docs/benchmarks.md)
QUERY = "how long do fleas live"
DOCS = [
    "The flea life cycle takes two weeks to eight months.",
    "Concrete floors cost 2 to 6 dollars per square foot.",
    "Adult fleas live two to three months on a host.",
]
# the shipped adapter's float32 scores of DOCS, recorded when it was shipped: a changed file, a changed prompt or a
# changed score function moves them
SCORES = [-3.573625, -7.193002, -3.908406]


def test_the_shipped_folder_is_a_small_adapter_over_the_135m_preset():
    folder = trained.read(PRESET)
    assert folder.path == trained.SHIPPED_DIR / PRESET and PRESET in preset_names()
    assert (folder.method, folder.base_model, folder.weights) == (METHOD, "smollm2-135m", "lora")
    check_adapter_folder(folder.path)  # the adapter config parses and the weights file is whole
    assert sum(p.stat().st_size for p in folder.path.iterdir()) < 10 * 2**20
    assert "non-commercial research" in (folder.path / "README.md").read_text(encoding="utf-8")
    assert trained.read(folder.path) == folder  # the same folder by its path
    assert trained.read("smollm2-135m") is None  # a base preset is no trained folder


@pytest.fixture(scope="module")
def distilled():
    needs("peft", "loading the preset's LoRA adapter")
    require_preset("smollm2-135m")
    return Reranker(model=PRESET, dtype="float32", threads=min(2, os.cpu_count() or 1))


@pytest.mark.model
def test_loads_by_name_with_its_own_method_and_scores(distilled):
    assert distilled.method == METHOD
    assert distilled.options.to_dict() == {**distilled.options.to_dict(), **trained.read(PRESET).options}
    scores = distilled.score(QUERY, DOCS)
    assert scores == pytest.approx(SCORES, abs=1e-4)
    base = Reranker(METHOD, model="smollm2-135m", dtype="float32", **trained.read(PRESET).options)
    assert max(abs(a - b) for a, b in zip(base.score(QUERY, DOCS), scores)) > 1e-3  # the adapter is applied


@pytest.mark.model
def test_the_command_line_needs_no_method(distilled, tmp_path, capsys):
    out = tmp_path / "distilled.trec"
    args = ["rerank", "--data", str(sample_path()), "--top-k", "3", "--model", PRESET, "--dtype", "float32"]
    assert main([*args, "--out", str(out), "--quiet"]) == 0
    sidecar = json.loads(out.with_name(out.name + ".json").read_text())
    assert sidecar["ranker"]["method"] == METHOD and sidecar["ranker"]["model"] == PRESET


def test_a_folder_named_like_the_preset_is_refused_not_guessed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / PRESET).mkdir()  # say, a training run's output_dir
    with pytest.raises(ValueError, match=f"both a shipped preset and a path .*write ./{PRESET}"):
        trained.read(PRESET)
    assert trained.read(f"./{PRESET}") is None  # the folder, by a path that is no preset's name


@pytest.mark.parametrize("lose", ["adapter_model.safetensors", "adapter_config.json"])
def test_a_damaged_install_says_reinstall_not_retrain(tmp_path, monkeypatch, lose):
    shipped = tmp_path / "presets"
    shutil.copytree(trained.SHIPPED_DIR, shipped)
    (shipped / PRESET / lose).unlink()
    monkeypatch.setattr(trained, "SHIPPED_DIR", shipped)  # the package's presets folder, with a file lost
    with pytest.raises(ModelLoadError, match=r"missing .*; reinstall llmrerank \(pip install --force-reinstall"):
        Reranker(model=PRESET)
    # the same folder by its path is a user's trained folder: theirs to retrain or copy again
    with pytest.raises(ModelLoadError, match="missing .*; retrain, or copy the whole folder"):
        Reranker(model=str(shipped / PRESET))
