"""One-document prompt templates (pointwise and query likelihood), and their rendering into token ids.

A template has a ``system`` message (optional), a ``user`` message and an ``assistant`` prefix. The user
message holds the placeholders ``{query}`` and ``{document}``; for query likelihood the query is not in the
prompt but is the *target* the model is asked to produce after the assistant prefix.

Rendering keeps the document apart from everything else: the text before ``{document}`` (the head) and the
text after it (the tail, which ends with the assistant prefix) are tokenised whole (or piece by piece, below),
and only the document's tokens are cut to fit ``max_length``. The instruction and the answer suffix are never
truncated, nor is the query unless the template says so (``query_share``, as two references do).

The document is tokenised together with the text on its line before it (the *label*: ``"<Document>: "`` in
Qwen3-Reranker's prompt, ``"B: "`` in BGE's), as the models' own code tokenises it, so that the ids at the
boundary are the ones the model was trained on; a document that starts its own line (the built-in templates)
has no label. The label is never cut.

A template with a ``text_pair`` (RankLLaMA's ``query: ...`` / ``document: ...``) is tokenised as its reference
calls the tokenizer, ``tokenizer(user, text_pair)``: each text on its own, with the special tokens the tokenizer
puts around a pair of texts (for Llama-2, BOS before each), and no chat template.

Three more features serve model families whose reference code builds the ids piece by piece:

- ``{break}`` in the user message splits the prompt into *pieces* that are tokenised apart and joined as ids
  (FlagEmbedding tokenises ``"A: query"``, ``"\n"``, ``"B: passage"``, ``"\n"`` and its instruction one by
  one; ``"?\n"`` alone and ``"\n"`` alone are other ids than ``"?\n\n"`` whole);
- ``bos``: the tokenizer's BOS id first;
- ``query_share`` and ``budget``: the query's piece cut to a share of ``max_length``, and what ``max_length``
  bounds (the whole prompt, or the query and document pieces as FlagEmbedding and mxbai-rerank count them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..types import Document
from .base import SLOT, PromptTooLongError, Renderer, Template, fill, pair_specials, register

DOCUMENT_SLOT = "{document}"
QUERY_SLOT = "{query}"
INSTRUCTION_SLOT = "{instruction}"
BREAK_SLOT = "{break}"
BUDGETS = ("prompt", "pair", "pair_and_tail")

# What stands in for a piece break and the query while the text is built (see SLOT).
_BREAK = "\u0000LLMRERANK_BREAK\u0000"
_QUERY = "\u0000LLMRERANK_QUERY\u0000"


@dataclass(frozen=True)
class PromptTemplate(Template, kind="prompt", required=("user",), prefix="template"):
    """A prompt as data (kind ``prompt``).

    Attributes:
        name: a short identifier written into run sidecars.
        user: the user message; must contain ``{document}``, and ``{query}`` unless the query is the target.
        system: an optional system message.
        assistant: text the assistant turn starts with (the answer suffix); the model's next token follows.
        chat: apply the model's chat template when it has one (``False`` renders the plain concatenation).
        title_format: how a document with a title is shown; ``{title}`` and ``{text}``.
        target: for query likelihood, the text whose tokens are scored (``" {query}"`` style), else ``None``.
        verbatim: the prompt is ``user`` followed by ``assistant``, exactly as written (special tokens such as
            ``<|im_start|>`` included): no chat template, nothing joined or added. For a model family whose
            reference code builds its prompt by hand (``system`` must then be empty).
        extra: other data; ``extra["instruction"]`` is the default of an ``{instruction}`` placeholder in
            ``user`` (the pointwise ranker's ``instruction`` option replaces it); with
            ``extra["instruction_format"]`` (e.g. ``"instruction: {instruction}\n"``) a non-empty instruction is
            shown through that format and an empty one not at all (an optional instruction line).
        bos: start the prompt with the tokenizer's BOS token, when it has one that is not also its padding token
            (FlagEmbedding's rule: such a BOS is padding, not a start).
        query_share: cut the query's piece (``{query}`` and the text around it up to the nearest ``{break}``s,
            its label included) to ``int(max_length * query_share)`` tokens, from the end (FlagEmbedding and
            mxbai-rerank cut theirs to 3/4 of their max_length). ``None``: the query is never cut.
        budget: what ``max_length`` bounds, the document being cut to fit: ``"prompt"`` (default) the whole
            prompt; ``"pair"`` the *pair*, from the query's piece to the end of the document (a BOS counted,
            the template's text before the query and after the document not), and the document's piece alone
            (mxbai-rerank v2's arithmetic); ``"pair_and_tail"`` the document's piece to ``max_length`` and the
            pair to ``max_length`` plus the tail's length (the text after the document; FlagEmbedding's LLM
            rerankers count so). In the pair budgets the prompt can be longer than ``max_length``.
        text_pair: the second text of a tokenizer text pair whose first is ``user``: the prompt is
            ``tokenizer(user, text_pair)``, with the special tokens the tokenizer adds to a pair and no chat
            template (RankLLaMA). ``{document}`` is then in ``text_pair``, not in ``user``.
        empty_title: show a document without a title through ``title_format`` too, with an empty title (as a
            reference that always writes ``{title} {passage}`` does).
    """

    user: str
    system: str | None = None
    assistant: str = ""
    chat: bool = True
    title_format: str = "{title}\n{text}"
    target: str | None = None
    verbatim: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)
    bos: bool = False
    query_share: float | None = None
    budget: str = "prompt"
    text_pair: str | None = None
    empty_title: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_lengths()
        if self.verbatim and self.system is not None:
            raise ValueError(f"template {self.name!r}: a verbatim template writes its system text inside 'user'")
        for part in (self.system or "", self.assistant):
            if INSTRUCTION_SLOT in part:
                raise ValueError(f"template {self.name!r}: {INSTRUCTION_SLOT} may only appear in the user message")
        if self.text_pair is not None:
            self._check_pair()
            return
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
        for part in (self.system, self.assistant, self.target):
            if part and BREAK_SLOT in part:
                raise ValueError(f"template {self.name!r}: {BREAK_SLOT} may only appear in the user message")

    def _check_pair(self) -> None:
        pair = self.text_pair or ""
        if pair.count(DOCUMENT_SLOT) != 1 or DOCUMENT_SLOT in self.user:
            raise ValueError(f"template {self.name!r}: with a text_pair, {DOCUMENT_SLOT} appears once, in text_pair")
        if QUERY_SLOT not in self.user + pair:
            raise ValueError(f"template {self.name!r}: the user text or the text_pair must contain {QUERY_SLOT}")
        if INSTRUCTION_SLOT in pair:
            raise ValueError(f"template {self.name!r}: {INSTRUCTION_SLOT} may only appear in the user message")
        if BREAK_SLOT in self.user + pair or self.bos:
            raise ValueError(f"template {self.name!r}: a text-pair template takes no {BREAK_SLOT} and no bos")
        if self.system is not None or self.assistant or self.target is not None:
            raise ValueError(
                f"template {self.name!r}: a text-pair template is the two texts alone (no system, assistant or target)"
            )

    def document_text(self, doc: Document) -> str:
        """How ``doc`` is shown: ``title_format`` filled in when it has a title (or always, with ``empty_title``),
        else its text."""
        if self.empty_title and not doc.title:
            return fill(self.title_format, title="", text=doc.text)
        return super().document_text(doc)

    def _check_lengths(self) -> None:
        where = f"template {self.name!r}"
        if self.budget not in BUDGETS:
            raise ValueError(f"{where}: budget must be one of {', '.join(BUDGETS)}, got {self.budget!r}")
        share = self.query_share
        if share is not None and (isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1):
            raise ValueError(f"{where}: query_share must be a number in (0, 1] or null, got {share!r}")
        if share is not None or self.budget != "prompt":
            between = self.user[self.user.find(QUERY_SLOT) : self.user.find(DOCUMENT_SLOT)]
            if QUERY_SLOT not in self.user or BREAK_SLOT not in between:
                raise ValueError(
                    f"{where}: query_share and the pair budgets need {QUERY_SLOT} in a piece of its own before "
                    f"{DOCUMENT_SLOT} (a {BREAK_SLOT} between them)"
                )


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

register(PromptTemplate, YES_NO, TRUE_FALSE, QUERY_LIKELIHOOD)


# --- rendering ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptParts:
    """Token ids of a template around the document slot, for one query: the head (up to the document's line),
    the tail (after the document), the query-likelihood target, the document's label (the text on its line
    before it, tokenised with the document: :meth:`PromptRenderer.document_ids` starts with its ids), and the
    room the label and the document have together (``room``; ``None``: what ``max_length`` leaves)."""

    head: tuple[int, ...]
    tail: tuple[int, ...]
    target: tuple[int, ...] = ()
    label: str = ""
    label_ids: tuple[int, ...] = ()
    room: int | None = None

    @property
    def fixed(self) -> int:
        """Tokens of the prompt that are not the document's own."""
        return len(self.head) + len(self.label_ids) + len(self.tail) + len(self.target)


class PromptRenderer(Renderer):
    """Renders a template for a tokenizer: head and tail token ids per query, document cut to fit."""

    def __init__(self, template: PromptTemplate, tokenizer: Any, max_length: int = 512):
        super().__init__(template, tokenizer, max_length)
        self.pair: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None = None
        if template.verbatim or template.text_pair is not None:
            self.use_chat = False
        if template.text_pair is not None:
            self.pair = pair_specials(tokenizer)
        if INSTRUCTION_SLOT in template.user and not isinstance(template.extra.get("instruction"), str):
            raise ValueError(
                f"template {template.name!r} has an {INSTRUCTION_SLOT} placeholder but no instruction: give one "
                "(the instruction option, or the template's extra.instruction)"
            )
        instruction_format = template.extra.get("instruction_format")
        if instruction_format is not None and (
            not isinstance(instruction_format, str) or INSTRUCTION_SLOT not in instruction_format
        ):
            raise ValueError(
                f"template {template.name!r}: extra.instruction_format must be a text with {INSTRUCTION_SLOT}"
            )

    def bos_ids(self) -> list[int]:
        """The BOS id the prompt starts with: none unless the template asks, the tokenizer has a BOS token and
        it is not also the padding token."""
        bos = getattr(self.tokenizer, "bos_token_id", None)
        if not self.template.bos or bos is None or bos == getattr(self.tokenizer, "pad_token_id", None):
            return []
        return [int(bos)]

    def instruction_text(self) -> str:
        """What the ``{instruction}`` placeholder shows (through ``extra["instruction_format"]`` if the template
        has one: nothing for an empty instruction)."""
        instruction = self.template.extra["instruction"]
        instruction_format = self.template.extra.get("instruction_format")
        if instruction_format is None:
            return instruction
        return fill(instruction_format, instruction=instruction) if instruction else ""

    def _text(self, query: str) -> str:
        """The whole prompt's text, the document slot, piece breaks and the query as stand-ins."""
        t = self.template
        values = {"query": _QUERY, "document": SLOT, "break": _BREAK}
        if INSTRUCTION_SLOT in t.user:
            values["instruction"] = self.instruction_text()
        user = fill(t.user, **values)
        if t.verbatim:
            return user + t.assistant
        messages = [{"role": "system", "content": t.system}] if t.system is not None else []
        messages.append({"role": "user", "content": user})
        return self.chat_text(messages) + t.assistant

    def _pair_values(self, query: str) -> dict[str, str]:
        values = {"query": query, "document": SLOT}
        if INSTRUCTION_SLOT in self.template.user:
            values["instruction"] = self.instruction_text()
        return values

    def text_around_document(self, query: str) -> tuple[str, str]:
        """The prompt's text before and after the document slot, for ``query`` (piece breaks dropped; of a
        text-pair template: the two texts joined, without the special tokens the tokenizer puts around them)."""
        t = self.template
        if t.text_pair is not None:
            values = self._pair_values(query)
            head, _, tail = fill(t.text_pair, **values).partition(SLOT)
            return fill(t.user, **values) + head, tail
        head, sep, tail = self._text(query).partition(SLOT)
        if not sep:
            raise RuntimeError("the chat template dropped the document slot")
        return tuple(part.replace(_BREAK, "").replace(_QUERY, query) for part in (head, tail))  # type: ignore[return-value]

    def parts(self, query: str) -> PromptParts:
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}")
        t = self.template
        if self.pair is not None:
            return self._pair_parts(query)
        head_text, sep, tail_text = self._text(query).partition(SLOT)
        if not sep:
            raise RuntimeError("the chat template dropped the document slot")
        pieces = head_text.split(_BREAK)
        cut = pieces[-1].rfind("\n") + 1
        label = pieces[-1][cut:].replace(_QUERY, query)
        pieces[-1] = pieces[-1][:cut]
        head: list[int] = []
        query_at = 0
        for piece in pieces:
            ids = self.encode(piece.replace(_QUERY, query))
            if _QUERY in piece:
                query_at = len(head)
                if t.query_share is not None:
                    ids = ids[: int(self.max_length * t.query_share)]
            head.extend(ids)
        bos = self.bos_ids()
        pair = len(bos) + len(head) - query_at  # what the pair budgets count before the document: BOS, query on
        head = bos + head
        tail = [i for piece in tail_text.replace(_QUERY, query).split(_BREAK) for i in self.encode(piece)]
        target: tuple[int, ...] = ()
        if t.target is not None:
            target = tuple(self.encode(fill(t.target, query=query)))
            if not target:
                raise ValueError("the query-likelihood target is empty: the query has no tokens")
        label_ids = tuple(self.encode(label))
        room = self.max_length - len(head) - len(tail) - len(target)
        if t.budget != "prompt":
            limit = self.max_length + (len(tail) if t.budget == "pair_and_tail" else 0)
            room = min(self.max_length, limit - pair)
        parts = PromptParts(tuple(head), tuple(tail), target, label, label_ids, room)
        if room <= len(label_ids):
            raise self._too_long(parts)
        return parts

    def _pair_parts(self, query: str) -> PromptParts:
        """``tokenizer(first, second)``: each text alone, the pair's special tokens around them."""
        before, between, after = self.pair or ((), (), ())
        values = self._pair_values(query)
        head, _, tail = fill(self.template.text_pair or "", **values).partition(SLOT)
        cut = head.rfind("\n") + 1
        start = (*before, *self.encode(fill(self.template.user, **values)), *between, *self.encode(head[:cut]))
        label = head[cut:]
        parts = PromptParts(tuple(start), (*self.encode(tail), *after), (), label, tuple(self.encode(label)))
        if parts.fixed >= self.max_length:
            raise self._too_long(parts)
        return parts

    def _too_long(self, parts: PromptParts) -> PromptTooLongError:
        return PromptTooLongError(
            f"the prompt without the document is {parts.fixed} tokens (template {self.template.name!r}), which "
            f"leaves no room for the document within max_length={self.max_length}; raise max_length or "
            "shorten the query or the template"
        )

    def document_budget(self, parts: PromptParts) -> int:
        """How many tokens of its own a document may have in this prompt."""
        return self._room(parts) - len(parts.label_ids)

    def _room(self, parts: PromptParts) -> int:
        if parts.room is not None:
            return parts.room
        return self.max_length - len(parts.head) - len(parts.tail) - len(parts.target)

    def document_ids(self, doc: Document, parts: PromptParts) -> tuple[list[int], bool]:
        """The ids of the document's label and the document, tokenised together, cut to fit ``max_length``, and
        whether the document was cut."""
        ids = self.encode(parts.label + self.template.document_text(doc))
        room = self._room(parts)
        return ids[:room], len(ids) > room

    def render(self, query: str, doc: Document, parts: PromptParts | None = None) -> list[int]:
        """The prompt's token ids (without the target)."""
        parts = parts or self.parts(query)
        doc_ids, _ = self.document_ids(doc, parts)
        return [*parts.head, *doc_ids, *parts.tail]
