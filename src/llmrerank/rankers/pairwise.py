"""Pairwise reranking (duoT5, PRP), and the comparison machinery it shares with setwise reranking.

A pairwise prompt shows passages A and B and asks which is more relevant; the answer prefix is ``Passage`` and
P(A) is the softmax of the two label tokens' logits at the next position (``backend.last_logits``; the labels
must be single tokens, checked when the ranker is built). Every pair is asked in both orders and averaged to
cancel position bias::

    P(x beats y) = (P(A | x, y) + 1 - P(A | y, x)) / 2        so P(y beats x) = 1 - P(x beats y)

and ``position_conflicts`` counts the pairs whose two orders both preferred the same position. Comparisons are
memoised within a query: a pair is asked once, in whichever order it is met first.

Aggregation of the preferences into an order (``aggregation``):

- ``"allpairs"`` (duoT5's sym-sum): every pair of the first ``pair_top_k`` candidates (default: all) in one
  batch; a candidate's score is the sum of its win probabilities. Candidates beyond ``pair_top_k`` follow in
  input order with scores -1, -2, ... (below any sum of probabilities).
- ``"heapsort"`` and ``"bubblesort"`` (PRP-Sorting, PRP-Sliding): only the top ``sort_top_k`` (default 10) are
  fully sorted, with far fewer comparisons; the rest keep their input order below them. Scores are
  ``n - rank`` (strictly decreasing down the final order). See :mod:`llmrerank.rankers.sorting`.

Independent comparisons go to the model together: all pairs at once; the sift-downs of one heap level
together; and across the queries of ``rank_many``, each query's current round in one batch. Per-query
accounting in ``Ranking.metadata``: ``comparisons`` (asked of the model), ``llm_calls`` (prompts: two per
pairwise comparison), ``rounds`` (batched model calls the query waited for), ``prompt_tokens``, ``tokens``
(the same: nothing is generated), ``truncated`` (passages cut to the budget, per prompt), ``memo_hits``
(comparisons answered from the memo), ``position_conflicts``.

References: Pradeep et al., 2021 (duoT5, the mono-duo pattern); Qin et al., 2024, "Large Language Models are
Effective Text Rankers with Pairwise Ranking Prompting" (PRP).
"""

from __future__ import annotations

import math
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..backends.base import Backend
from ..prompts import LABELS, PRP, ComparisonRenderer, ComparisonTemplate, continuation_ids, get_template, word_openers
from ..types import DocLike, Document, Ranking
from .base import ListRanker, check_batch
from .sorting import Comparison, SortProcess, all_pairs, bubble_sort, heap_sort, order_by_scores, win_sums

AGGREGATIONS = ("allpairs", "heapsort", "bubblesort")
DEFAULT_SORT_TOP_K = 10
COUNTERS = ("comparisons", "llm_calls", "rounds", "prompt_tokens", "tokens", "truncated", "memo_hits")
# Sequences per backend call: bounds the [n, vocab] logits tensor a big round would otherwise return at once.
CHUNK = 128


