"""Listwise reranking: a sliding window of passages, each window ordered by the model as a whole.

The candidates are swept from the back of the list to the front in overlapping windows
(:func:`~llmrerank.rankers.permutation.plan_windows`); the model orders each window, and the next window (one
``step`` earlier) includes the best of the previous one, so strong candidates bubble up. ``passes`` repeats
the sweep. A window is ordered in one of two ways (``decoding``):

- ``"generate"`` (RankGPT, RankZephyr): the model writes a permutation such as ``[2] > [1] > [3]``, decoded
  greedily and capped to the tokens a full permutation needs; the answer is parsed and repaired
  (:func:`~llmrerank.rankers.permutation.parse_permutation`), and every repair is counted.
- ``"first"`` (FIRST): one forward pass; the window is ordered by the logits of the first answer token over
  the identifiers' tokens, with no decoding loop. The identifiers must then be single tokens for the model's
  tokenizer (letters A..Z; numbers fail from ``[10]`` on, which shares its first token with ``[1]``); this is
  checked when the ranker is built.

Scores are ``n - rank`` (strictly decreasing down the final order). Per-query accounting in
``Ranking.metadata``: ``llm_calls``, ``prompt_tokens``, ``generated_tokens``, ``tokens`` (their sum),
``truncated`` (passages cut to the budget, counted per window), ``repairs`` (= ``repairs_missing`` +
``repairs_duplicate`` + ``repairs_unknown``), ``windows_repaired``, ``windows_unchanged`` (windows the model
left in their input order: a small model that copies the order it was shown ranks exactly as the first
stage, and this count shows it); and ``trace``, one dict per window (its
span, the raw answer, the order read from it and the repairs).

References: Sun et al., 2023 (RankGPT); Pradeep et al., 2023 (RankZephyr); Reddy et al., 2024 (FIRST).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..backends.base import Backend
from ..options import Options, option, template_option
from ..prompts import RANKZEPHYR_PARAPHRASE, ListwiseRenderer, continuation_ids, encode
from ..prompts.families import family_names, get_family
from ..types import DocLike, Document, Ranking, make_ranking
from .base import ListRanker, check_batch, check_finite
from .permutation import (
    IDENTIFIER_KINDS,
    ParsedPermutation,
    apply_order,
    make_identifiers,
    parse_permutation,
    plan_windows,
)

DECODINGS = ("generate", "first")
# Text that may open the first identifier of the answer, tried in order for FIRST: the bare bracket, and the
# bracket after a space (for tokenizers that merge "[A" into one token at the start of a line).
OPENERS = ("[", " [")
COUNTERS = (
    "llm_calls",
    "prompt_tokens",
    "generated_tokens",
    "tokens",
    "truncated",
    "repairs",
    "repairs_missing",
    "repairs_duplicate",
    "repairs_unknown",
    "windows_repaired",
    "windows_unchanged",
)


@dataclass
class _QueryState:
    query: str
    docs: list[Document]
    order: list[int]
    windows: list[tuple[int, int]]
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    trace: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class _WindowResult:
    order: tuple[int, ...]
    prompt_tokens: int
    generated_tokens: int
    truncated: int
    output: str | None = None
    parsed: ParsedPermutation | None = None


@dataclass(frozen=True)
class ListwiseOptions(Options):
    """The options of :class:`ListwiseRanker`."""

    method: ClassVar[str] = "listwise"

    window_size: int = option(20, "candidates per window", minimum=2)
    step: int = option(10, "how far the window moves up the list", minimum=1)
    passes: int = option(1, "sweeps over the list", minimum=1)
    decoding: str = option(
        "generate", "generate a permutation, or FIRST (first-token logits, one forward pass)", choices=DECODINGS
    )
    identifiers: str | None = option(
        None, "passage identifiers (default numbers; letters for FIRST)", types=str, choices=IDENTIFIER_KINDS
    )
    template: Any = template_option(
        "a listwise template (rankzephyr-paraphrase, rankgpt, a family's, or a .toml/.json file)", "listwise"
    )
    passage_tokens: int = option(
        100, "each passage is cut to this many tokens (not for a rank_llm template: it cuts words)", positive=True
    )
    max_length: int = option(4096, "token budget of one window's prompt and its answer", positive=True)
    max_new_tokens: int | None = option(
        None, "generation cap (default: a full permutation)", types=int, minimum=1, when=("decoding", ("generate",))
    )
    family: str | None = option(
        None,
        "a listwise model family: rank_llm's exact prompt, identifiers and decoding",
        choices=family_names("listwise"),
    )

    @classmethod
    def build(cls, given: Mapping[str, Any], also: tuple[str, ...] = ()) -> ListwiseOptions:
        """As :meth:`Options.build`, with a ``family``'s options filled in where ``given`` leaves them out."""
        family = given.get("family")
        if isinstance(family, str):
            given = {**get_family(family, "listwise").options, **given}
        return super().build(given, also)

    def check(self) -> None:
        if self.template is None:
            object.__setattr__(self, "template", RANKZEPHYR_PARAPHRASE)
        if self.family is not None:
            family = get_family(self.family, "listwise")
            differ = [k for k, v in family.options.items() if getattr(self, k) != v]
            if differ:
                raise ValueError(
                    f"family {family.name!r} fixes {', '.join(differ)} (its reference: {family.reference}); leave "
                    f"{'it' if len(differ) == 1 else 'them'} out, or drop the family to use your own"
                )
        plan_windows(self.window_size, self.window_size, self.step)  # step may not exceed window_size
        if self.identifiers is None:
            object.__setattr__(self, "identifiers", "letters" if self.decoding == "first" else "numbers")
        make_identifiers(self.identifiers, self.window_size)  # letters go up to 26


