"""What every kind of prompt template shares: the template base, template files, the one registry of built-ins,
placeholder filling, encoding, answer tokens, and the per-passage token budget of multi-passage prompts.

A template is a frozen dataclass of texts with ``{name}`` placeholders. Its ``kind`` says which rankers use it:
``prompt`` (one document: pointwise and query likelihood), ``listwise`` (a window of passages), ``comparison``
(pairwise and setwise). Built-in templates are registered by ``(kind, name)``; :func:`get_template` turns a
template, a mapping, a built-in name or a .toml/.json file into a template of the kind asked for.
"""

from __future__ import annotations

import functools
import json
import re
import string
import sys
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from ..data import DataFormatError, read_text
from ..types import Document

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# The labels of passages in a comparison prompt (and of listwise windows with letter identifiers).
LABELS = tuple(string.ascii_uppercase)

# What stands in for a document or passage while the text around it is built, so it can be split out.
SLOT = "\u0000LLMRERANK_PASSAGE\u0000"


def fill(source: str, /, **values: str) -> str:
    """Replace ``{name}`` placeholders in one pass, literally: braces in the values, or other braces in
    ``source``, are left alone (a query holding ``{num}`` stays as it is)."""
    if not values:
        return source
    pattern = re.compile("|".join(re.escape("{" + name + "}") for name in values))
    return pattern.sub(lambda m: values[m.group(0)[1:-1]], source)


def encode(tokenizer: Any, text: str) -> list[int]:
    """The token ids of ``text`` without special tokens (none for the empty text)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def pair_specials(tokenizer: Any) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """The special tokens ``tokenizer(first, second)`` puts before, between and after the two texts' own ids
    (Llama-2: BOS, BOS, nothing; a tokenizer that adds none: three empty tuples).

    Raises:
        ValueError: the tokenizer's pair encoding is not the two texts' ids with tokens around them.
    """
    first, second = "query", "document"
    a, b = encode(tokenizer, first), encode(tokenizer, second)
    full = list(tokenizer(first, second, add_special_tokens=True)["input_ids"])
    for i in range(len(full) - len(a) + 1):
        if full[i : i + len(a)] != a:
            continue
        for j in range(i + len(a), len(full) - len(b) + 1):
            if full[j : j + len(b)] == b:
                return tuple(full[:i]), tuple(full[i + len(a) : j]), tuple(full[j + len(b) :])
    raise ValueError(
        "this tokenizer does not encode a pair of texts as the two texts' own tokens with special tokens around "
        f"them ({first!r}, {second!r} gave {full}), so a text-pair template cannot be rendered for it"
    )


@functools.cache
def _field_types(cls: type) -> dict[str, tuple[type, ...]]:
    """The types each field annotated ``str``, ``bool`` or ``str | None`` may hold (other fields are not listed)."""
    checked = {}
    for name, hint in typing.get_type_hints(cls).items():
        args = (hint,) if hint in (str, bool) else typing.get_args(hint)
        if name in cls.__dataclass_fields__ and args and all(a in (str, bool, type(None)) for a in args):
            checked[name] = args
    return checked


@dataclass(frozen=True)
class Template:
    """The base of the template dataclasses: a ``name``, field type checks, ``title_format``, and dict/file
    round trips.

    Subclasses are frozen dataclasses with a ``title_format`` field; they name, as class keywords, their ``kind``
    (the registry's key), the fields a mapping must give (``required``) and how their validation errors name
    them (``prefix``)::

        @dataclass(frozen=True)
        class PromptTemplate(Template, kind="prompt", required=("user",), prefix="template"):
            user: str
            ...
    """

    kind: ClassVar[str]
    required: ClassVar[tuple[str, ...]]
    prefix: ClassVar[str]
    name: str

    def __init_subclass__(
        cls, kind: str | None = None, required: tuple[str, ...] | None = None, prefix: str | None = None, **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        # a subclass of a template class keeps what it does not say
        for key, value in (("kind", kind), ("required", required), ("prefix", prefix)):
            if value is not None:
                setattr(cls, key, value)

    def __post_init__(self) -> None:
        for key, allowed in _field_types(type(self)).items():
            value = getattr(self, key)
            if not isinstance(value, allowed):
                want = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
                got = type(value).__name__
                raise ValueError(f"{self.prefix} {self.name!r}: field {key!r} must be {want}, got {got}")
        unknown = set(re.findall(r"\{(\w+)\}", self.title_format)) - {"title", "text"}
        if unknown:
            only = "title_format may only use {title} and {text}"
            raise ValueError(f"{self.prefix} {self.name!r}: {only}, not {unknown}")

    def document_text(self, doc: Document) -> str:
        """How ``doc`` is shown: ``title_format`` filled in when it has a title, else its text."""
        if doc.title:
            return fill(self.title_format, title=doc.title, text=doc.text)
        return doc.text

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain values (what run sidecars and trained folders record)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {key: dict(v) if isinstance(v, Mapping) else v for key, v in values.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any:
        """Build a template from a mapping: unknown fields and missing required ones are errors."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown {cls.kind} template field(s): {', '.join(sorted(unknown))}")
        for field_name in cls.required:
            if field_name not in data:
                raise ValueError(f"a {cls.kind} template needs the field {field_name!r}")
        return cls(**{"name": "custom", **dict(data)})


