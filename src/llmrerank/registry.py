"""An explicit table from method name to ranker class, and the :func:`Reranker` factory.

Methods are chosen by name only, never guessed from a model's name. Options are split between the backend
(how the model runs) and the ranker (how it scores); an option neither knows is an error that names it.
"""

from __future__ import annotations

import inspect
from typing import Any

from .backends.base import Backend
from .rankers.base import Ranker
from .rankers.likelihood import LikelihoodRanker
from .rankers.listwise import ListwiseRanker
from .rankers.pairwise import PairwiseRanker
from .rankers.pointwise import PointwiseRanker
from .rankers.setwise import SetwiseRanker

METHODS: dict[str, type] = {
    "pointwise": PointwiseRanker,
    "likelihood": LikelihoodRanker,
    "listwise": ListwiseRanker,
    "pairwise": PairwiseRanker,
    "setwise": SetwiseRanker,
}

BACKEND_OPTIONS = ("dtype", "device", "threads", "batch_size")


def method_options(method: str) -> list[str]:
    """The options a method's ranker accepts (besides the backend)."""
    params = inspect.signature(_method_class(method).__init__).parameters
    return [p for p in params if p not in ("self", "backend")]


def _method_class(method: str) -> type:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {', '.join(sorted(METHODS))}")
    return METHODS[method]


def Reranker(method: str, model: str = "default", backend: Backend | None = None, **options: Any) -> Ranker:  # noqa: N802
    """Build a ranker: ``Reranker("likelihood", model="smollm2-135m", max_length=256)``.

    Args:
        method: a name from :data:`METHODS` (``pointwise``, ``likelihood``, ``listwise``, ``pairwise``,
            ``setwise``).
        model: a preset (``default`` = ``qwen2.5-0.5b``, ``smollm2-135m``), a Hugging Face folder or a ``.gguf``
            path. Ignored when ``backend`` is given.
        backend: an already loaded backend to share between rankers.
        **options: backend options (``dtype``, ``device``, ``threads``, ``batch_size``) and the method's own
            (``max_length``, ``template``, and e.g. ``tokens``/``normalisation``, ``reduction``, or for listwise
            ``window_size``/``step``/``passes``/``decoding``, for pairwise ``aggregation``/``sort_top_k``/
            ``pair_top_k``, for setwise ``set_size``/``aggregation``/``sort_top_k``).
    """
    from .models import trained_config

    cls = _method_class(method)
    accepted = method_options(method)
    meta = trained_config(model) if backend is None else None
    if meta is not None:  # a folder written by `llmrerank train`: restore what was trained, options given win
        if meta["method"] != method:
            raise ValueError(f"{model} was trained for method {meta['method']!r}, not {method!r}")
        saved = dict(meta["options"])
        if saved.get("head") == "dense":
            from pathlib import Path

            saved["head_weights"] = str(Path(model).expanduser() / "head.safetensors")
        options = {**saved, **options}
    unknown = sorted(set(options) - set(accepted) - set(BACKEND_OPTIONS))
    if unknown:
        raise TypeError(
            f"unknown option(s) for method {method!r}: {', '.join(unknown)}; "
            f"accepted: {', '.join([*accepted, *BACKEND_OPTIONS])}"
        )
    backend_opts = {k: options.pop(k) for k in BACKEND_OPTIONS if k in options}
    if backend is None:
        from .backends.hf import HFBackend

        backend = HFBackend.load(model, **backend_opts)
    elif backend_opts:
        raise TypeError(f"backend options {sorted(backend_opts)} cannot be given with an existing backend")
    return cls(backend, **options)
