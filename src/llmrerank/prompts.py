"""Prompt templates as data, and their rendering into token ids.

A template has a ``system`` message (optional), a ``user`` message and an ``assistant`` prefix. The user
message holds the placeholders ``{query}`` and ``{document}``; for query likelihood the query is not in the
prompt but is the *target* the model is asked to produce after the assistant prefix.

Rendering keeps the document apart from everything else: the text before ``{document}`` (the head) and the
text after it (the tail, which ends with the assistant prefix) are tokenised whole, and only the document's
tokens are cut to fit ``max_length``. The instruction, the query and the answer suffix are never truncated.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .types import Document

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DOCUMENT_SLOT = "{document}"
QUERY_SLOT = "{query}"


class Tokenizer(Protocol):
    def __call__(self, text: str, add_special_tokens: bool = ...) -> Any: ...


@dataclass(frozen=True)
class PromptTemplate:
    """A prompt as data.

    Attributes:
        name: a short identifier written into run sidecars.
        user: the user message; must contain ``{document}``, and ``{query}`` unless the query is the target.
        system: an optional system message.
        assistant: text the assistant turn starts with (the answer suffix); the model's next token follows.
        chat: apply the model's chat template when it has one (``False`` renders the plain concatenation).
        title_format: how a document with a title is shown; ``{title}`` and ``{text}``.
        target: for query likelihood, the text whose tokens are scored (``" {query}"`` style), else ``None``.
    """

    name: str
    user: str
    system: str | None = None
    assistant: str = ""
    chat: bool = True
    title_format: str = "{title}\n{text}"
    target: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        types = {
            "name": (str,),
            "user": (str,),
            "system": (str, type(None)),
            "assistant": (str,),
            "chat": (bool,),
            "title_format": (str,),
            "target": (str, type(None)),
        }
        for key, allowed in types.items():
            value = getattr(self, key)
            if not isinstance(value, allowed):
                want = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
                raise ValueError(f"template {self.name!r}: field {key!r} must be {want}, got {type(value).__name__}")
        unknown = set(re.findall(r"\{(\w+)\}", self.title_format)) - {"title", "text"}
        if unknown:
            raise ValueError(f"template {self.name!r}: title_format may only use {{title}} and {{text}}, not {unknown}")
        if self.user.count(DOCUMENT_SLOT) != 1:
            raise ValueError(f"template {self.name!r}: the user message must contain {DOCUMENT_SLOT} exactly once")
        for part_name, part in (("system", self.system or ""), ("assistant", self.assistant)):
            if DOCUMENT_SLOT in part or QUERY_SLOT in part:
                raise ValueError(f"template {self.name!r}: the {part_name} text may not contain placeholders")
        if self.target is None and QUERY_SLOT not in self.user:
            raise ValueError(f"template {self.name!r}: the user message must contain {QUERY_SLOT}")
        if self.target is not None and QUERY_SLOT not in self.target:
            raise ValueError(f"template {self.name!r}: the target must contain {QUERY_SLOT}")
        if self.target is not None and QUERY_SLOT in self.user:
            raise ValueError(
                f"template {self.name!r}: a query-likelihood template must not show the query in the prompt"
            )

    def document_text(self, doc: Document) -> str:
        if doc.title:
            # one pass, so braces inside a title or text stay text
            parts = {"{title}": doc.title, "{text}": doc.text}
            return re.sub(r"\{title\}|\{text\}", lambda m: parts[m.group(0)], self.title_format)
        return doc.text

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["extra"] = dict(self.extra)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PromptTemplate:
        return template_from_dict(cls, data, "prompt", ("user",))


def template_from_dict(cls: type, data: Mapping[str, Any], kind: str, required: Sequence[str]) -> Any:
    """Build a template dataclass from a mapping: unknown fields and missing required ones are errors."""
    unknown = set(data) - set(cls.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown {kind} template field(s): {', '.join(sorted(unknown))}")
    for field_name in required:
        if field_name not in data:
            raise ValueError(f"a {kind} template needs the field {field_name!r}")
    return cls(**{"name": "custom", **dict(data)})


def read_template_file(path: str | Path) -> dict[str, Any]:
    """The fields of a template file (TOML, or JSON by its suffix), named after the file unless it says."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"prompt file not found: {p}")
    text = p.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"{p}: cannot parse prompt template: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{p}: a prompt template is a table of fields")
    return {"name": p.stem, **data}


def load_template(path: str | Path) -> PromptTemplate:
    """Load a template from a TOML or JSON file (the CLI's ``--prompt-file``)."""
    return PromptTemplate.from_dict(read_template_file(path))


# --- built-in templates -------------------------------------------------------------------------------------

YES_NO = PromptTemplate(
    name="yes_no",
    system="You are a search relevance judge.",
    user=(
        "Does the document answer the query? Reply with yes or no.\n"
        "Query: {query}\n"
        "Document:\n{document}\n"
        "Is the document relevant to the query? Answer yes or no."
    ),
)

TRUE_FALSE = PromptTemplate(
    name="true_false",
    system="You are a search relevance judge.",
    user=(
        "Query: {query}\n"
        "Document:\n{document}\n"
        "True or false: the document is relevant to the query. Answer true or false."
    ),
)