@dataclass(frozen=True)
class PassagesTemplate(Template, required=("intro", "outro")):
    """The fields and rules of templates that show several passages (listwise, comparison): an ``intro`` before
    the passages and an ``outro`` after them (one of them shows ``{query}``), an optional ``system`` message,
    and how one ``passage`` is shown (``id_slot`` and ``{passage}`` once each; no other text shows
    ``{passage}``). Subclasses set the default of ``passage`` and, if it differs, ``id_slot``."""

    id_slot: ClassVar[str] = "{id}"
    intro: str
    outro: str
    system: str | None = None
    passage: str = "{id} {passage}"

    def __post_init__(self) -> None:
        super().__post_init__()
        where = f"{self.prefix} {self.name!r}"
        if self.passage.count("{passage}") != 1 or self.passage.count(self.id_slot) != 1:
            raise ValueError(f"{where}: 'passage' must contain {self.id_slot} and {{passage}} exactly once")
        for key in _field_types(type(self)):
            value = getattr(self, key)
            if key not in ("name", "passage", "title_format") and isinstance(value, str) and "{passage}" in value:
                raise ValueError(f"{where}: {{passage}} may only appear in 'passage'")
        if "{query}" not in self.intro + self.outro:
            raise ValueError(f"{where}: the intro or the outro must contain {{query}}")


# --- the registry -------------------------------------------------------------------------------------------

_KINDS: dict[str, type[Template]] = {}
_BUILTINS: dict[tuple[str, str], Template] = {}


def register(cls: type[Template], *builtins: Template) -> None:
    """Make ``cls`` the template class of its kind, and ``builtins`` its built-in templates by name."""
    _KINDS[cls.kind] = cls
    for t in builtins:
        _BUILTINS[(cls.kind, t.name)] = t


def _template_class(kind: str) -> type[Template]:
    if kind not in _KINDS:
        raise ValueError(f"unknown template kind {kind!r}: choose one of {', '.join(sorted(_KINDS))}")
    return _KINDS[kind]


def builtin_names(kind: str) -> list[str]:
    """The names of the built-in templates of ``kind``, sorted."""
    _template_class(kind)
    return sorted(name for k, name in _BUILTINS if k == kind)


_TOML_AT = re.compile(r"\s*\(at line (?P<line>\d+), column (?P<column>\d+)\)$")


