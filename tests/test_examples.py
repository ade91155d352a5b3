"""The example training configs parse into valid configurations."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import needs
from llmrerank.train.config import TrainConfig
from llmrerank.train.losses import LOSSES

EXAMPLES = sorted((Path(__file__).parents[1] / "examples").glob("*.*"))


def test_there_are_examples():
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_config_is_valid(path):
    if path.suffix in (".yaml", ".yml"):
        needs("yaml", "YAML configs")
    config = TrainConfig.load(path)
    assert config.loss in LOSSES
    # examples read the shared benchmark data, or a folder a command in their comments writes from it
    assert config.data.startswith("../shared/data/") or config.data.startswith("runs/")
    if config.data.startswith("runs/"):
        assert f"--out {config.data}" in path.read_text(encoding="utf-8")


LEGACY = Path(__file__).parent / "fixtures" / "legacy-configs"


@pytest.mark.parametrize("path", sorted(p for p in LEGACY.iterdir() if p.suffix != ".md"), ids=lambda p: p.name)
def test_an_example_as_written_before_the_options_table_reads_the_same(path):
    """The examples as they were written before ``options`` (its keys at the top level) still load, equal."""
    if path.suffix in (".yaml", ".yml"):
        needs("yaml", "YAML configs")
    assert TrainConfig.load(path) == TrainConfig.load(Path(__file__).parents[1] / "examples" / path.name)
