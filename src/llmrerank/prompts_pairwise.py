"""Comparison prompt templates (pairwise and setwise) as data, rendered into token ids with a per-passage budget.

A comparison prompt shows a few passages, each under a letter label (``Passage A: "..."``), and asks which one
is the most relevant to the query; the answer starts with the ``assistant`` text (``"Passage"``) and its next
token is read as the label. Two built-ins:

- ``prp`` (pairwise, after Qin et al., 2024, PRP): two passages, "which is more relevant?";
- ``setwise`` (after Zhuang et al., 2024): up to 26 passages, "which is the most relevant?".

Both show the query, then the passages, then ask the question naming the query again.

Placeholders: ``{query}`` and ``{num}`` (how many passages are shown) in ``intro`` and ``outro``; ``{id}`` and
``{passage}`` in ``passage``. Values are substituted literally, so braces inside a query or a passage are safe.

Rendering tokenises the text around the passages whole and cuts only the passages, each to the same budget
(``passage_tokens``, lowered evenly if the prompt would exceed ``max_length``), so the instruction, the query,
the labels and the answer prefix are never truncated.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .prompts import PassageRenderer, PromptTooLongError, read_template_file, template_from_dict
from .prompts_listwise import fill

_SLOT = "\u0000LLMRERANK_PASSAGE\u0000"
LABELS = tuple(string.ascii_uppercase)


@dataclass(frozen=True)
class ComparisonTemplate:
    """A pairwise or setwise prompt as data (see the module docstring for the placeholders).

    Attributes:
        name: a short identifier written into run sidecars.
        intro: the instruction before the passages (``{query}``, ``{num}``).
        outro: the request after the passages (``{query}``, ``{num}``).
        system: an optional system message.
        passage: how one passage is shown; must contain ``{id}`` and ``{passage}`` once each.
        separator: the text between the intro, the passages and the outro.
        assistant: the text the answer starts with; the label is the next token.
        chat: apply the model's chat template when it has one.
        title_format: how a passage with a title is shown (``{title}``, ``{text}``).
    """

    name: str
    intro: str
    outro: str
    system: str | None = None
    passage: str = 'Passage {id}: "{passage}"'
    separator: str = "\n\n"
    assistant: str = "Passage"
    chat: bool = True
    title_format: str = "{title}\n{text}"

    def __post_init__(self) -> None:
        for key in self.__dataclass_fields__:
            value = getattr(self, key)
            want = bool if key == "chat" else str
            if not isinstance(value, want) and not (key == "system" and value is None):
                got = type(value).__name__
                raise ValueError(f"comparison template {self.name!r}: field {key!r} must be {want.__name__}, got {got}")
        if self.passage.count("{passage}") != 1 or self.passage.count("{id}") != 1:
            raise ValueError(
                f"comparison template {self.name!r}: 'passage' must contain {{id}} and {{passage}} exactly once"
            )
        for part_name in ("intro", "outro", "system", "assistant", "separator"):
            if "{passage}" in (getattr(self, part_name) or ""):
                raise ValueError(f"comparison template {self.name!r}: {{passage}} may only appear in 'passage'")
        if "{query}" not in self.intro + self.outro:
            raise ValueError(f"comparison template {self.name!r}: the intro or the outro must contain {{query}}")

    def document_text(self, text: str, title: str | None) -> str:
        return fill(self.title_format, title=title, text=text) if title else text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ComparisonTemplate:
        return template_from_dict(cls, data, "comparison", ("intro", "outro"))


# --- built-in templates -------------------------------------------------------------------------------------

# The query is shown first and asked about again after the passages: on a few clear cases this halved the
# position bias of the 0.5B preset against the PRP paper's wording (which puts the question first only).
PRP = ComparisonTemplate(
    name="prp",
    intro="Query: {query}",
    outro=(
        'Which of the two passages is more relevant to the query "{query}"? '
        "Answer with the label of the more relevant passage only:"
    ),
)

SETWISE = ComparisonTemplate(
    name="setwise",
    intro="Query: {query}",
    outro=(
        'Which of the {num} passages is the most relevant to the query "{query}"? '
        "Answer with the label of the most relevant passage only:"
    ),
)

COMPARISON_TEMPLATES: dict[str, ComparisonTemplate] = {t.name: t for t in (PRP, SETWISE)}


def get_comparison_template(template: str | Path | ComparisonTemplate | Mapping[str, Any]) -> ComparisonTemplate:
    """A built-in name (``prp``, ``setwise``), a ComparisonTemplate, a mapping, or a .toml/.json file."""
    if isinstance(template, ComparisonTemplate):
        return template
    if isinstance(template, Mapping):
        return ComparisonTemplate.from_dict(template)
    if str(template) in COMPARISON_TEMPLATES:
        return COMPARISON_TEMPLATES[str(template)]
    if Path(template).is_file():
        return ComparisonTemplate.from_dict(read_template_file(template))
    raise ValueError(
        f"unknown comparison template {template!r}: give one of {sorted(COMPARISON_TEMPLATES)} or a .toml/.json file"
    )


# --- rendering ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderedComparison:
    """One comparison prompt as token ids, and how many of its passages were cut to the budget."""

    ids: tuple[int, ...]
    truncated: int


class ComparisonRenderer(PassageRenderer):
    """Renders a comparison template for a tokenizer; labels are ``A``, ``B``, ... in the order shown.

    The text around the passages is tokenised once per (query, number of passages) and cached, so the many
    prompts of one query only tokenise their passages.
    """

    def __init__(self, template: ComparisonTemplate, tokenizer: Any, passage_tokens: int = 100, max_length: int = 4096):
        super().__init__(template, tokenizer, passage_tokens, max_length)
        self._pieces: dict[tuple[str, int], list[list[int]]] = {}

    def text_pieces(self, query: str, num: int) -> list[str]:
        """The prompt's text around ``num`` passage slots: ``num + 1`` pieces, the last ending with ``assistant``."""
        if not 1 <= num <= len(LABELS):
            raise ValueError(f"a comparison shows 1 to {len(LABELS)} passages, not {num}")
        t = self.template
        values = {"query": query, "num": str(num)}
        slots = [fill(t.passage, id=label).replace("{passage}", _SLOT) for label in LABELS[:num]]
        user = t.separator.join([fill(t.intro, **values), *slots, fill(t.outro, **values)])
        if self.use_chat:
            messages = [{"role": "system", "content": t.system}] if t.system is not None else []
            messages.append({"role": "user", "content": user})
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = (t.system + "\n\n" if t.system else "") + user + "\n"
        pieces = (text + t.assistant).split(_SLOT)
        if len(pieces) != num + 1:
            raise RuntimeError("the chat template dropped or repeated a passage slot")
        return pieces

    def pieces(self, query: str, num: int) -> list[list[int]]:
        key = (query, num)
        if key not in self._pieces:
            if len(self._pieces) > 256:
                self._pieces.clear()
            self._pieces[key] = [self.encode(p) for p in self.text_pieces(query, num)]
        return self._pieces[key]

    def passage_ids(self, text: str, title: str | None = None) -> list[int]:
        """A passage's token ids, uncut (cut at render time)."""
        return self.encode(self.template.document_text(text, title))

    def render(self, query: str, passages: Sequence[Sequence[int]]) -> RenderedComparison:
        """The prompt showing ``passages`` (token ids, as from :meth:`passage_ids`) labelled A, B, ..."""
        pieces = self.pieces(query, len(passages))
        fixed = sum(len(p) for p in pieces)
        room = self.max_length - fixed
        budget = self.passage_tokens
        if sum(min(len(p), budget) for p in passages) > room:
            budget = room // len(passages)
            if budget < 1:
                raise PromptTooLongError(
                    f"the comparison prompt without its {len(passages)} passages is {fixed} tokens (template "
                    f"{self.template.name!r}), which leaves no room for the passages within "
                    f"max_length={self.max_length}; raise max_length or lower the set size"
                )
        ids = list(pieces[0])
        for passage, piece in zip(passages, pieces[1:]):
            ids.extend(passage[:budget])
            ids.extend(piece)
        return RenderedComparison(tuple(ids), sum(len(p) > budget for p in passages))
