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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..types import Document
from .base import LABELS, SLOT, PassageRenderer, PassagesTemplate, RenderedPassages, fill, fit_passages, register


@dataclass(frozen=True)
class ComparisonTemplate(PassagesTemplate, kind="comparison", prefix="comparison template"):
    """A pairwise or setwise prompt as data, kind ``comparison`` (see the module docstring for the placeholders).

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

    passage: str = 'Passage {id}: "{passage}"'
    separator: str = "\n\n"
    assistant: str = "Passage"
    chat: bool = True
    title_format: str = "{title}\n{text}"


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

register(ComparisonTemplate, PRP, SETWISE)


# --- rendering ----------------------------------------------------------------------------------------------


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
        slots = [fill(t.passage, id=label, passage=SLOT) for label in LABELS[:num]]
        user = t.separator.join([fill(t.intro, **values), *slots, fill(t.outro, **values)])
        messages = [{"role": "system", "content": t.system}] if t.system is not None else []
        messages.append({"role": "user", "content": user})
        pieces = (self.chat_text(messages) + t.assistant).split(SLOT)
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
        return self.encode(self.template.document_text(Document(text, title=title)))

    def render(self, query: str, passages: Sequence[Sequence[int]]) -> RenderedPassages:
        """The prompt showing ``passages`` (token ids, as from :meth:`passage_ids`) labelled A, B, ..."""
        return fit_passages(
            self.pieces(query, len(passages)),
            passages,
            self.passage_tokens,
            self.max_length,
            what="comparison prompt",
            about=f"template {self.template.name!r}",
            hint="raise max_length or lower the set size",
        )
