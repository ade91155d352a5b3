"""Setting up what a run trains: LoRA adapters or full fine-tuning, gradient checkpointing, the bfloat16
autocast decision, the ranker being trained, its trainable parameters and the optimiser's parameter groups."""

from __future__ import annotations

from typing import Any

import torch

from ..backends.hf import native_bf16
from .config import TrainConfig


def bf16_enabled(setting: bool | str, device: torch.device | str) -> bool:
    """The config's ``bf16_autocast`` (true, false or "auto") for this device."""
    return native_bf16(device) if setting == "auto" else bool(setting)


def autocast(setting: bool | str, device: torch.device | str) -> torch.autocast:
    """A bfloat16 autocast context for ``device``, enabled as ``bf16_autocast`` says (see :func:`bf16_enabled`)."""
    device = torch.device(device)
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16_enabled(setting, device))


def prepare_model(backend: Any, config: TrainConfig) -> None:
    """Make the backend's model trainable as the config says: LoRA adapters on a frozen model, or every weight
    (full fine-tuning); then gradient checkpointing if asked for."""
    c = config
    if c.lora:
        backend.add_lora(c.lora_r, c.lora_alpha, c.lora_dropout, c.lora_targets)
    else:
        backend.unfreeze()
    if c.gradient_checkpointing:
        backend.set_checkpointing(True)


def build_ranker(backend: Any, config: TrainConfig) -> Any:
    """The ranker being trained, over ``backend``, from the config's method and options table: its
    ``score_encoded`` is the function the loss optimises. A dense head, if any, is marked trainable."""
    from ..registry import method_class

    ranker = method_class(config.method)(backend, **config.options)
    head = head_of(ranker)
    if head is not None:
        head.trained = True  # it is being trained: let dev evaluation use it
        for p in head.parameters():
            p.requires_grad_(True)
    return ranker


def head_of(ranker: Any) -> torch.nn.Module | None:
    """The ranker's dense head, or None (a tokens head or a likelihood ranker has no weights of its own)."""
    return getattr(ranker, "dense", None)


def trainable_parameters(backend: Any, ranker: Any) -> list[torch.nn.Parameter]:
    """What the optimiser updates: the model's trainable parameters, then the head's."""
    params = [p for _, p in backend.trainable_parameters()]
    head = head_of(ranker)
    if head is not None:
        params += list(head.parameters())
    return params


def make_optimizer(params: list[torch.nn.Parameter], ranker: Any, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over ``params``: the model's at ``learning_rate``, the head's (if any) at ``head_learning_rate``."""
    head = head_of(ranker)
    head_params = list(head.parameters()) if head else []
    head_ids = {id(p) for p in head_params}
    model_params = [p for p in params if id(p) not in head_ids]
    param_groups = [{"params": model_params, "lr": config.learning_rate}]
    if head_params:
        param_groups.append({"params": head_params, "lr": config.head_learning_rate})
    return torch.optim.AdamW(param_groups, weight_decay=config.weight_decay)
