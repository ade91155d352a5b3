"""The trained folder of a run: the backend writes the weights (the adapter under LoRA), and
:mod:`llmrerank.trained` the record (the method and the ranker's options table, which
``Reranker(method, model=folder)`` needs to rebuild the trained ranker exactly) and a dense head's weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import trained
from .config import TrainConfig
from .setup import head_of


def save_model(
    folder: str | Path,
    config: TrainConfig,
    backend: Any,
    ranker: Any,
    steps: int,
    run_steps: int | None = None,
) -> Path:
    """Write a folder that ``Reranker(method, model=folder)`` restores exactly. ``steps``: the optimiser steps of
    the weights written; ``run_steps``: of the whole run, when the weights are an earlier step's (``keep_best``)."""
    c = config
    backend.save_weights(folder)  # the adapter only under LoRA
    trained_with: dict[str, Any] = {"loss": c.loss, "steps": steps, "seed": c.seed}
    if run_steps is not None and run_steps != steps:
        trained_with.update(run_steps=run_steps, selected_by="best dev nDCG@10")
    weights = "lora" if c.lora else "full"
    options = ranker.options.to_dict()
    if options.get("adapter") is not None:
        if weights == "full":  # the published adapter's LoRA is inside the weights written: merging it again is wrong
            options.pop("adapter")
        else:  # the trained LoRA adds to the base with the adapter merged in: the reload merges both (sums commute)
            options["adapter"] = str(Path(options["adapter"]).expanduser().resolve())
    root = trained.write(folder, c.method, options, c.model, weights, trained_with, head_of(ranker))
    name_base_model(root)
    return root


def name_base_model(folder: Path) -> None:
    """Name the base model in the adapter's config as ``llmrerank.json`` names it (a preset's name, or a
    folder's absolute path): peft writes the folder the base was loaded from, which for a preset is this
    machine's package cache, a path another machine does not have. Loading reads the record, not this field;
    it is for the people and tools that read the adapter's config."""
    path = folder / "adapter_config.json"
    if not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = trained.read(folder).base_model
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
