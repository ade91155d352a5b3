"""What pairwise and setwise reranking share: label tokens, prompts, the per-query memo, batched rounds.

A comparison ranker runs a *process* per query (a generator of rounds of comparisons, from
:mod:`llmrerank.rankers.sorting`); each round's pending comparisons of every query go to the model together,
the label logits of their prompts are recorded in the query's memo, and the winners are sent back to the
process until it returns the final order. Subclasses (:mod:`.pairwise`, :mod:`.setwise`) say how a comparison
is shown and what its logits mean. Per-query accounting in ``Ranking.metadata``: ``comparisons``,
``llm_calls``, ``rounds``, ``prompt_tokens``, ``tokens``, ``truncated``, ``memo_hits``.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..backends.base import Backend
from ..options import Options, option, template_option
from ..prompts import LABELS, PRP, ComparisonRenderer, ComparisonTemplate, continuation_ids, word_openers
from ..types import DocLike, Document, Ranking, make_ranking
from .base import ListRanker, check_batch, check_finite
from .sorting import Comparison, SortProcess

DEFAULT_SORT_TOP_K = 10
COUNTERS = ("comparisons", "llm_calls", "rounds", "prompt_tokens", "tokens", "truncated", "memo_hits")


@dataclass(frozen=True)
class ComparisonOptions(Options):
    """The options pairwise and setwise share (each adds its own); ``template`` defaults to the method's."""

    default_template: ClassVar[ComparisonTemplate] = PRP

    template: Any = template_option("a comparison template (prp, setwise, or a .toml/.json file)", "comparison")
    passage_tokens: int = option(100, "each passage is cut to this many tokens", positive=True)
    max_length: int = option(4096, "token budget of one prompt (passages are cut further, evenly)", positive=True)

    def check(self) -> None:
        if self.template is None:
            object.__setattr__(self, "template", self.default_template)


@dataclass
class ComparisonState:
    """One query's progress through a comparison ranker: its sort process, the round being asked, the memo of
    answers (what a subclass's ``_record`` keeps per comparison), the passages' token ids and the counts."""

    query: str
    docs: list[Document]
    size: int  # candidates taking part (the first `size` of docs)
    process: Generator[list[Comparison], list[int], Any]
    counts: dict[str, int]
    round: list[Comparison] | None = None
    pending: list[Comparison] = field(default_factory=list)
    memo: dict[frozenset[int], Any] = field(default_factory=dict)
    passages: dict[int, list[int]] = field(default_factory=dict)
    result: Any = None


