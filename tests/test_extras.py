"""A missing optional dependency raises one error that names the extra to install."""

from __future__ import annotations

import sys

import pytest

from llmrerank.extras import MissingExtraError, require


def test_a_present_module_is_returned():
    assert require("json", "reading JSON").dumps([1]) == "[1]"


@pytest.mark.parametrize(
    ("module", "message"),
    [
        ("peft", r'LoRA training needs peft: pip install "llmrerank\[train\]"'),
        ("yaml", r'LoRA training needs PyYAML: pip install "llmrerank\[train\]"'),
        ("matplotlib.figure", r'LoRA training needs matplotlib: pip install "llmrerank\[plot\]"'),
    ],
)
def test_a_missing_extra_is_named(monkeypatch, module, message):
    top = module.split(".")[0]
    if module != top:
        monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.setitem(sys.modules, top, None)  # makes the import fail, as if not installed
    with pytest.raises(MissingExtraError, match=message):
        require(module, "LoRA training")


def test_a_module_of_no_extra_names_its_own_install():
    with pytest.raises(ImportError, match="pip install llmrerank_no_such_module"):
        require("llmrerank_no_such_module", "this feature")