# UPR (Sachan et al., 2022): the score is the likelihood of the query given the passage.
QUERY_LIKELIHOOD = PromptTemplate(
    name="query_likelihood",
    user="Passage:\n{document}\nPlease write a question based on this passage.",
    target="{query}",
)

BUILTIN_TEMPLATES: dict[str, PromptTemplate] = {t.name: t for t in (YES_NO, TRUE_FALSE, QUERY_LIKELIHOOD)}


def get_template(template: str | PromptTemplate | Mapping[str, Any]) -> PromptTemplate:
    if isinstance(template, PromptTemplate):
        return template
    if isinstance(template, Mapping):
        return PromptTemplate.from_dict(template)
    if template in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[template]
    if Path(template).is_file():
        return load_template(template)
    raise ValueError(
        f"unknown prompt template {template!r}: give one of {sorted(BUILTIN_TEMPLATES)} or a .toml/.json file"
    )


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

    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    unk = getattr(tokenizer, "unk_token_id", None)
    problems = []
    for opener in openers:
        base = encode(context + opener)
        ids, bad = [], []
        for word in words:
            full = encode(context + opener + word)
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


class PassageRenderer:
    """What the multi-passage renderers (listwise, pairwise/setwise) share: budgets, the chat switch, encoding."""

    def __init__(self, template: Any, tokenizer: Any, passage_tokens: int = 100, max_length: int = 4096):
        if passage_tokens < 1:
            raise ValueError(f"passage_tokens must be positive, got {passage_tokens}")
        if max_length < 1:
            raise ValueError(f"max_length must be positive, got {max_length}")
        self.template = template
        self.tokenizer = tokenizer
        self.passage_tokens = passage_tokens
        self.max_length = max_length
        self.use_chat = bool(template.chat and getattr(tokenizer, "chat_template", None))

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


class PromptTooLongError(ValueError):
    """The fixed parts of a prompt (instruction, query, suffix) leave no room for the document."""


@dataclass(frozen=True)
class PromptParts:
    """Token ids of a template around the document slot, for one query."""

    head: tuple[int, ...]
    tail: tuple[int, ...]
    target: tuple[int, ...] = ()


_SENTINEL = "\u0000LLMRERANK_DOCUMENT\u0000"
_SLOTS = re.compile(re.escape(QUERY_SLOT) + "|" + re.escape(DOCUMENT_SLOT))


class PromptRenderer:
    """Renders a template for a tokenizer: head and tail token ids per query, document cut to fit."""

    def __init__(self, template: PromptTemplate, tokenizer: Any, max_length: int = 512):
        if max_length < 1:
            raise ValueError(f"max_length must be positive, got {max_length}")
        self.template = template
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.use_chat = bool(template.chat and getattr(tokenizer, "chat_template", None))

    def text_around_document(self, query: str) -> tuple[str, str]:
        """The prompt's text before and after the document slot, for ``query``."""
        t = self.template
        # one pass, so a query that itself contains "{document}" stays text
        slots = {QUERY_SLOT: query, DOCUMENT_SLOT: _SENTINEL}
        user = _SLOTS.sub(lambda m: slots[m.group(0)], t.user)
        if self.use_chat:
            messages = []
            if t.system is not None:
                messages.append({"role": "system", "content": t.system})
            messages.append({"role": "user", "content": user})
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            text += t.assistant
        else:
            text = (t.system + "\n\n" if t.system else "") + user + "\n" + t.assistant
        head, sep, tail = text.partition(_SENTINEL)
        if not sep:
            raise RuntimeError("the chat template dropped the document slot")
        return head, tail

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def parts(self, query: str) -> PromptParts:
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}")
        head, tail = self.text_around_document(query)
        target: tuple[int, ...] = ()
        if self.template.target is not None:
            target = tuple(self._encode(self.template.target.replace(QUERY_SLOT, query)))
            if not target:
                raise ValueError("the query-likelihood target is empty: the query has no tokens")
        parts = PromptParts(tuple(self._encode(head)), tuple(self._encode(tail)), target)
        fixed = len(parts.head) + len(parts.tail) + len(parts.target)
        if fixed >= self.max_length:
            raise PromptTooLongError(
                f"the prompt without the document is {fixed} tokens (template {self.template.name!r}), which "
                f"leaves no room for the document within max_length={self.max_length}; raise max_length or "
                "shorten the query or the template"
            )
        return parts

    def document_budget(self, parts: PromptParts) -> int:
        return self.max_length - len(parts.head) - len(parts.tail) - len(parts.target)

    def document_ids(self, doc: Document, parts: PromptParts) -> tuple[list[int], bool]:
        """The document's token ids cut to the budget, and whether it was cut."""
        ids = self._encode(self.template.document_text(doc))
        budget = self.document_budget(parts)
        return ids[:budget], len(ids) > budget

    def render(self, query: str, doc: Document, parts: PromptParts | None = None) -> list[int]:
        """The prompt's token ids (without the target)."""
        parts = parts or self.parts(query)
        doc_ids, _ = self.document_ids(doc, parts)
        return [*parts.head, *doc_ids, *parts.tail]