@dataclass
class _QueryState:
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

    method = "comparison"
    counters: tuple[str, ...] = COUNTERS

    def _setup(
        self,
        backend: Backend,
        template: str | Path | ComparisonTemplate,
        passage_tokens: int,
        max_length: int,
        labels: int,
    ) -> None:
        self.backend = backend
        self.template = get_template(template, kind="comparison")
        self.passage_tokens = passage_tokens
        self.max_length = max_length
        self.renderer = ComparisonRenderer(self.template, backend.tokenizer, passage_tokens, max_length)
        self.labels = list(LABELS[:labels])
        self.opener, self.label_token_ids = self._label_token_ids()

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

    def _presentations(self, comparison: Comparison) -> list[Comparison]:
        raise NotImplementedError

    def _record(self, state: _QueryState, comparison: Comparison, rows: list[list[float]]) -> Any:
        raise NotImplementedError

    def _winner(self, comparison: Comparison, value: Any) -> int:
        raise NotImplementedError

    def _process(self, size: int) -> SortProcess:
        raise NotImplementedError

    def _size(self, n: int) -> int:
        return n

    def _finish(self, state: _QueryState) -> tuple[list[int], list[float]]:
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
            state = _QueryState(q, documents, size, self._process(size), dict.fromkeys(self.counters, 0))
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

    def _start(self, state: _QueryState) -> None:
        try:
            state.round = next(state.process)
        except StopIteration as done:
            state.result = done.value
            return
        self._settle(state)

    def _settle(self, state: _QueryState) -> None:
        """Advance through rounds the memo answers whole, up to one that needs the model (or the end)."""
        while state.round is not None:
            state.pending = list(dict.fromkeys(c for c in state.round if frozenset(c) not in state.memo))
            if state.pending:
                return
            self._advance(state)

    def _advance(self, state: _QueryState) -> None:
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

    def _passage(self, state: _QueryState, item: int) -> list[int]:
        if item not in state.passages:
            doc = state.docs[item]
            state.passages[item] = self.renderer.passage_ids(doc.text, doc.title)
        return state.passages[item]

    def _evaluate(self, jobs: Sequence[tuple[_QueryState, Comparison]]) -> None:
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
        label_ids = torch.tensor(self.label_token_ids)
        rows: list[list[float]] = []
        for start in range(0, len(prompts), CHUNK):
            logits = self.backend.last_logits(prompts[start : start + CHUNK])[:, label_ids]
            if torch.isnan(logits).any():
                raise FloatingPointError("the model produced NaN logits; check the dtype")
            rows.extend(row[:m] for row, m in zip(logits.tolist(), sizes[start : start + CHUNK]))
        k = 0
        for state, comparison in jobs:
            n_shown = len(self._presentations(comparison))
            state.memo[frozenset(comparison)] = self._record(state, comparison, rows[k : k + n_shown])
            state.counts["comparisons"] += 1
            k += n_shown

    def _ranking(self, state: _QueryState) -> Ranking:
        if not state.docs:
            return Ranking((), (), None, dict(state.counts))
        order, scores = self._finish(state)
        ids = None
        if all(d.id is not None for d in state.docs):
            ids = tuple(state.docs[i].id for i in order)  # type: ignore[misc]
        return Ranking(tuple(order), tuple(scores), ids, dict(state.counts))

    # -- the Ranker contract ---------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "model": getattr(self.backend, "name", None),
            "passage_tokens": self.passage_tokens,
            "max_length": self.max_length,
            "template": self.template.to_dict(),
            "chat_template_applied": self.renderer.use_chat,
            "labels": self.labels,
            "label_opener": self.opener,
        }


def _all_pairs_process(size: int) -> Generator[list[Comparison], list[int], None]:
    if size > 1:
        yield list(all_pairs(size))


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def pair_probability(a_first: Sequence[float], b_first: Sequence[float]) -> tuple[float, bool]:
    """P(x beats y) from the label logits ``[z_A, z_B]`` of the prompt showing (x, y) and of the one showing
    (y, x), and whether the two orders preferred the same position (a position conflict)."""
    p_xy = _sigmoid(a_first[0] - a_first[1])  # P(A) = the softmax over the two labels' logits
    p_yx = _sigmoid(b_first[0] - b_first[1])
    return (p_xy + 1.0 - p_yx) / 2.0, (p_xy - 0.5) * (p_yx - 0.5) > 0


