"""The training configuration: one dataclass, read from TOML, YAML or JSON, unknown keys refused.

The scoring function being trained is named by ``method`` and ``options``, the same options table that
``Reranker(method, **options)`` takes and the trained folder writes back. Configs written before the table
named six of its options at the top level (``head``, ``tokens``, ``normalisation``, ``reduction``,
``template``, ``max_length``); those keys are still read, into ``options``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


# What a trained ranker uses unless its config says otherwise: s = z_yes - z_no is what the losses see and what
# is served; a shorter prompt budget than inference's 512, for training's speed.
TRAIN_DEFAULTS: dict[str, Any] = {"normalisation": "logit", "max_length": 256}
# The options a config could name at the top level before the options table, with the defaults they had then.
LEGACY_OPTIONS: dict[str, Any] = {
    "head": "tokens",
    "tokens": "yes_no",
    "normalisation": "logit",
    "reduction": "mean",
    "template": None,
    "max_length": 256,
}


def training_options(
    method: str, options: Mapping[str, Any], legacy: Mapping[str, Any] | None = None, resolve: bool = True
) -> dict[str, Any]:
    """The options table a training run uses: ``options`` with the top-level ``legacy`` spellings folded in
    (one the method has no use for is dropped when it holds its old default, else refused), then (``resolve``)
    :data:`TRAIN_DEFAULTS` where they apply, validated by the method's options class and returned complete."""
    from ..registry import options_class

    cls = options_class(method)
    if not isinstance(options, Mapping):
        raise ValueError(f"config: options must be a table of option names to values, got {options!r}")
    table = dict(options)
    specs = cls.specs()
    for key, value in (legacy or {}).items():
        if key in table:
            raise ValueError(f"config: {key} is given both at the top level and in options; keep the one in options")
        if key in specs:
            table[key] = value
        elif value != LEGACY_OPTIONS[key]:
            raise ValueError(f"config: {key} does not apply to method {method!r}")
    for key in legacy or {}:  # old configs named every key: one its head does not read held its old default
        when = specs[key][0].when if key in table else None
        if when and table.get(when[0], specs[when[0]][1]) not in when[1]:
            if table[key] != LEGACY_OPTIONS[key]:
                raise ValueError(f"config: {key} does not apply with {when[0]}={table.get(when[0])!r}")
            del table[key]
    if not resolve:
        return table
    probe = cls.build(table)
    for key, value in TRAIN_DEFAULTS.items():
        if key not in table and key in cls.specs() and probe.applies(key):
            table[key] = value
    return cls.build(table).to_dict()


@dataclass
class TrainConfig:
    """Everything a fine-tuning run needs. Field names are the config file's keys."""

    # model and the scoring function being trained (the same one inference calls)
    model: str = "smollm2-135m"
    method: str = "pointwise"  # pointwise | likelihood
    # the ranker's options table (e.g. pointwise: head = tokens | dense, tokens, normalisation; likelihood:
    # reduction; both: template, max_length). Unset options take TRAIN_DEFAULTS where they apply, then the
    # method's defaults; after loading, the table holds every option that applies.
    options: dict[str, Any] = field(default_factory=dict)
    dtype: str = "float32"
    threads: int | None = None

    # data: a BEIR folder, its training split and a first-stage run for hard negatives
    data: str = ""
    split: str = "train"
    run: str | None = None  # default: the one .trec file in `data`
    group_size: int = 8
    top_k: int = 100
    rel: int | None = None
    unjudged: bool = False
    max_positives: int | None = None
    teacher_run: str | None = None
    teacher_mode: str = "scores"

    # evaluation during training (nDCG@10 on the dev split's reranked top `dev_top_k`)
    dev_split: str | None = None
    dev_run: str | None = None
    dev_top_k: int = 20
    eval_every: int = 0  # optimiser steps; 0 = only at the end
    # the trained folder holds the weights of the best dev evaluation (nDCG@10; the earliest of equals) instead
    # of the last step's, as transformers' load_best_model_at_end
    keep_best: bool = False

    # loss
    loss: str = "grouped_ce"
    loss_options: dict[str, Any] = field(default_factory=dict)

    # optimisation
    lora: bool = True  # False = full fine-tuning
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: str | list[str] = "all-linear"
    learning_rate: float = 2e-4
    head_learning_rate: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    epochs: int = 1
    max_steps: int | None = None  # overrides epochs when set
    groups_per_batch: int = 2
    grad_accum: int = 4
    max_grad_norm: float | None = 1.0
    gradient_checkpointing: bool = False
    # matmuls in bfloat16, weights and optimiser state in float32: true, false, or "auto" (on where the device
    # computes bfloat16 natively: a CUDA GPU that supports it, a CPU with AVX512-BF16 or AMX)
    bf16_autocast: bool | str = False
    seed: int = 0

    # output
    output_dir: str = "runs/train"
    save_every: int = 50  # optimiser steps between checkpoints
    keep_checkpoints: int = 2

    def __post_init__(self) -> None:
        positive = ("group_size", "top_k", "dev_top_k", "epochs", "groups_per_batch", "grad_accum", "lora_r")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"config: {name} must be at least 1, got {getattr(self, name)}")
        if self.group_size < 2:
            raise ValueError("config: group_size must be at least 2 (a positive and a negative)")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"config: max_steps must be at least 1, got {self.max_steps}")
        if self.save_every < 1 or self.keep_checkpoints < 1:
            raise ValueError("config: save_every and keep_checkpoints must be at least 1")
        if self.learning_rate <= 0 or self.head_learning_rate <= 0:
            raise ValueError("config: learning rates must be positive")
        if self.bf16_autocast not in (True, False, "auto"):
            raise ValueError(f'config: bf16_autocast must be true, false or "auto", got {self.bf16_autocast!r}')
        if self.method not in ("pointwise", "likelihood"):
            raise ValueError(f"config: method must be 'pointwise' or 'likelihood' to train, got {self.method!r}")
        self.options = training_options(self.method, self.options)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """A config from its keys; the top-level option keys of older configs are read into ``options``."""
        known = {f.name for f in fields(cls)} | set(LEGACY_OPTIONS)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config key(s): {', '.join(unknown)}")
        data = dict(data)
        legacy = {k: data.pop(k) for k in LEGACY_OPTIONS if k in data}
        if legacy:
            method = data.get("method", cls.method)
            data["options"] = training_options(method, data.get("options", {}), legacy, resolve=False)
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Read a ``.toml``, ``.yaml``/``.yml`` or ``.json`` file; ``overrides`` (not None) win."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {p}")
        text = p.read_text(encoding="utf-8")
        try:
            if p.suffix == ".toml":
                data = tomllib.loads(text)
            elif p.suffix in (".yaml", ".yml"):
                from ..extras import require

                yaml = require("yaml", "YAML configs")
                try:
                    data = yaml.safe_load(text) or {}
                except yaml.YAMLError as e:
                    raise ValueError(f"{p}: cannot parse: {e}") from e
            elif p.suffix == ".json":
                data = json.loads(text)
            else:
                raise ValueError(f"{p}: a config is a .toml, .yaml or .json file")
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{p}: cannot parse: {e}") from e
        if not isinstance(data, dict):
            raise ValueError(f"{p}: the config must be a mapping of keys to values")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data)
