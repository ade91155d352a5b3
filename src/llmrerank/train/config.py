"""The training configuration: one dataclass, read from TOML, YAML or JSON, unknown keys refused and every
key checked against :data:`CHECKS` (its type, range or choices) when the config is made.

The scoring function being trained is named by ``method`` and ``options``, the same options table that
``Reranker(method, **options)`` takes and the trained folder writes back. Configs written before the table
named six of its options at the top level (``head``, ``tokens``, ``normalisation``, ``reduction``,
``template``, ``max_length``); those keys are still read, into ``options``.
"""

from __future__ import annotations

import inspect
import json
import math
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..options import BackendOptions, Spec, violation

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


TARGETS = ("labels", "teacher")
DISTILL_LOSSES = ("kl", "margin_mse")  # losses whose targets are a teacher's scores, never graded labels
# losses that read any real-valued targets (an order, a distribution), so a teacher's scores or minus its ranks
# can stand for the labels; bce thresholds labels, grouped_ce needs column 0 on top, lambdaloss gains >= 0
TEACHER_LOSSES = ("ranknet", "listnet", "listmle", "poly1", *DISTILL_LOSSES)
# losses that read the positive's score alone: a group may be the positive by itself (group_size 1)
POSITIVE_ONLY_LOSSES = ("nll",)
# losses that maximise a score with nothing to compare it with, so only a bounded score (a log-probability) suits
LOG_PROBABILITY_LOSSES = {"nll": ("likelihood",)}

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
    :data:`TRAIN_DEFAULTS` where they apply and a model family does not fix them, validated by the method's
    options class and returned complete."""
    from ..prompts.families import get_family
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
    family = getattr(probe, "family", None)
    fixed = set(get_family(family).options) if family is not None else set()  # a family's score is its own
    for key, value in TRAIN_DEFAULTS.items():
        if key not in table and key not in fixed and key in cls.specs() and probe.applies(key):
            table[key] = value
    return cls.build(table).to_dict()


def _rule(*types: type, **rules: Any) -> Spec:
    return Spec(help="", types=types, **rules)


_NONE = type(None)
# What each key may hold (a key's type may include None only where its default is None or None turns it off).
# lora_targets ("all-linear" or a list of module names), loss (among LOSSES) and loss_options (what the loss
# takes) are checked by TrainConfig itself.
CHECKS: dict[str, Spec] = {
    "model": _rule(str),
    "method": _rule(str, choices=("pointwise", "likelihood")),
    "options": _rule(Mapping),
    # the weights training loads: no "auto" (bfloat16 weights would train in bfloat16; use bf16_autocast)
    "dtype": _rule(str, choices=tuple(c for c in BackendOptions.specs()["dtype"][0].choices if c != "auto")),
    "threads": _rule(int, _NONE, minimum=1),
    "data": _rule(str),
    "split": _rule(str),
    "run": _rule(str, _NONE),
    "group_size": _rule(int, minimum=1),
    "top_k": _rule(int, minimum=1),
    "rel": _rule(int, _NONE, minimum=1),
    "unjudged": _rule(bool),
    "max_positives": _rule(int, _NONE, minimum=1),
    "teacher_run": _rule(str, _NONE),
    "teacher_mode": _rule(str, choices=("scores", "order")),
    "target": _rule(str, _NONE, choices=TARGETS),
    "dev_data": _rule(str, _NONE),
    "dev_split": _rule(str, _NONE),
    "dev_run": _rule(str, _NONE),
    "dev_top_k": _rule(int, minimum=1),
    "eval_every": _rule(int, minimum=0),
    "eval_dtype": _rule(str, _NONE, choices=("auto", "float32", "bfloat16")),
    "keep_best": _rule(bool),
    "loss": _rule(str),
    "loss_options": _rule(Mapping),
    "lora": _rule(bool),
    "lora_r": _rule(int, minimum=1),
    "lora_alpha": _rule(int, minimum=1),
    "lora_dropout": _rule(float, int, minimum=0, below=1),
    "lora_targets": _rule(),
    "learning_rate": _rule(float, int, positive=True),
    "head_learning_rate": _rule(float, int, positive=True),
    "weight_decay": _rule(float, int, minimum=0),
    "warmup_steps": _rule(int, minimum=0),
    "epochs": _rule(int, minimum=1),
    "max_steps": _rule(int, _NONE, minimum=1),
    "groups_per_batch": _rule(int, minimum=1),
    "grad_accum": _rule(int, minimum=1),
    "max_grad_norm": _rule(float, int, _NONE, positive=True),
    "gradient_checkpointing": _rule(bool),
    "bf16_autocast": _rule(bool, str, choices=(True, False, "auto")),
    "seed": _rule(int, minimum=0),
    "output_dir": _rule(str),
    "save_every": _rule(int, minimum=1),
    "keep_checkpoints": _rule(int, minimum=1),
}
_NON_EMPTY = ("model", "split", "output_dir")  # `data` may stay empty when the trainer is given its groups
_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", Mapping: "a table"}


def _shown(value: Any) -> str:
    """A choice as the config file spells it: true/false, strings quoted."""
    return json.dumps(value)


def _either(values: Any) -> str:
    shown = [_shown(v) for v in values]
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"


def _refused(key: str, what: str, value: Any) -> ValueError:
    """The error of a config value: ``config: <key> must be <what>, got <type> <value>``."""
    return ValueError(f"config: {key} must be {what}, got {type(value).__name__} {value!r}")


def _check_value(key: str, spec: Spec, value: Any) -> None:
    """Raise :func:`_refused` when ``value`` breaks ``spec`` (see :func:`llmrerank.options.violation`), or is a
    float that is not finite."""
    problem = violation(spec, value)
    if problem is not None:
        kind, what = problem
        if kind == "type":
            kinds = [t for t in spec.types if not (t is int and float in spec.types)]  # a number includes ints
            what = " or ".join("None" if t is _NONE else _TYPE_WORDS.get(t, t.__name__) for t in kinds)
            if float in spec.types and isinstance(value, str) and _is_number(value):
                yaml_text = "e" in value.lower() and "." not in value  # PyYAML reads 1e-4 as a string
                hint = f"YAML reads {value} as text: write {value.lower().replace('e', '.0e', 1)}" if yaml_text else ""
                raise ValueError(f"{_refused(key, what, value)} ({hint or 'write it unquoted'})")
        if spec.choices is not None:  # a wrong type among choices (bf16_autocast = 1): say the choices
            what = _either(spec.choices)
        raise _refused(key, what, value)
    if isinstance(value, float) and not math.isfinite(value):
        raise _refused(key, "a finite number", value)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def loss_keywords(loss: str) -> dict[str, Any]:
    """The keyword options loss ``loss`` of :data:`llmrerank.train.losses.LOSSES` takes, with their defaults."""
    from .losses import LOSSES

    params = inspect.signature(LOSSES[loss]).parameters.values()
    return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}


def _check_loss(loss: str, loss_options: Mapping[str, Any]) -> None:
    """Refuse a loss not in ``LOSSES`` (naming them), an option the loss does not take (naming those it does),
    an option of the wrong type, or one out of the loss's range (by the loss's own check, on a tiny group)."""
    import torch

    from .losses import LOSSES

    if loss not in LOSSES:
        raise _refused("loss", _either(LOSSES), loss)
    accepted = loss_keywords(loss)
    unknown = sorted(set(loss_options) - set(accepted))
    if unknown:
        takes = f"it takes {', '.join(accepted)}" if accepted else "it takes none"
        raise ValueError(f"config: loss_options {', '.join(unknown)} not taken by loss {_shown(loss)}: {takes}")
    for name, value in loss_options.items():
        default = accepted[name]
        types = (bool,) if isinstance(default, bool) else (float, int) if isinstance(default, float) else ()
        _check_value(f"loss_options.{name}", _rule(*types), value)
    try:  # the loss checks its own options' ranges
        LOSSES[loss](torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]), **loss_options)
    except ValueError as e:
        raise ValueError(f"config: loss_options: {e}") from None


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
    # what the loss learns: the qrels' "labels", or the "teacher" run's scores (its order with teacher_mode
    # "order": RankNet on the teacher's order, say); None = the teacher for the distillation losses (kl,
    # margin_mse), else the labels
    target: str | None = None

    # evaluation during training (nDCG@10 on the dev split's reranked top `dev_top_k`); `dev_data` is the BEIR
    # folder holding that split when it is not `data` (synthetic training queries have no dev split of their
    # own), and its run is then `dev_run` or the one .trec file in `dev_data`
    dev_data: str | None = None
    dev_split: str | None = None
    dev_run: str | None = None
    dev_top_k: int = 20
    eval_every: int = 0  # optimiser steps; 0 = only at the end
    # what the dev evaluation computes in: auto (bfloat16 where the device computes it natively), float32 or
    # bfloat16; None = the method's default, as Reranker() and the CLI load it (auto for likelihood, float32 for
    # pointwise). Training keeps float32 weights: a bfloat16 evaluation scores a bfloat16 copy (adapters merged);
    # float32 scores the model being trained as it is (in its own dtype; under bf16_autocast when training uses it)
    eval_dtype: str | None = None
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
        for f in fields(self):
            value = getattr(self, f.name)
            _check_value(f.name, CHECKS[f.name], value)
            if f.name in _NON_EMPTY and not value.strip():
                raise _refused(f.name, "a non-empty string", value)
        targets = self.lora_targets
        if isinstance(targets, (list, tuple)) and targets and all(isinstance(t, str) and t for t in targets):
            self.lora_targets = list(targets)
        elif targets != "all-linear":
            raise _refused("lora_targets", '"all-linear" or a non-empty list of module names', targets)
        self.loss_options = dict(self.loss_options)
        _check_loss(self.loss, self.loss_options)
        if self.dev_data is not None and not self.dev_split:
            raise ValueError("config: dev_data names the folder of the dev split: set dev_split too")
        if self.group_size < 2 and self.loss not in POSITIVE_ONLY_LOSSES:
            raise ValueError(
                f"config: group_size must be at least 2 for loss {self.loss} (a positive and a negative), got "
                f"{self.group_size}; only {', '.join(POSITIVE_ONLY_LOSSES)} learns from the positive alone"
            )
        if self.group_size > 1 and self.loss in POSITIVE_ONLY_LOSSES:
            raise ValueError(
                f"config: loss {self.loss} reads the positive alone: set group_size = 1 (its {self.group_size - 1} "
                "negatives a group would be scored and never used)"
            )
        if self.loss in LOG_PROBABILITY_LOSSES and self.method not in LOG_PROBABILITY_LOSSES[self.loss]:
            raise ValueError(
                f"config: loss {self.loss} maximises the positive's score, which only a log-probability bounds: use it "
                f"with method {' or '.join(LOG_PROBABILITY_LOSSES[self.loss])}, not {self.method}"
            )
        if self.loss in DISTILL_LOSSES and self.target == "labels":
            raise ValueError(f"config: loss {self.loss} distils a teacher: target must be 'teacher' or left out")
        if self.target == "teacher" and self.loss in POSITIVE_ONLY_LOSSES:
            raise ValueError(
                f"config: loss {self.loss} learns the positive itself (the qrels), not a teacher's scores: leave "
                "target out or set it to 'labels'"
            )
        if self.target == "teacher" and self.loss not in TEACHER_LOSSES:
            raise ValueError(
                f"config: loss {self.loss} needs graded labels, not a teacher's scores; with target = 'teacher' use "
                f"one of {', '.join(TEACHER_LOSSES)}"
            )
        try:
            self.options = training_options(self.method, self.options)
        except (ValueError, TypeError) as e:  # the options class names the option; say it is in `options`
            if str(e).startswith("config:"):
                raise
            raise (ValueError if isinstance(e, ValueError) else TypeError)(f"config: options: {e}") from None

    @property
    def learns_from_teacher(self) -> bool:
        """Whether the loss's targets are the teacher run's (see ``target``), not the qrels' labels."""
        return (self.target or ("teacher" if self.loss in DISTILL_LOSSES else "labels")) == "teacher"

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
            _check_value("method", CHECKS["method"], method)
            data["options"] = training_options(method, data.get("options", {}), legacy, resolve=False)
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Read a ``.toml``, ``.yaml``/``.yml`` or ``.json`` file (UTF-8, a byte-order mark dropped); ``overrides``
        (not None) win and are checked as the file's keys are."""
        data = read_config_file(path)
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The table of a ``.toml``, ``.yaml``/``.yml`` or ``.json`` config file (UTF-8, a byte-order mark dropped);
    a file that does not parse, or is not a table, is a ValueError naming it."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file not found: {p}")
    from ..data import read_text

    text = read_text(p)
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
    return data