class PairwiseRanker(ComparisonRanker):
    """Pairwise reranking: all pairs summed (duoT5) or heap/bubble sort of the top k (PRP).

    Args:
        backend: the model.
        aggregation: ``"allpairs"`` (default), ``"heapsort"`` or ``"bubblesort"``.
        sort_top_k: sorting only: how many of the best are fully sorted (default 10); the rest keep their input
            order below them.
        pair_top_k: allpairs only: compare all pairs of the first this many candidates (default: all); the rest
            follow in input order.
        template: a comparison template (``prp``, default), a ComparisonTemplate, or a .toml/.json file.
        passage_tokens: each passage is cut to this many tokens (100).
        max_length: the token budget of one prompt (4096); passages are cut further, evenly, to fit.

    ``Ranking.metadata``: see the module docstring. Example::

        ranker = Reranker("pairwise", model="smollm2-135m", aggregation="heapsort", sort_top_k=5)
        ranker.rank("who wrote pride and prejudice", passages).indices
    """

    method = "pairwise"
    counters = (*COUNTERS, "position_conflicts")

    def __init__(
        self,
        backend: Backend,
        aggregation: str = "allpairs",
        sort_top_k: int | None = None,
        pair_top_k: int | None = None,
        template: str | Path | ComparisonTemplate | None = None,
        passage_tokens: int = 100,
        max_length: int = 4096,
    ):
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {aggregation!r}: choose one of {', '.join(AGGREGATIONS)}")
        if aggregation == "allpairs" and sort_top_k is not None:
            raise ValueError("sort_top_k applies to aggregation='heapsort' or 'bubblesort'; allpairs uses pair_top_k")
        if aggregation != "allpairs" and pair_top_k is not None:
            raise ValueError("pair_top_k applies to aggregation='allpairs' only; sorting uses sort_top_k")
        if sort_top_k is not None and sort_top_k < 1:
            raise ValueError(f"sort_top_k must be at least 1, got {sort_top_k}")
        if pair_top_k is not None and pair_top_k < 1:
            raise ValueError(f"pair_top_k must be at least 1, got {pair_top_k}")
        self.aggregation = aggregation
        self.sort_top_k = sort_top_k if sort_top_k is not None else DEFAULT_SORT_TOP_K
        self.pair_top_k = pair_top_k
        self._setup(backend, template if template is not None else PRP, passage_tokens, max_length, labels=2)

    def _size(self, n: int) -> int:
        if self.aggregation == "allpairs" and self.pair_top_k is not None:
            return min(n, self.pair_top_k)
        return n

    def _process(self, size: int) -> SortProcess:
        if self.aggregation == "heapsort":
            return heap_sort(size, self.sort_top_k, set_size=2)
        if self.aggregation == "bubblesort":
            return bubble_sort(size, self.sort_top_k, set_size=2)
        return _all_pairs_process(size)  # type: ignore[return-value]

    def _presentations(self, comparison: Comparison) -> list[Comparison]:
        x, y = comparison
        return [(x, y), (y, x)]

    def _record(self, state: _QueryState, comparison: Comparison, rows: list[list[float]]) -> float:
        """The memo holds P(lower item id beats the higher one)."""
        x, y = comparison
        p, conflict = pair_probability(rows[0], rows[1])
        state.counts["position_conflicts"] += conflict
        return p if x < y else 1.0 - p

    def prefer(self, memo_value: float, x: int, y: int) -> float:
        """P(x beats y) from a memo entry of the pair."""
        return memo_value if x < y else 1.0 - memo_value

    def _winner(self, comparison: Comparison, value: float) -> int:
        x, y = comparison
        return x if self.prefer(value, x, y) >= 0.5 else y  # a tie keeps the one shown first

    def _finish(self, state: _QueryState) -> tuple[list[int], list[float]]:
        if self.aggregation != "allpairs":
            return super()._finish(state)
        size = state.size
        scores = win_sums(size, {(i, j): state.memo[frozenset((i, j))] for i, j in all_pairs(size)})
        head = order_by_scores(scores)
        tail = list(range(size, len(state.docs)))
        return [*head, *tail], [*(scores[i] for i in head), *(-1.0 - r for r in range(len(tail)))]

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["aggregation"] = self.aggregation
        if self.aggregation == "allpairs":
            d["pair_top_k"] = self.pair_top_k
        else:
            d["sort_top_k"] = self.sort_top_k
        return d
