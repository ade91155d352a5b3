"""Declared options: each ranker's settings as one frozen dataclass whose fields carry their type, choices,
default, bounds and help.

A ranker module declares its table once::

    @dataclass(frozen=True)
    class LikelihoodOptions(Options):
        method: ClassVar[str] = "likelihood"
        reduction: str = option("mean", "mean or total log-probability of the query's tokens",
                                choices=("mean", "sum"))

and everything else reads it: the ranker validates and keeps it, the CLI generates its flags from it,
``describe()`` and the run sidecar list it, training configs carry it as one table, a trained folder writes
it back, and ``Reranker.from_config`` rebuilds the ranker from its dict (see :meth:`Options.to_dict`).

Validation happens when an options object is made: a wrong type, a value outside the choices or the bounds,
or an option given where it does not apply (``when``) raises a ``ValueError`` naming the option; an unknown
option name is a ``TypeError`` that lists the accepted ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, TypeVar

T = TypeVar("T", bound="Options")


@dataclass(frozen=True)
class Spec:
    """What is declared about one option (kept in the dataclass field's metadata).

    Attributes:
        help: one line for ``--help`` and the docs.
        types: the Python types a value may have (``None`` is allowed when the default is ``None``).
        choices: the allowed values, if they are a closed set.
        minimum, maximum: inclusive bounds of a number.
        below: an exclusive upper bound of a number (e.g. 1 for a dropout probability).
        positive: the number must be above zero.
        when: ``(other option, values)``: the option applies only while the other one has one of these values;
            elsewhere it must keep its default, and ``to_dict`` leaves it out.
        convert: turns an accepted value into the form the ranker keeps (e.g. a template name into a template);
            its errors are the option's.
        flag: the command-line flag (default ``--`` + the name with dashes); ``""`` means none.
        parse: turns the flag's text into a value (default: the type; e.g. ``"A,B"`` into a pair).
    """

    help: str
    types: tuple[type, ...] = ()
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    below: float | None = None
    positive: bool = False
    when: tuple[str, tuple[Any, ...]] | None = None
    convert: Callable[[Any], Any] | None = None
    flag: str | None = None
    parse: Callable[[str], Any] | None = None

    def cli_flag(self, name: str) -> str | None:
        if self.flag == "":
            return None
        return self.flag or "--" + name.replace("_", "-")


def option(default: Any, help: str, *, types: tuple[type, ...] | type = (), **spec: Any) -> Any:  # noqa: A002
    """A declared option field: ``default``, a ``help`` line, and the rest of :class:`Spec`.

    ``types`` defaults to the type of ``default`` (``float`` also accepts ``int``).
    """
    if isinstance(types, type):
        types = (types,)
    if not types and default is not None:
        types = (float, int) if isinstance(default, float) else (type(default),)
    return field(default=default, metadata={"spec": Spec(help=help, types=tuple(types), **spec)})


def template_option(help: str, kind: str) -> Any:  # noqa: A002
    """The ``template`` option of a method: a template of ``kind`` (see :func:`llmrerank.prompts.get_template`),
    a mapping of its fields, a built-in name or a .toml/.json file (``--prompt-file``). Its default, None, is the
    method's own template, which the method's ``check`` fills in."""
    from .prompts import Template, get_template

    return option(
        None, help, types=(str, Path, Mapping, Template), convert=partial(get_template, kind=kind), flag="--prompt-file"
    )


def spec_of(f: Any) -> Spec:
    return f.metadata["spec"]


@dataclass(frozen=True)
class Options:
    """Base of the options tables. Subclasses add fields made with :func:`option` and may add cross-option
    rules in :meth:`check` (run after each field's own checks, before the ``when`` rules)."""

    method: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            object.__setattr__(self, f.name, self._checked(f, value))
        self.check()
        for f in fields(self):
            spec = spec_of(f)
            if spec.when and not self.applies(f.name) and getattr(self, f.name) != f.default:
                other, values = spec.when
                allowed = " or ".join(repr(v) for v in values)
                raise ValueError(f"{f.name} applies to {other}={allowed} only")

    def _checked(self, f: Any, value: Any) -> Any:
        spec = spec_of(f)
        where = f"{self.method} option {f.name}" if self.method else f"option {f.name}"
        if value is None and f.default is None:
            return None
        problem = violation(spec, value)
        if problem is not None:
            kind, what = problem
            if kind == "type":
                raise ValueError(f"{where} must be {what}, got {type(value).__name__} {value!r}")
            if kind == "choices":
                raise ValueError(f"unknown {f.name} {value!r} for {self.method}: choose one of {what}")
            raise ValueError(f"{f.name} must be {what}, got {value}")
        if spec.convert is None:
            return value
        try:
            return spec.convert(value)
        except FileNotFoundError as e:  # the error's kind is kept, its message names the option
            raise FileNotFoundError(f"{where}: {e}") from e
        except TypeError as e:
            raise TypeError(f"{where}: {e}") from e
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from e

    def check(self) -> None:
        """Rules between options (override); raise ValueError naming what is wrong."""

    def applies(self, name: str) -> bool:
        """Whether option ``name`` takes effect under the other options' values (its ``when`` rule)."""
        spec = spec_of(self.__dataclass_fields__[name])
        return spec.when is None or getattr(self, spec.when[0]) in spec.when[1]

    @classmethod
    def build(cls: type[T], given: Mapping[str, Any], also: tuple[str, ...] = ()) -> T:
        """The options from a mapping of names to values; an unknown name is a TypeError listing the accepted
        ones (these, and ``also``: names the caller takes besides, such as the backend's)."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(given) - set(known) - set(also))
        if unknown:
            accepted = ", ".join([*known, *also])
            raise TypeError(f"unknown option(s) for method {cls.method!r}: {', '.join(unknown)}; accepted: {accepted}")
        return cls(**{k: v for k, v in given.items() if k in known})

    @classmethod
    def specs(cls) -> dict[str, tuple[Spec, Any]]:
        """Each option's name -> (its Spec, its default)."""
        return {f.name: (spec_of(f), None if f.default is MISSING else f.default) for f in fields(cls)}

    def to_dict(self) -> dict[str, Any]:
        """The options that apply, as plain JSON data: ``type(self).build(self.to_dict())`` equals ``self``."""
        out = {}
        for f in fields(self):
            if not self.applies(f.name):
                continue
            out[f.name] = plain(getattr(self, f.name))
        return out


def violation(spec: Spec, value: Any) -> tuple[str, str] | None:
    """The first rule of ``spec`` that ``value`` breaks, as ``(kind, what it must be)``, or None when it keeps them.

    ``kind`` is ``"type"`` (``what``: ``"int"``, ``"float or int"``; a bool is an int only where ``bool`` is
    listed; ``type(None)`` in ``types`` lets None through), ``"choices"`` (``what``: the choices, comma-separated)
    or ``"range"`` (``what``: ``"positive"``, ``"at least 1"``, ``"2 to 26"``, ``"at least 0 and below 1"``; NaN
    is outside every range). The caller words the message: :class:`Options` and the training config both do.
    """
    if value is None and type(None) in spec.types:
        return None
    if spec.types and (not isinstance(value, spec.types) or (isinstance(value, bool) and bool not in spec.types)):
        return "type", " or ".join("None" if t is type(None) else t.__name__ for t in spec.types)
    if spec.choices is not None and value not in spec.choices:
        return "choices", ", ".join(map(str, spec.choices))
    if spec.positive and not value > 0:
        return "range", "positive"
    low, high, below = spec.minimum, spec.maximum, spec.below
    if (
        (low is not None and not value >= low)
        or (high is not None and not value <= high)
        or (below is not None and not value < below)
    ):
        if low is not None and high is not None:
            return "range", f"{low:g} to {high:g}"
        parts = [f"at least {low:g}"] if low is not None else []
        parts += [f"at most {high:g}"] if high is not None else []
        parts += [f"below {below:g}"] if below is not None else []
        return "range", " and ".join(parts)
    return None


def plain(value: Any) -> Any:
    """A value as JSON data: tuples as lists, paths as strings, templates (anything with to_dict) as dicts."""
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return value


# --- how the model runs: the backend's options, shared by every method --------------------------------------

SWITCH = {"true": True, "on": True, "yes": True, "1": True, "false": False, "off": False, "no": False, "0": False}


def parse_switch(text: str) -> bool:
    """A yes/no flag value: true/false, on/off, yes/no or 1/0."""
    try:
        return SWITCH[text.strip().lower()]
    except KeyError:
        raise ValueError(f"{text!r} is not one of true/false, on/off, yes/no, 1/0") from None



@dataclass(frozen=True)
class BackendOptions(Options):
    """How the model is loaded and run (see :meth:`llmrerank.backends.hf.HFBackend.load`)."""

    method: ClassVar[str] = "backend"

    batch_size: int = option(16, "most sequences in one forward pass", minimum=1)
    batch_tokens: int = option(8192, "most padded tokens in one forward pass", minimum=1)
    # None: the method's own default (its ranker's ``default_dtype``): auto for likelihood, whose bfloat16 ranking
    # passed the agreement rule on DL19 with every preset; float32 for the others, whose bfloat16 ranking did not
    # or was not measured (docs/benchmarks.md, "Speed")
    dtype: str | None = option(
        None,
        "weights and activations: auto (bfloat16 where the device computes it natively, else float32), float32, "
        "bfloat16 or float16 (default: the method's: auto for likelihood, float32 for the others)",
        types=str,
        choices=("auto", "float32", "bfloat16", "float16"),
    )
    device: str = option("auto", "cpu, cuda, cuda:1, or auto")
    threads: int | None = option(None, "CPU threads for torch", types=int, minimum=1)
    reuse_prefix: bool = option(
        True, "compute a prefix that prompts share (instruction, query) once", parse=parse_switch, choices=(True, False)
    )
    quantize: str | None = option(None, "dynamic int8 linear layers (CPU, float32)", types=str, choices=("int8",))
    pass_cost: int | None = option(
        None, "what one more forward pass costs, in padded tokens: passes are cut where padding costs more "
        "(default: the device's; 0 pads nothing)", types=int, minimum=0,
    )
    compile: bool = option(
        False, "fuse the feed-forward blocks and norms with torch.compile (inference; a few seconds at load)",
        parse=parse_switch, choices=(True, False),
    )

    def check(self) -> None:
        if self.quantize is not None and self.dtype not in (None, "auto", "float32"):
            raise ValueError(f"quantize={self.quantize!r} needs float32 weights: dtype 'float32' or 'auto'")
        if self.compile and self.quantize is not None:
            raise ValueError(f"compile does not combine with quantize={self.quantize!r}: choose one")
        if self.device != "auto":
            import torch

            try:
                torch.device(self.device)
            except (RuntimeError, ValueError) as e:
                raise ValueError(f"unknown device {self.device!r}: give cpu, cuda, cuda:N, mps or auto ({e})") from e
