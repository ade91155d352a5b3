"""One-document prompt templates (pointwise and query likelihood), and their rendering into token ids.

A template has a ``system`` message (optional), a ``user`` message and an ``assistant`` prefix. The user
message holds the placeholders ``{query}`` and ``{document}``; for query likelihood the query is not in the
prompt but is the *target* the model is asked to produce after the assistant prefix.

Rendering keeps the document apart from everything else: the text before ``{document}`` (the head) and the
text after it (the tail, which ends with the assistant prefix) are tokenised whole, and only the document's
tokens are cut to fit ``max_length``. The instruction, the query and the answer suffix are never truncated.

The document is tokenised together with the text on its line before it (the *label*: ``"<Document>: "`` in
Qwen3-Reranker's prompt, ``"B: "`` in BGE's), as the models' own code tokenises it, so that the ids at the
boundary are the ones the model was trained on; a document that starts its own line (the built-in templates)
has no label. The label is never cut.

A template with a ``text_pair`` (RankLLaMA's ``query: ...`` / ``document: ...``) is tokenised as its reference
calls the tokenizer, ``tokenizer(user, text_pair)``: each text on its own, with the special tokens the tokenizer
puts around a pair of texts (for Llama-2, BOS before each), and no chat template.
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
            ``user`` (the pointwise ranker's ``instruction`` option replaces it).
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
    text_pair: str | None = None
    empty_title: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
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

    def _check_pair(self) -> None:
        pair = self.text_pair or ""
        if pair.count(DOCUMENT_SLOT) != 1 or DOCUMENT_SLOT in self.user:
            raise ValueError(f"template {self.name!r}: with a text_pair, {DOCUMENT_SLOT} appears once, in text_pair")
        if QUERY_SLOT not in self.user + pair:
            raise ValueError(f"template {self.name!r}: the user text or the text_pair must contain {QUERY_SLOT}")
        if INSTRUCTION_SLOT in pair:
            raise ValueError(f"template {self.name!r}: {INSTRUCTION_SLOT} may only appear in the user message")
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
    the tail (after the document), the query-likelihood target, and the document's label (the text on its line
    before it, tokenised with the document: :meth:`PromptRenderer.document_ids` starts with its ids)."""

    head: tuple[int, ...]
    tail: tuple[int, ...]
    target: tuple[int, ...] = ()
    label: str = ""
    label_ids: tuple[int, ...] = ()

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

    def _values(self, query: str) -> dict[str, str]:
        values = {"query": query, "document": SLOT}
        if INSTRUCTION_SLOT in self.template.user:
            values["instruction"] = self.template.extra["instruction"]
        return values

    def text_around_document(self, query: str) -> tuple[str, str]:
        """The prompt's text before and after the document slot, for ``query`` (of a text-pair template: the
        two texts joined, without the special tokens the tokenizer puts around them)."""
        t = self.template
        values = self._values(query)
        user = fill(t.user, **values)
        if t.text_pair is not None:
            head, _, tail = fill(t.text_pair, **values).partition(SLOT)
            return user + head, tail
        if t.verbatim:
            text = user + t.assistant
        else:
            messages = [{"role": "system", "content": t.system}] if t.system is not None else []
            messages.append({"role": "user", "content": user})
            text = self.chat_text(messages) + t.assistant
        head, sep, tail = text.partition(SLOT)
        if not sep:
            raise RuntimeError("the chat template dropped the document slot")
        return head, tail

    def parts(self, query: str) -> PromptParts:
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}")
        target: tuple[int, ...] = ()
        if self.template.target is not None:
            target = tuple(self.encode(fill(self.template.target, query=query)))
            if not target:
                raise ValueError("the query-likelihood target is empty: the query has no tokens")
        if self.pair is not None:
            # tokenizer(first, second): each text alone, the pair's special tokens around them
            before, between, after = self.pair
            values = self._values(query)
            head, _, tail = fill(self.template.text_pair or "", **values).partition(SLOT)
            cut = head.rfind("\n") + 1
            start = (*before, *self.encode(fill(self.template.user, **values)), *between, *self.encode(head[:cut]))
            end = (*self.encode(tail), *after)
        else:
            head, tail = self.text_around_document(query)
            cut = head.rfind("\n") + 1
            start, end = tuple(self.encode(head[:cut])), tuple(self.encode(tail))
        label = head[cut:]
        parts = PromptParts(tuple(start), tuple(end), target, label, tuple(self.encode(label)))
        if parts.fixed >= self.max_length:
            raise PromptTooLongError(
                f"the prompt without the document is {parts.fixed} tokens (template {self.template.name!r}), which "
                f"leaves no room for the document within max_length={self.max_length}; raise max_length or "
                "shorten the query or the template"
            )
        return parts

    def document_budget(self, parts: PromptParts) -> int:
        """How many tokens of its own a document may have in this prompt."""
        return self.max_length - parts.fixed

    def document_ids(self, doc: Document, parts: PromptParts) -> tuple[list[int], bool]:
        """The ids of the document's label and the document, tokenised together, cut to fit ``max_length``, and
        whether the document was cut."""
        if not parts.label:
            ids = self.encode(self.template.document_text(doc))
            budget = self.document_budget(parts)
            return ids[:budget], len(ids) > budget
        ids = self.encode(parts.label + self.template.document_text(doc))
        room = self.max_length - len(parts.head) - len(parts.tail) - len(parts.target)
        return ids[:room], len(ids) > room

    def render(self, query: str, doc: Document, parts: PromptParts | None = None) -> list[int]:
        """The prompt's token ids (without the target)."""
        parts = parts or self.parts(query)
        doc_ids, _ = self.document_ids(doc, parts)
        return [*parts.head, *doc_ids, *parts.tail]
