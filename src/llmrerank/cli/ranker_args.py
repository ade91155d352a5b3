"""The model and method flags that ``rerank`` and ``demo`` share, generated from the option specs, and the
ranker they build.

Every method's options table (:mod:`llmrerank.options`) and the backend's declare their flags: one flag per
option name, shared by the methods that have it (``--max-length``, ``--prompt-file``, ``--aggregation``, ...),
its choices the union of theirs and its help saying which method means what. A flag left unset takes the
method's own default; a flag the chosen method does not take is an error naming both.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

from ..models import preset_names
from ..options import BackendOptions, Spec
from .argtypes import spec_type


def _declared() -> Iterator[tuple[str, str, Spec, Any]]:
    """(method, option name, spec, default) of every option that has a flag, backend options first."""
    from ..registry import METHODS

    for method, options in [("backend", BackendOptions), *((m, c.Options) for m, c in METHODS.items())]:
        for name, (spec, default) in options.specs().items():
            if spec.cli_flag(name) is not None:
                yield method, name, spec, default


def _flags() -> dict[str, list[tuple[str, Spec, Any]]]:
    """Option name -> the (method, spec, default) of each method that declares it, in declaration order."""
    out: dict[str, list[tuple[str, Spec, Any]]] = {}
    for method, name, spec, default in _declared():
        out.setdefault(name, []).append((method, spec, default))
    return out


def _help(declared: list[tuple[str, Spec, Any]]) -> str:
    """One help line for a flag several methods may share: what it means (and its default) for each."""
    groups: dict[tuple[str, str], list[str]] = {}
    for method, spec, default in declared:
        shown = "" if default is None else f" (default {default})"
        groups.setdefault((spec.help, shown), []).append(method)
    if len(groups) == 1 and declared[0][0] == "backend":
        ((text, shown),) = groups
        return text + shown
    return "; ".join(f"{', '.join(methods)}: {text}{shown}" for (text, shown), methods in groups.items())


def _value_type(declared: list[tuple[str, Spec, Any]]) -> Any:
    """The flag's ``type=``: the spec's parser, else a number checked against the range, when every method that
    declares the flag gives it the same one (otherwise the chosen method's options check it), else str."""
    spec = declared[0][1]
    if spec.parse is not None:
        return _parse_error_said(spec.parse)
    if int in spec.types or float in spec.types:
        ranges = {(s.minimum, s.maximum, s.below, s.positive) for _, s, _ in declared}
        return spec_type(spec if len(ranges) == 1 else Spec(spec.help, spec.types))
    return str


def _parse_error_said(parse: Any) -> Any:
    """A spec's parser as an argparse type whose ValueError message reaches the user (argparse would otherwise
    print only "invalid <function name> value")."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def add_model_args(p: argparse.ArgumentParser, method_default: str) -> None:
    """Add the "model and method" group to ``p``; ``--method`` left out is the trained folder's own method when
    ``--model`` is a folder written by ``llmrerank train``, else ``method_default`` (see :func:`resolve_method`)."""
    from ..registry import METHODS

    g = p.add_argument_group("model and method")
    g.add_argument(
        "--method",
        default=None,
        choices=sorted(METHODS),
        help=f"ranking method (default: a trained model folder's own, else {method_default})",
    )
    p.set_defaults(method_default=method_default)
    g.add_argument(
        "--model",
        default="default",
        help=f"preset ({', '.join(preset_names())}; default = qwen2.5-0.5b), a trained or Hugging Face folder, "
        "or a .gguf file",
    )
    for name, declared in _flags().items():
        spec = declared[0][1]
        choices = list(dict.fromkeys(c for _, s, _ in declared for c in (s.choices or ())))
        flag = spec.cli_flag(name)
        g.add_argument(
            flag,
            dest=name,
            metavar=None if choices else flag[2:].upper().replace("-", "_"),
            type=_value_type(declared),
            default=None,
            choices=choices or None,
            help=_help(declared),
        )


def resolve_method(args: argparse.Namespace) -> None:
    """Fill in ``args.method`` when ``--method`` was left out: the method ``--model``'s trained folder records,
    else the subcommand's default. :func:`ranker_options_from_args` calls it; a subcommand that reads
    ``args.method`` before that calls it first."""
    if getattr(args, "method", None) is not None or not hasattr(args, "method_default"):
        return
    from ..registry import trained_method

    args.method = trained_method(getattr(args, "model", None)) or args.method_default


def ranker_options_from_args(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """The backend options and the method's options the parsed flags set (flags left unset are left out); a
    method-specific flag the method does not take is a ValueError."""
    from ..registry import options_class

    resolve_method(args)
    method_options = set(options_class(args.method).specs())
    backend_options = set(BackendOptions.specs())
    backend: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for name, declared in _flags().items():
        value = getattr(args, name)
        if value is None:
            continue
        if name in backend_options:
            backend[name] = value
        elif name in method_options:
            options[name] = value
        else:
            raise ValueError(f"{declared[0][1].cli_flag(name)} does not apply to --method {args.method}")
    return backend, options


def ranker_from_args(args: argparse.Namespace) -> Any:
    """The ranker the parsed flags describe; a method-specific flag the method does not take is a ValueError."""
    from ..registry import Reranker

    backend, options = ranker_options_from_args(args)
    return Reranker(args.method, model=args.model, **backend, **options)