def _toml_error(path: Path, e: tomllib.TOMLDecodeError) -> ValueError:
    # Python 3.14's TOMLDecodeError has lineno/colno; before, the position ends the message: "... (at line 2, column 5)"
    line, column, message = getattr(e, "lineno", None), getattr(e, "colno", None), getattr(e, "msg", None)
    if line is None:
        found = _TOML_AT.search(str(e))
        if found is None:
            return ValueError(f"{path}: cannot parse prompt template: {e}")
        line, column, message = int(found["line"]), int(found["column"]), str(e)[: found.start()]
    return DataFormatError(path, line, f"cannot parse prompt template: {message} at column {column}")


def load_template(path: str | Path, kind: str = "prompt") -> Any:
    """Load a template of ``kind`` from a TOML or JSON file (by its suffix), named after the file unless it says.

    The file is read as every text file is (:func:`llmrerank.data.read_text`: a byte-order mark dropped). A file
    that does not parse is a :class:`~llmrerank.data.DataFormatError` naming it and the line."""
    cls = _template_class(kind)
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"prompt file not found: {p}")
    text = read_text(p)
    try:
        data = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
    except json.JSONDecodeError as e:
        raise DataFormatError(p, e.lineno, f"cannot parse prompt template: {e.msg} at column {e.colno}") from None
    except tomllib.TOMLDecodeError as e:
        raise _toml_error(p, e) from None
    if not isinstance(data, dict):
        raise ValueError(f"{p}: a prompt template is a table of fields")
    return cls.from_dict({"name": p.stem, **data})


def get_template(template: str | Path | Template | Mapping[str, Any], kind: str = "prompt") -> Any:
    """A template of ``kind`` from a template, a mapping of its fields, a built-in name or a .toml/.json file.

    Kinds: ``prompt`` (``yes_no``, ``true_false``, ``query_likelihood``), ``listwise`` (``rankgpt``,
    ``rankzephyr-paraphrase``), ``comparison`` (``prp``, ``setwise``); and the model families' templates
    (:mod:`llmrerank.prompts.families`).
    """
    cls = _template_class(kind)
    if isinstance(template, cls):
        return template
    if isinstance(template, Mapping):
        return cls.from_dict(template)
    if not isinstance(template, (str, Path)):
        got = type(template).__name__
        raise TypeError(f"a {kind} template is a {cls.__name__}, a mapping, a built-in name or a file, not {got}")
    if (kind, str(template)) in _BUILTINS:
        return _BUILTINS[(kind, str(template))]
    if Path(template).is_file():
        return load_template(template, kind)
    if Path(template).suffix in (".toml", ".json"):
        raise FileNotFoundError(f"prompt file not found: {template}")
    raise ValueError(f"unknown {kind} template {template!r}: give one of {builtin_names(kind)} or a .toml/.json file")


# --- answer tokens ------------------------------------------------------------------------------------------


def continuation_ids(
    tokenizer: Any, context: str, words: Sequence[str], openers: Sequence[str] = ("",)
) -> tuple[str, list[int]]:
    """The token ids the model would emit for each of ``words`` right after ``context``.

    For the first opener (text written between the context and the word, e.g. ``""``, ``" "`` or ``"["``)
    under which every word extends the context's tokens by exactly one token, and the ids are distinct, return
    that opener and the ids. This reads the answer token where the model really writes it: after ``"Answer:"``
    the word is ``" yes"``, after a newline it is ``"yes"``.

    Raises:
        ValueError: no opener works; the message says what failed under each.
    """
    unk = getattr(tokenizer, "unk_token_id", None)
    problems = []
    for opener in openers:
        base = encode(tokenizer, context + opener)
        ids, bad = [], []
        for word in words:
            full = encode(tokenizer, context + opener + word)
            if full[: len(base)] == base and len(full) == len(base) + 1 and (unk is None or full[-1] != unk):
                ids.append(full[-1])
            else:
                bad.append(word)
        if not bad and len(set(ids)) == len(ids):
            return opener, ids
        problems.append(
            f"after {opener!r}: " + (f"{', '.join(map(repr, bad))} not single known tokens" if bad else "ids clash")
        )
    raise ValueError("; ".join(problems))


