"""An explicit table from method name to ranker class, and the :data:`Reranker` factory.

Methods are chosen by name only, never guessed from a model's name. Options are split between the backend
(how the model runs: :class:`~llmrerank.options.BackendOptions`) and the ranker (how it scores: the method's
options table); an option neither knows is an error that names it. ``Reranker.from_config(ranker.config())``
rebuilds a ranker anywhere (a server's config file, a worker process).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .backends.base import Backend
from .options import BackendOptions, Options
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

BACKEND_OPTIONS = tuple(BackendOptions.specs())
CONFIG_KEYS = ("method", "model", "backend", "options")


def method_class(method: str) -> type:
    """The ranker class of a method name; an unknown name is a ValueError listing the methods."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {', '.join(sorted(METHODS))}")
    return METHODS[method]


def options_class(method: str) -> type[Options]:
    """The options table of a method (e.g. :class:`~llmrerank.rankers.pointwise.PointwiseOptions`)."""
    return method_class(method).Options


def method_options(method: str) -> list[str]:
    """The options a method's ranker accepts (besides the backend's)."""
    return list(options_class(method).specs())


class RerankerFactory:
    """Build rankers by method name: ``Reranker("likelihood", model="smollm2-135m", max_length=256)``, or from a
    config dict: ``Reranker.from_config({"method": ..., "model": ..., "backend": {...}, "options": {...}})``."""

    def __call__(
        self, method: str | None = None, model: str = "default", backend: Backend | None = None, **options: Any
    ) -> Ranker:
        """Build a ranker.

        Args:
            method: a name from :data:`METHODS` (``pointwise``, ``likelihood``, ``listwise``, ``pairwise``,
                ``setwise``); may be left out for a folder written by ``llmrerank train`` (its own method).
            model: a preset (``default`` = ``qwen2.5-0.5b``, ``smollm2-135m``), a Hugging Face folder, a ``.gguf``
                path, or a folder written by ``llmrerank train`` (its method and options are restored; options
                given here win). Ignored when ``backend`` is given.
            backend: an already loaded backend to share between rankers.
            **options: backend options (``dtype``, ``device``, ``threads``, ``batch_size``) and the method's own
                (see ``method_options(method)``: e.g. ``max_length``, ``template``, ``tokens``/``normalisation``,
                ``reduction``, ``window_size``/``step``/``decoding``, ``aggregation``/``sort_top_k``, ``set_size``).
        """
        if method is None:
            method = trained_method(model) if backend is None else None
            if method is None:
                raise TypeError(
                    "name a method (pointwise, likelihood, listwise, pairwise, setwise): only a trained model (a "
                    "folder written by llmrerank train, or a trained preset such as smollm2-135m-distilled) knows "
                    "its own"
                )
        cls = method_class(method)
        if backend is None:
            options = restored_options(method, model, options)
        ranker_options = cls.Options.build(options, also=BACKEND_OPTIONS)  # checked before any model loads
        backend_given = {k: options[k] for k in BACKEND_OPTIONS if k in options}
        if backend is None:
            from .backends.hf import HFBackend

            backend = HFBackend.load(model, **backend_options_for(method, backend_given).to_dict())
        elif backend_given:
            raise TypeError(f"backend options {sorted(backend_given)} cannot be given with an existing backend")
        return cls(backend, ranker_options)

    def from_config(self, config: Mapping[str, Any], backend: Backend | None = None) -> Ranker:
        """Rebuild a ranker from ``ranker.config()`` (or a config file's table of the same keys: ``method``,
        and optionally ``model`` (default ``"default"``), ``backend`` and ``options``).

        With ``backend`` given, that loaded model runs: the config's ``model`` and ``backend`` table say where
        the ranker came from and are not used (a trained folder's options are not restored either)."""
        config = check_config(config, backend_table=backend is None)
        if backend is not None:
            config["backend"] = {}
        return self(config["method"], model=config["model"], backend=backend, **config["backend"], **config["options"])


def check_config(config: Any, backend_table: bool = True) -> dict[str, Any]:
    """A ranker config (see :meth:`RerankerFactory.from_config`) checked without loading a model: its keys, its
    tables, and the options each table names (their values are checked when the ranker is built, or by
    :func:`check_options`). Returns it with every key filled in (``model`` defaults to ``"default"``)."""
    if not isinstance(config, Mapping):
        raise TypeError(f"a ranker config is a mapping, got {type(config).__name__}")
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise ValueError(f"unknown ranker config key(s): {', '.join(unknown)}; accepted: {', '.join(CONFIG_KEYS)}")
    if "method" not in config:
        raise ValueError("a ranker config needs 'method'")
    method_class(config["method"])
    tables = {k: {} if config.get(k) is None else config[k] for k in ("backend", "options")}
    for key, table in tables.items():
        if not isinstance(table, Mapping):
            raise ValueError(f"ranker config {key!r} must be a table of names to values, got {table!r}")
    clash = sorted(set(tables["backend"]) & set(tables["options"]))
    if clash:
        raise ValueError(f"ranker config: {', '.join(clash)} given both as backend and as method options")
    if backend_table:
        unknown_backend = sorted(set(tables["backend"]) - set(BACKEND_OPTIONS))
        if unknown_backend:
            accepted = ", ".join(BACKEND_OPTIONS)
            raise TypeError(f"unknown backend option(s): {', '.join(unknown_backend)}; accepted: {accepted}")
    return {
        "method": config["method"],
        "model": config.get("model") or "default",
        "backend": dict(tables["backend"]),
        "options": dict(tables["options"]),
    }


def trained_method(model: Any) -> str | None:
    """The method a folder written by ``llmrerank train`` records, or None for any other model."""
    from . import trained

    folder = trained.read(model) if isinstance(model, str) or hasattr(model, "__fspath__") else None
    return folder.method if folder is not None else None


def restored_options(method: str, model: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` over what a folder written by ``llmrerank train`` restores (the options given win); for a model
    that is not such a folder, ``options`` as given. A folder trained for another method is a ValueError."""
    from . import trained

    folder = trained.read(model)
    if folder is None:
        return dict(options)
    if folder.method != method:
        raise ValueError(f"{model} was trained for method {folder.method!r}, not {method!r}")
    return {**folder.ranker_options(), **options}


def backend_options_for(method: str, given: Mapping[str, Any]) -> BackendOptions:
    """The backend options a ranker of ``method`` loads its model with: ``given`` (checked; an unknown name is a
    TypeError), and the method's own dtype (its ranker's ``default_dtype``) where no dtype is given."""
    options = BackendOptions.build(given)
    if options.dtype is None:
        options = BackendOptions.build({**options.to_dict(), "dtype": method_class(method).default_dtype})
    return options


def check_options(config: Mapping[str, Any]) -> None:
    """Check the option values of a :func:`check_config`-ed config as building its ranker would, without loading
    its model."""
    options = restored_options(config["method"], config["model"], config["options"])
    options_class(config["method"]).build(options, also=BACKEND_OPTIONS)
    backend_options_for(config["method"], config["backend"])


Reranker = RerankerFactory()