class ListwiseRanker(ListRanker):
    """Sliding-window listwise reranking by permutation generation or by first-token logits (FIRST).

    Options (:class:`ListwiseOptions`):
        window_size: candidates per window (20).
        step: how far each window moves up the list (10); at most ``window_size``.
        passes: how many times the whole sweep runs (1).
        decoding: ``"generate"`` (write and parse a permutation) or ``"first"`` (first-token logits).
        identifiers: ``"numbers"`` or ``"letters"``; default numbers for ``generate``, letters for ``first``.
        template: a listwise template (``rankzephyr-paraphrase`` single-turn, default; ``rankgpt`` multi-turn;
            a family's exact one: ``rankzephyr``, ``rankvicuna``, ``first``), a ListwiseTemplate, or a .toml/.json
            file.
        passage_tokens: each passage is cut to this many tokens (100); a ``fill_rule="rank_llm"`` template cuts
            words instead, as rank_llm does.
        max_length: the token budget of one window's prompt plus its answer (4096); if a window would not
            fit, every passage's budget is lowered evenly.
        max_new_tokens: the generation cap; default (``None``): the tokens a full permutation of the window
            needs plus two (an end token and slack).
        family: ``rankzephyr``, ``rankvicuna`` or ``first``: rank_llm's exact template, identifiers and decoding
            (:mod:`llmrerank.prompts.families`).
    """

    method: ClassVar[str] = "listwise"
    Options: ClassVar[type[Options]] = ListwiseOptions

    def __init__(self, backend: Backend, options: ListwiseOptions | None = None, **given: Any):
        super().__init__(backend, options, **given)
        o = self.options
        self.labels = make_identifiers(o.identifiers, o.window_size)
        self.renderer = ListwiseRenderer(o.template, backend.tokenizer, o.passage_tokens, o.max_length)
        self._caps: dict[int, int] = {}
        self.opener = ""
        self.label_token_ids: list[int] = []
        if o.decoding == "first":
            self.opener, self.label_token_ids = self._label_ids(self.labels, self._first_token_ids)

    # -- start-up checks -------------------------------------------------------------------------------------

    def _first_token_ids(self) -> tuple[str, list[int]]:
        """The answer opener and one token id per identifier such that opener + identifier ends the prompt
        with exactly one more token; the ids must be distinct. Tries each of :data:`OPENERS`."""
        tail = self.renderer.text_pieces("query", self.labels)[-1]
        try:
            return continuation_ids(self.backend.tokenizer, tail, self.labels, OPENERS)
        except ValueError as e:
            raise ValueError(
                f"decoding='first' needs every identifier to be a single, distinct token for this tokenizer, but "
                f"with identifiers={self.identifiers!r} and window_size={self.window_size}: {e}. Use "
                "identifiers='letters' (numbers from 10 on share their first token with 1) or a smaller window"
            ) from e

    def _cap(self, m: int) -> int:
        """Tokens a full permutation of ``m`` identifiers needs, plus two (the end token and slack)."""
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        if m not in self._caps:
            labels = self.labels[:m]
            answers = [" > ".join(f"[{x}]" for x in order) for order in (labels, labels[::-1])]
            lengths = [len(encode(self.backend.tokenizer, a)) for a in answers]
            self._caps[m] = max(lengths) + 2
        return self._caps[m]

    # -- ordering windows ------------------------------------------------------------------------------------

    def _order_windows(self, jobs: Sequence[tuple[str, list[Document]]]) -> list[_WindowResult]:
        """Order several independent windows (of different queries) in one batched model call."""
        if not jobs:
            return []
        sizes = [len(docs) for _, docs in jobs]
        if self.decoding == "first":
            rendered = [self.renderer.render(q, docs, self.labels[: len(docs)], 0, self.opener) for q, docs in jobs]
            columns = self.label_token_ids[: max(sizes)]
            logits = check_finite(self.backend.last_logits([r.ids for r in rendered], columns=columns), "logits")
            results = []
            for row, r, m in zip(logits, rendered, sizes):
                scores = row[:m].tolist()
                order = tuple(sorted(range(m), key=lambda i: -scores[i]))
                results.append(_WindowResult(order, len(r.ids), 0, r.truncated))
            return results
        caps = [self._cap(m) for m in sizes]
        rendered = [self.renderer.render(q, docs, self.labels[: len(docs)], cap) for (q, docs), cap in zip(jobs, caps)]
        outputs = self.backend.generate([r.ids for r in rendered], caps)
        results = []
        for r, out, m in zip(rendered, outputs, sizes):
            text = self.template.assistant + self.backend.tokenizer.decode(out, skip_special_tokens=True)
            parsed = parse_permutation(text, self.labels[:m])
            results.append(_WindowResult(parsed.order, len(r.ids), len(out), r.truncated, text, parsed))
        return results

    # -- the sliding loop ------------------------------------------------------------------------------------

    def rank_many(self, queries: Sequence[str], docs: Sequence[Sequence[DocLike]]) -> list[Ranking]:
        """Rank several queries' lists. Windows of one query run in sequence (each depends on the previous);
        the k-th windows of all queries go to the model together in one batch."""
        states = []
        for q, documents in check_batch(queries, docs):
            n = len(documents)
            windows = plan_windows(n, self.window_size, self.step) * self.passes if n > 1 else []
            states.append(_QueryState(q, documents, list(range(n)), windows))
        k = 0
        while any(k < len(s.windows) for s in states):
            active = [s for s in states if k < len(s.windows)]
            jobs = [(s.query, [s.docs[i] for i in s.order[slice(*s.windows[k])]]) for s in active]
            for s, result in zip(active, self._order_windows(jobs)):
                self._apply(s, s.windows[k], result)
            k += 1
        return [self._ranking(s) for s in states]

    def _apply(self, state: _QueryState, window: tuple[int, int], result: _WindowResult) -> None:
        start, end = window
        state.order = apply_order(state.order, start, end, result.order)
        c = state.counts
        c["llm_calls"] += 1
        c["prompt_tokens"] += result.prompt_tokens
        c["generated_tokens"] += result.generated_tokens
        c["tokens"] += result.prompt_tokens + result.generated_tokens
        c["truncated"] += result.truncated
        c["windows_unchanged"] += list(result.order) == list(range(len(result.order)))
        entry: dict[str, Any] = {"start": start, "end": end, "order": list(result.order)}
        p = result.parsed
        if p is not None:
            c["repairs_missing"] += len(p.missing)
            c["repairs_duplicate"] += len(p.duplicates)
            c["repairs_unknown"] += len(p.unknown)
            c["repairs"] += p.repairs
            c["windows_repaired"] += p.repairs > 0
            entry.update(
                output=result.output,
                missing=[self.labels[i] for i in p.missing],
                duplicates=list(p.duplicates),
                unknown=list(p.unknown),
            )
        state.trace.append(entry)

    def _ranking(self, state: _QueryState) -> Ranking:
        return make_ranking(state.order, state.docs, metadata={**state.counts, "trace": state.trace})

    def details(self) -> dict[str, Any]:
        if self.options.decoding == "first":
            return {"answer_opener": self.opener}
        cap = self.options.max_new_tokens
        return {"max_new_tokens": cap if cap is not None else "full permutation + 2"}