def word_openers(context: str) -> tuple[str, str]:
    """Openers to try for an answer word: none first after whitespace (or nothing), a space first otherwise."""
    return ("", " ") if not context or context[-1].isspace() else (" ", "")


# --- rendering ----------------------------------------------------------------------------------------------


class PromptTooLongError(ValueError):
    """The fixed parts of a prompt (instruction, query, suffix) leave no room for the document."""


@dataclass(frozen=True)
class RenderedPassages:
    """One multi-passage prompt as token ids, how many passages were cut, and the budget each was cut to."""

    ids: tuple[int, ...]
    truncated: int
    passage_budget: int


def fit_passages(
    pieces: Sequence[Sequence[int]],
    passages: Sequence[Sequence[int]],
    passage_tokens: int,
    max_length: int,
    reserve: int = 0,
    *,
    what: str = "prompt",
    about: str = "",
    hint: str = "raise max_length",
) -> RenderedPassages:
    """Interleave ``pieces`` (the text around the passages, one more than ``passages``) with the passages cut
    to one budget: ``passage_tokens``, or, if the prompt and ``reserve`` more tokens would then exceed
    ``max_length``, the room left shared evenly (rounded down) between the passages.

    Raises:
        PromptTooLongError: the pieces and ``reserve`` leave less than one token a passage; the message says
            ``what`` was rendered (``about`` it, in brackets, when given) and ``hint`` what to do.
    """
    if len(pieces) != len(passages) + 1:
        raise ValueError(f"{len(passages)} passages need {len(passages) + 1} pieces around them, got {len(pieces)}")
    fixed = sum(len(p) for p in pieces) + reserve
    room = max_length - fixed
    budget = passage_tokens
    if sum(min(len(p), budget) for p in passages) > room:
        budget = room // max(1, len(passages))
        if budget < 1:
            raise PromptTooLongError(
                f"the {what} without its {len(passages)} passages is {fixed} tokens{f' ({about})' if about else ''}, "
                f"which leaves no room for the passages within max_length={max_length}; {hint}"
            )
    ids = list(pieces[0])
    for passage, piece in zip(passages, pieces[1:]):
        ids.extend(passage[:budget])
        ids.extend(piece)
    return RenderedPassages(tuple(ids), sum(len(p) > budget for p in passages), budget)


class Renderer:
    """What every renderer shares: the template, the tokenizer, the length limit, the chat switch, encoding."""

    def __init__(self, template: Any, tokenizer: Any, max_length: int):
        if max_length < 1:
            raise ValueError(f"max_length must be positive, got {max_length}")
        self.template = template
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.use_chat = bool(template.chat and getattr(tokenizer, "chat_template", None))

    def encode(self, text: str) -> list[int]:
        return encode(self.tokenizer, text)

    def chat_text(self, messages: Sequence[Mapping[str, str]]) -> str:
        """The messages through the model's chat template (ending with the generation prompt), or, without
        one, their contents joined by blank lines (an empty system message left out) and a final newline."""
        if self.use_chat:
            return self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        shown = [m["content"] for m in messages if m["content"] or m["role"] != "system"]
        return "\n\n".join(shown) + "\n"


class PassageRenderer(Renderer):
    """A renderer of prompts that show several passages, each cut to ``passage_tokens`` (see :func:`fit_passages`)."""

    def __init__(self, template: Any, tokenizer: Any, passage_tokens: int = 100, max_length: int = 4096):
        if passage_tokens < 1:
            raise ValueError(f"passage_tokens must be positive, got {passage_tokens}")
        super().__init__(template, tokenizer, max_length)
        self.passage_tokens = passage_tokens
