"""The trained folder of a run: the backend writes the weights (the adapter under LoRA), and
:mod:`llmrerank.trained` the record (the method and the ranker's options table, which
``Reranker(method, model=folder)`` needs to rebuild the trained ranker exactly) and a dense head's weights."""

from __future__ import annotations

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
    return trained.write(folder, c.method, ranker.options.to_dict(), c.model, weights, trained_with, head_of(ranker))
