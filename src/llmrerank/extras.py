"""Optional dependencies: one place that imports them and, when one is missing, names the extra to install.

The core (``pip install llmrerank``) ranks, evaluates and writes runs; features beyond it live in extras::

    peft = require("peft", extra="train", feature="LoRA training")

raises :class:`MissingExtraError` (an ``ImportError``) with ``pip install "llmrerank[train]"`` in its message
when peft is not installed.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

# For each optional top-level module: the distribution that provides it, and the extra that installs it.
EXTRAS: dict[str, tuple[str, str]] = {
    "peft": ("peft", "train"),
    "yaml": ("PyYAML", "train"),
    "matplotlib": ("matplotlib", "plot"),
    "fastapi": ("fastapi", "serve"),
    "uvicorn": ("uvicorn", "serve"),
    "prometheus_client": ("prometheus-client", "serve"),
    "ray": ("ray", "ray"),
}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def require(module: str, feature: str, extra: str | None = None) -> ModuleType:
    """Import ``module`` for ``feature``, or raise :class:`MissingExtraError` naming the pip command."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        dist, default_extra = EXTRAS.get(top, (top, None))
        extra = extra or default_extra
        if extra is None:
            raise MissingExtraError(f"{feature} needs {dist}: pip install {dist}") from e
        raise MissingExtraError(f'{feature} needs {dist}: pip install "llmrerank[{extra}]"') from e


@contextmanager
def peft_quietly() -> Iterator[None]:
    """Wrap a model with peft without transformers' FutureWarning that ``is_gradient_checkpointing`` is
    deprecated: peft reads that attribute itself (peft 0.21 with transformers 5), nothing the user did or can
    change. Other warnings pass."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
        yield
