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
from dataclasses import dataclass
from typing import ClassVar

from ..options import Options, option
from .comparison import COUNTERS, DEFAULT_SORT_TOP_K, ComparisonOptions, ComparisonRanker, ComparisonState
from .sorting import SORTS, Comparison, SortProcess, all_pairs, bubble_sort, heap_sort, order_by_scores, win_sums

AGGREGATIONS = ("allpairs", *SORTS)
SORTING = ("aggregation", SORTS)
ALL_PAIRS = ("aggregation", ("allpairs",))


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


@dataclass(frozen=True)
class PairwiseOptions(ComparisonOptions):
    """The options of :class:`PairwiseRanker`."""

    method: ClassVar[str] = "pairwise"

    aggregation: str = option(
        "allpairs", "allpairs (sum of win probabilities), heapsort or bubblesort of the top k", choices=AGGREGATIONS
    )
    sort_top_k: int = option(
        DEFAULT_SORT_TOP_K, "fully sort this many; the rest keep their input order", minimum=1, when=SORTING
    )
    pair_top_k: int | None = option(
        None, "allpairs: compare all pairs of the first N (default all)", types=int, minimum=1, when=ALL_PAIRS
    )


class PairwiseRanker(ComparisonRanker):
    """Pairwise reranking: all pairs summed (duoT5) or heap/bubble sort of the top k (PRP).

    Options (:class:`PairwiseOptions`):
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

    method: ClassVar[str] = "pairwise"
    Options: ClassVar[type[Options]] = PairwiseOptions
    counters: ClassVar[tuple[str, ...]] = (*COUNTERS, "position_conflicts")

    def _label_count(self) -> int:
        return 2

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

    def _record(self, state: ComparisonState, comparison: Comparison, rows: list[list[float]]) -> float:
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

    def _finish(self, state: ComparisonState) -> tuple[list[int], list[float]]:
        if self.aggregation != "allpairs":
            return super()._finish(state)
        size = state.size
        scores = win_sums(size, {(i, j): state.memo[frozenset((i, j))] for i, j in all_pairs(size)})
        head = order_by_scores(scores)
        tail = list(range(size, len(state.docs)))
        return [*head, *tail], [*(scores[i] for i in head), *(-1.0 - r for r in range(len(tail)))]