class ComparisonRanker(ListRanker):
    """What pairwise and setwise reranking share: label tokens, prompts, the memo, batched rounds, accounting.

    Subclasses say how a comparison is shown (:meth:`_presentations`), what the label logits of its prompts
    mean (:meth:`_record`, kept in the memo), who won (:meth:`_winner`), the process to run
    (:meth:`_process`) and the final order and scores (:meth:`_finish`).
    """

    method: ClassVar[str] = "comparison"
    counters: ClassVar[tuple[str, ...]] = COUNTERS

    def __init__(self, backend: Backend, options: Options | None = None, **given: Any):
        super().__init__(backend, options, **given)
        o = self.options
        self.renderer = ComparisonRenderer(o.template, backend.tokenizer, o.passage_tokens, o.max_length)
        self.labels = list(LABELS[: self._label_count()])
        self.opener, self.label_token_ids = self._label_ids(self.labels, self._label_token_ids)

    # -- start-up checks -------------------------------------------------------------------------------------

    def _label_token_ids(self) -> tuple[str, list[int]]:
        """The space written before the labels (none after whitespace, else a space first) and one token id per
        label: each label must extend the prompt by exactly one token, distinct, and not the unknown token."""
        tail = self.renderer.text_pieces("query", len(self.labels))[-1]
        problems = []
        for space in word_openers(tail):
            try:  # continuation_ids also refuses a label that is only the unknown token
                _, ids = continuation_ids(self.backend.tokenizer, tail, [space + label for label in self.labels])
                return space, ids
            except ValueError as e:
                problems.append(str(e))
        raise ValueError(
            f"{self.method} needs the labels {', '.join(self.labels)} to be single, distinct tokens after the answer "
            f"prefix {self.template.assistant!r} for this tokenizer, but {'; '.join(problems)}; "
            "change the template's 'assistant' or 'passage' text"
        )

    # -- to implement ----------------------------------------------------------------------------------------

    def _label_count(self) -> int:
        raise NotImplementedError

    def _presentations(self, comparison: Comparison) -> list[Comparison]:
        raise NotImplementedError

    def _record(self, state: ComparisonState, comparison: Comparison, rows: list[list[float]]) -> Any:
        raise NotImplementedError

    def _winner(self, comparison: Comparison, value: Any) -> int:
        raise NotImplementedError

    def _process(self, size: int) -> SortProcess:
        raise NotImplementedError

    def _size(self, n: int) -> int:
        return n

    def _finish(self, state: ComparisonState) -> tuple[list[int], list[float]]:
        """The final order over all of ``state.docs`` and its scores (default: the sort's order, ``n - rank``)."""
        order = [*state.result, *range(state.size, len(state.docs))]
        n = len(order)
        return order, [float(n - r) for r in range(n)]

    # -- the rounds ------------------------------------------------------------------------------------------

    def rank_many(self, queries: Sequence[str], docs: Sequence[Sequence[DocLike]]) -> list[Ranking]:
        """Rank several queries' lists; each round sends the pending comparisons of every query in one batch."""
        states = []
        for q, documents in check_batch(queries, docs):
            size = self._size(len(documents))
            state = ComparisonState(q, documents, size, self._process(size), dict.fromkeys(self.counters, 0))
            self._start(state)
            states.append(state)
        while True:
            waiting = [s for s in states if s.round is not None]
            if not waiting:
                break
            self._evaluate([(s, c) for s in waiting for c in s.pending])
            for s in waiting:
                s.counts["rounds"] += 1
                self._advance(s)
        return [self._ranking(s) for s in states]

    def _start(self, state: ComparisonState) -> None:
        try:
            state.round = next(state.process)
        except StopIteration as done:
            state.result = done.value
            return
        self._settle(state)

    def _settle(self, state: ComparisonState) -> None:
        """Advance through rounds the memo answers whole, up to one that needs the model (or the end)."""
        while state.round is not None:
            state.pending = list(dict.fromkeys(c for c in state.round if frozenset(c) not in state.memo))
            if state.pending:
                return
            self._advance(state)

    def _advance(self, state: ComparisonState) -> None:
        assert state.round is not None
        state.counts["memo_hits"] += len(state.round) - len(state.pending)
        state.pending = []
        winners = [self._winner(c, state.memo[frozenset(c)]) for c in state.round]
        try:
            state.round = state.process.send(winners)
        except StopIteration as done:
            state.round, state.result = None, done.value
            return
        self._settle(state)

    def _passage(self, state: ComparisonState, item: int) -> list[int]:
        if item not in state.passages:
            doc = state.docs[item]
            state.passages[item] = self.renderer.passage_ids(doc.text, doc.title)
        return state.passages[item]

    def _evaluate(self, jobs: Sequence[tuple[ComparisonState, Comparison]]) -> None:
        """Ask the model every comparison of ``jobs`` (one prompt per presentation) and fill the memos."""
        prompts: list[tuple[int, ...]] = []
        sizes: list[int] = []
        for state, comparison in jobs:
            for shown in self._presentations(comparison):
                rendered = self.renderer.render(state.query, [self._passage(state, i) for i in shown])
                prompts.append(rendered.ids)
                sizes.append(len(shown))
                c = state.counts
                c["llm_calls"] += 1
                c["prompt_tokens"] += len(rendered.ids)
                c["tokens"] += len(rendered.ids)
                c["truncated"] += rendered.truncated
        # One call for the whole round: the backend plans its passes (a token budget each, shared prefixes once)
        # and returns only the label tokens' logits, so a big round never holds an [n, vocab] tensor.
        logits = check_finite(self.backend.last_logits(prompts, columns=self.label_token_ids), "logits")
        rows = [row[:m] for row, m in zip(logits.tolist(), sizes)]
        k = 0
        for state, comparison in jobs:
            n_shown = len(self._presentations(comparison))
            state.memo[frozenset(comparison)] = self._record(state, comparison, rows[k : k + n_shown])
            state.counts["comparisons"] += 1
            k += n_shown

    def _ranking(self, state: ComparisonState) -> Ranking:
        if not state.docs:
            return make_ranking([], [], metadata=state.counts)
        order, scores = self._finish(state)
        return make_ranking(order, state.docs, scores, state.counts)

    def details(self) -> dict[str, Any]:
        return {"labels": self.labels, "label_opener": self.opener}
