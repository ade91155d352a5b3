"""Listwise prompt templates as data, and their rendering into token ids with a per-passage token budget.

A listwise prompt shows a window of passages, each after an identifier in square brackets (``[1]`` or
``[A]``), and asks the model for an order such as ``[2] > [1] > [3]``. Two layouts:

- **multi-turn** (RankGPT): the instruction as a user turn, an assistant acknowledgement, then one user turn
  per passage each acknowledged by the assistant, and a final user turn asking for the ranking;
- **single-turn** (RankZephyr, FIRST): one user message with the instruction, all passages and the request.

Placeholders: ``{query}`` and ``{num}`` (the number of passages) in ``intro`` and ``outro``; ``{example}``
(an answer in the right format, e.g. ``[4] > [2]``) in ``outro``; ``{id}`` and ``{passage}`` in ``passage``
(which must show the identifier as ``[{id}]``); ``{id}`` in ``passage_reply``. Values are substituted
literally, so braces inside a query or a passage are safe.

Rendering tokenises the text around the passages whole and cuts only the passages, each to the same budget,
so the instruction, the query, the identifiers and the answer prefix are never truncated.

A template with ``fill_rule="rank_llm"`` (the exact RankZephyr, RankVicuna and FIRST prompts) is filled and cut as
rank_llm fills its templates instead: in the query and the passages ``[n]`` is written ``(n)`` (so no text
looks like an identifier), a passage's whitespace is collapsed and it is cut to ``int(300 * 20 / m)`` words in a
window of ``m``, lowered until the whole prompt, tokenised at once with the tokenizer's special tokens (as
rank_llm's vLLM call tokenises it), fits ``max_length`` less the answer's budget.

References: Sun et al., 2023, "Is ChatGPT Good at Search? Investigating Large Language Models as Re-Ranking
Agents" (RankGPT); Pradeep et al., 2023, "RankZephyr"; Reddy et al., 2024, "FIRST: Faster Improved Listwise
Reranking with Single Token Decoding".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..types import Document
from .base import (
    SLOT,
    PassageRenderer,
    PassagesTemplate,
    PromptTooLongError,
    RenderedPassages,
    fill,
    fit_passages,
    register,
)

FILL_RULES = ("tokens", "rank_llm")


@dataclass(frozen=True)
class ListwiseTemplate(PassagesTemplate, kind="listwise", prefix="listwise template"):
    """A listwise prompt as data, kind ``listwise`` (see the module docstring for the layouts and placeholders).

    Attributes:
        name: a short identifier written into run sidecars.
        intro: the instruction before the passages (``{query}``, ``{num}``).
        outro: the request after the passages (``{query}``, ``{num}``, ``{example}``).
        system: an optional system message.
        passage: how one passage is shown; must contain ``[{id}]`` and ``{passage}``.
        multi_turn: one chat turn per passage (RankGPT) instead of a single user message.
        intro_reply: multi-turn: the assistant's reply to the intro.
        passage_reply: multi-turn: the assistant's reply to each passage (``{id}``).
        separator: single-turn: the text between the intro, the passages and the outro.
        assistant: text the answer starts with (the model continues after it).
        chat: apply the model's chat template when it has one.
        title_format: how a passage with a title is shown (``{title}``, ``{text}``).
        fill_rule: ``"tokens"`` (passages cut to a token budget) or ``"rank_llm"`` (filled and cut as rank_llm
            fills its templates: see the module docstring; the ranker's ``passage_tokens`` does not apply).
    """

    id_slot = "[{id}]"
    passage: str = "[{id}] {passage}"
    multi_turn: bool = False
    intro_reply: str = ""
    passage_reply: str = ""
    separator: str = "\n"
    assistant: str = ""
    chat: bool = True
    title_format: str = "{title}\n{text}"
    fill_rule: str = "tokens"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fill_rule not in FILL_RULES:
            raise ValueError(
                f"{self.prefix} {self.name!r}: fill_rule must be one of {', '.join(FILL_RULES)}, got {self.fill_rule!r}"
            )


# --- built-in templates -------------------------------------------------------------------------------------

_REQUEST = (
    "Rank the {num} passages above by their relevance to the search query, most relevant first. List every "
    "identifier exactly once, separated by ' > ', for example {example}. Answer with the ranking only, "
    "without any other words."
)

RANKGPT = ListwiseTemplate(
    name="rankgpt",
    system="You are RankGPT, an intelligent assistant that ranks passages by their relevance to a search query.",
    intro=(
        "I will give you {num} passages, each marked with an identifier in square brackets. "
        "Rank them by their relevance to the query: {query}"
    ),
    intro_reply="Okay, please give me the passages.",
    passage="[{id}] {passage}",
    passage_reply="Received passage [{id}].",
    outro="Search query: {query}\n" + _REQUEST,
    multi_turn=True,
)

# Our paraphrase of the RankZephyr prompt (its results in docs/benchmarks.md were run with it); the exact prompt,
# word for word as rank_llm writes it, is the family template ``rankzephyr`` (prompts/families.py).
RANKZEPHYR_PARAPHRASE = ListwiseTemplate(
    name="rankzephyr-paraphrase",
    system="You are RankLLM, an intelligent assistant that ranks passages by their relevance to a search query.",
    intro=(
        "I will give you {num} passages, each marked with an identifier in square brackets. "
        "Rank them by their relevance to the search query: {query}\n"
    ),
    passage="[{id}] {passage}",
    outro="\nSearch query: {query}\n" + _REQUEST,
    separator="\n",
)

register(ListwiseTemplate, RANKGPT, RANKZEPHYR_PARAPHRASE)


def example_answer(identifiers: Sequence[str]) -> str:
    """An answer in the expected format for the prompt, e.g. ``[4] > [2]`` (``[2] > [1]`` for short windows)."""
    if len(identifiers) >= 4:
        return f"[{identifiers[3]}] > [{identifiers[1]}]"
    if len(identifiers) >= 2:
        return f"[{identifiers[1]}] > [{identifiers[0]}]"
    return f"[{identifiers[0]}]"


# --- rank_llm's filling ------------------------------------------------------------------------------------

_IDENTIFIER = re.compile(r"\[(\d+)\]")


def rank_llm_numbers(text: str) -> str:
    """rank_llm's ``_replace_number``: ``[n]`` written ``(n)``, in the query and in each passage."""
    return _IDENTIFIER.sub(r"(\1)", text)


def rank_llm_words(window: int) -> float:
    """The words a passage may have in a window of ``window`` passages before rank_llm lowers it to fit its
    context: ``300 * (20 / window)`` (rank_llm's ``create_prompt``; cut with ``int()``)."""
    return 300 * (20 / window)


# --- rendering ----------------------------------------------------------------------------------------------


class ListwiseRenderer(PassageRenderer):
    """Renders a listwise template for a tokenizer.

    Each passage is cut to ``passage_tokens``; if the prompt and ``reserve`` tokens (the answer) would still
    exceed ``max_length``, every passage's budget is lowered evenly until it fits. A prompt whose fixed parts
    alone leave no room raises :class:`~llmrerank.prompts.PromptTooLongError`.
    """

    def messages(self, query: str, identifiers: Sequence[str]) -> list[dict[str, str]]:
        """The chat messages of the prompt, each passage a slot (:data:`~llmrerank.prompts.base.SLOT`)."""
        t = self.template
        if t.fill_rule == "rank_llm":
            query = rank_llm_numbers(query)
        num = str(len(identifiers))
        intro = fill(t.intro, query=query, num=num)
        outro = fill(t.outro, query=query, num=num, example=example_answer(identifiers))
        slots = [fill(t.passage, id=label, passage=SLOT) for label in identifiers]
        messages: list[dict[str, str]] = []
        if t.system is not None:
            messages.append({"role": "system", "content": t.system})
        if t.multi_turn:
            messages.append({"role": "user", "content": intro})
            messages.append({"role": "assistant", "content": t.intro_reply})
            for label, slot in zip(identifiers, slots):
                messages.append({"role": "user", "content": slot})
                messages.append({"role": "assistant", "content": fill(t.passage_reply, id=label)})
            messages.append({"role": "user", "content": outro})
        else:
            messages.append({"role": "user", "content": t.separator.join([intro, *slots, outro])})
        return messages

    def text_pieces(self, query: str, identifiers: Sequence[str], answer_prefix: str = "") -> list[str]:
        """The prompt's text around the passage slots: ``len(identifiers) + 1`` pieces."""
        messages = self.messages(query, identifiers)
        pieces = (self.chat_text(messages) + self.template.assistant + answer_prefix).split(SLOT)
        if len(pieces) != len(identifiers) + 1:
            raise RuntimeError("the chat template dropped or repeated a passage slot")
        return pieces

    def render(
        self,
        query: str,
        docs: Sequence[Document],
        identifiers: Sequence[str],
        reserve: int = 0,
        answer_prefix: str = "",
    ) -> RenderedPassages:
        """Token ids of the prompt for ``docs`` labelled with ``identifiers``, leaving ``reserve`` tokens free."""
        if len(docs) != len(identifiers):
            raise ValueError(f"{len(docs)} passages but {len(identifiers)} identifiers")
        if self.template.fill_rule == "rank_llm":
            return self._render_rank_llm(query, docs, identifiers, reserve, answer_prefix)
        pieces = [self.encode(p) for p in self.text_pieces(query, identifiers, answer_prefix)]
        passages = [self.encode(self.template.document_text(d)) for d in docs]
        about = f"template {self.template.name!r}, answer budget {reserve}"
        return fit_passages(
            pieces,
            passages,
            self.passage_tokens,
            self.max_length,
            reserve,
            what="listwise prompt",
            about=about,
            hint="raise max_length or lower window_size",
        )

    def _render_rank_llm(
        self, query: str, docs: Sequence[Document], identifiers: Sequence[str], reserve: int, answer_prefix: str
    ) -> RenderedPassages:
        """The prompt as rank_llm's ``create_prompt`` builds it: passages cut to a word budget that is lowered
        (by the overflow over four tokens a passage, at least one word) until the prompt, tokenised whole with
        the tokenizer's special tokens, leaves ``reserve`` tokens within ``max_length``. Not done by rank_llm:
        its ftfy repair of the text (mojibake, curly quotes), which text in plain ASCII never needs."""
        pieces = self.text_pieces(query, identifiers, answer_prefix)
        words = [self.template.document_text(d).split() for d in docs]  # strip and collapse, as rank_llm
        room, m = self.max_length - reserve, len(docs)
        budget = rank_llm_words(m)
        while True:
            cut = max(0, int(budget))
            shown = [rank_llm_numbers(" ".join(w[:cut])) for w in words]
            text = "".join(p + s for p, s in zip(pieces, [*shown, ""]))
            ids = self.tokenizer(text, add_special_tokens=True)["input_ids"]
            if len(ids) <= room:
                return RenderedPassages(tuple(ids), sum(len(w) > cut for w in words), cut)
            if cut == 0:
                raise PromptTooLongError(
                    f"the listwise prompt without its {m} passages is {len(ids)} tokens (template "
                    f"{self.template.name!r}, answer budget {reserve}), which leaves no room for the passages "
                    f"within max_length={self.max_length}; raise max_length or lower window_size"
                )
            budget -= max(1, (len(ids) - room) // (m * 4))
