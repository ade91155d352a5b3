"""The trained-folder format, read and written here only: what ``llmrerank train`` writes, and what
``Reranker(method, model=folder)`` (or ``--model folder``) restores exactly.

A trained folder holds the weights (LoRA adapters over ``base_model``, or a whole model and its tokenizer),
``llmrerank.json`` and, for a dense head, ``head.safetensors``. ``llmrerank.json``::

    {"format": 1, "method": "pointwise", "options": {...the ranker's options table...},
     "base_model": "smollm2-135m", "weights": "lora" | "full", "trained_with": {"loss": ..., "steps": ...}}

Folders written before the options table (format 1 too, with fewer options) load the same way: options they
do not name take today's defaults.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data import DataFormatError, read_text
from .models import ALIASES, PRESETS

# Trained folders shipped inside the package (``llmrerank/presets/NAME/``), loaded by name like the other presets:
# an adapter over a base preset, its record naming the method, so ``Reranker(model=NAME)`` needs nothing else.
SHIPPED_DIR = Path(__file__).parent / "presets"
SHIPPED: dict[str, str] = {
    "smollm2-135m-distilled": "smollm2-135m distilled from the 0.5B's query likelihood on synthetic DL21 queries",
}

RECORD = "llmrerank.json"
HEAD = "head.safetensors"
FORMAT = 1
WEIGHTS = ("lora", "full")


@dataclass(frozen=True)
class TrainedFolder:
    """The record of a trained folder."""

    path: Path
    method: str
    options: dict[str, Any]
    base_model: str
    weights: str
    trained_with: dict[str, Any] = field(default_factory=dict)

    def ranker_options(self) -> dict[str, Any]:
        """The options that rebuild the trained ranker, the dense head's weights file included."""
        options = dict(self.options)
        if options.get("head") == "dense":
            options["head_weights"] = str(self.path / HEAD)
        return options


def locate(model: str | Path) -> Path:
    """Where model ``model`` lies: a shipped trained preset's folder inside the package, else the path given. A
    preset's name that is also a path here is refused: which one was meant cannot be told."""
    if isinstance(model, str) and model in SHIPPED:
        if Path(model).exists():
            raise ValueError(
                f"{model!r} is both a shipped preset and a path in {Path.cwd()}: write ./{model} for the folder, "
                "or run elsewhere for the preset"
            )
        return SHIPPED_DIR / model
    return Path(model).expanduser()


def read(folder: str | Path) -> TrainedFolder | None:
    """The record of a folder written by ``llmrerank train``, or None for any other model (a preset name, a plain
    Hugging Face folder, a GGUF file). A folder whose record is damaged is a ValueError naming the file (a
    :class:`~llmrerank.data.DataFormatError`, with the line, where it does not parse)."""
    root = locate(folder)
    path = root / RECORD
    if not path.is_file():
        if isinstance(folder, str) and folder in SHIPPED:  # a broken install, not "any other model"
            raise FileNotFoundError(f"preset {folder!r}: {path} is missing; reinstall llmrerank")
        return None
    try:
        meta = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataFormatError(path, e.lineno, f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object")
    missing = [k for k in ("method", "options", "base_model", "weights") if k not in meta]
    if missing:
        raise ValueError(f"{path}: missing field(s) {', '.join(missing)}")
    if meta["weights"] not in WEIGHTS:
        raise ValueError(f"{path}: weights must be one of {', '.join(WEIGHTS)}, got {meta['weights']!r}")
    if not isinstance(meta["options"], dict):
        raise ValueError(f"{path}: options must be a table of option names to values")
    options, trained_with = dict(meta["options"]), dict(meta.get("trained_with", {}))
    return TrainedFolder(root, meta["method"], options, str(meta["base_model"]), meta["weights"], trained_with)


def write(
    folder: str | Path,
    method: str,
    options: Mapping[str, Any],
    base_model: str,
    weights: str,
    trained_with: Mapping[str, Any],
    head: Any = None,
) -> Path:
    """Write ``llmrerank.json`` (and the dense ``head``'s weights, if any) into ``folder``; the model weights are
    the backend's to save. ``options`` is the ranker's options table (``ranker.options.to_dict()``)."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    table = {k: v for k, v in options.items() if k != "head_weights"}  # the head's file is in the folder
    if head is not None:
        head.save(root / HEAD)
    # a preset's name stays a name, as the loader reads it first; any other existing path is made absolute
    if base_model not in {**ALIASES, **PRESETS, **SHIPPED} and Path(base_model).exists():
        base_model = str(Path(base_model).resolve())
    meta = {
        "format": FORMAT,
        "method": method,
        "options": table,
        "base_model": base_model,
        "weights": weights,
        "trained_with": dict(trained_with),
    }
    (root / RECORD).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return root
