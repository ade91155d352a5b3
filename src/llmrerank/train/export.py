"""The trained folder: the weights (the adapter under LoRA), a dense head if any, and ``llmrerank.json`` with
the method and options that ``Reranker(method, model=folder)`` needs to rebuild the trained ranker exactly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..models import TRAINED_CONFIG
from .config import TrainConfig


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
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    backend.save_weights(folder)  # the adapter only under LoRA
    options: dict[str, Any] = {"max_length": c.max_length, "template": ranker.template.to_dict()}
    if c.method == "pointwise":
        options["head"] = c.head
        if c.head == "tokens":
            options.update(tokens=list(ranker.words), normalisation=c.normalisation)
        else:
            ranker.dense.save(folder / "head.safetensors")
    else:
        options["reduction"] = c.reduction
    base = c.model
    if Path(base).exists():
        base = str(Path(base).resolve())
    meta = {
        "format": 1,
        "method": c.method,
        "options": options,
        "base_model": base,
        "weights": "lora" if c.lora else "full",
        "trained_with": {"loss": c.loss, "steps": steps, "seed": c.seed},
    }
    if run_steps is not None and run_steps != steps:
        meta["trained_with"].update(run_steps=run_steps, selected_by="best dev nDCG@10")
    (folder / TRAINED_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
    return folder
