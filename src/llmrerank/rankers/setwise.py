"""Setwise reranking (Zhuang et al., SIGIR 2024): the most relevant of a set of passages, sorted by heap or bubble.

A setwise prompt shows up to ``set_size`` passages labelled ``A``, ``B``, ... and asks which is the most
relevant; the winner is the label whose token has the highest logit at the answer position (one forward pass,
no generation; the labels must be single tokens, checked when the ranker is built; a tie goes to the passage
shown first). Sets are memoised within a query: a set asked again, in any order, keeps its first answer.

Sorting (``aggregation``; see :mod:`llmrerank.rankers.sorting`):

- ``"heapsort"`` (default): a heap with ``set_size - 1`` children per node, so each sift-down step is one
  comparison of a node and its children; the sift-downs of one heap level go to the model together.
- ``"bubblesort"``: ``sort_top_k`` passes from the bottom up, windows of ``set_size`` overlapping by one, the
  winner swapped to the top of each window.

Only the top ``sort_top_k`` (default 10) are fully sorted; the rest keep their input order below them. Scores
are ``n - rank``. Per-query accounting as for pairwise (``comparisons`` = ``llm_calls`` here: one prompt per
set; ``rounds``, ``prompt_tokens``, ``tokens``, ``truncated``, ``memo_hits``).

Reference: Zhuang et al., 2024, "A Setwise Approach to Effective and Highly Efficient Zero-shot Ranking with
Large Language Models".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..options import Options, option
from ..prompts import LABELS, SETWISE, ComparisonTemplate
from .comparison import DEFAULT_SORT_TOP_K, ComparisonOptions, ComparisonRanker, ComparisonState
from .sorting import SORTS, Comparison, SortProcess, bubble_sort, heap_sort


@dataclass(frozen=True)
class SetwiseOptions(ComparisonOptions):
    """The options of :class:`SetwiseRanker`."""

    method: ClassVar[str] = "setwise"
    default_template: ClassVar[ComparisonTemplate] = SETWISE

    set_size: int = option(4, "passages per prompt (labels A..Z)", minimum=2, maximum=len(LABELS))
    aggregation: str = option("heapsort", "heapsort or bubblesort of the top k", choices=SORTS)
    sort_top_k: int = option(DEFAULT_SORT_TOP_K, "fully sort this many; the rest keep their input order", minimum=1)


class SetwiseRanker(ComparisonRanker):
    """Setwise reranking: pick the best of ``set_size`` passages, heap or bubble sort of the top k on top.

    Options (:class:`SetwiseOptions`):
        set_size: passages per prompt, 2 to 26 (default 4).
        aggregation: ``"heapsort"`` (default) or ``"bubblesort"``.
        sort_top_k: how many of the best are fully sorted (default 10); the rest keep their input order.
        template: a comparison template (``setwise``, default), a ComparisonTemplate, or a .toml/.json file.
        passage_tokens: each passage is cut to this many tokens (100).
        max_length: the token budget of one prompt (4096); passages are cut further, evenly, to fit.

    Example::

        ranker = Reranker("setwise", model="smollm2-135m", set_size=3, aggregation="bubblesort")
    """

    method: ClassVar[str] = "setwise"
    Options: ClassVar[type[Options]] = SetwiseOptions

    def _label_count(self) -> int:
        return self.options.set_size

    def _process(self, size: int) -> SortProcess:
        sort = heap_sort if self.aggregation == "heapsort" else bubble_sort
        return sort(size, self.sort_top_k, set_size=self.set_size)

    def _presentations(self, comparison: Comparison) -> list[Comparison]:
        return [comparison]

    def _record(self, state: ComparisonState, comparison: Comparison, rows: list[list[float]]) -> int:
        """The memo holds the winning item."""
        (row,) = rows
        best = max(range(len(comparison)), key=lambda i: (row[i], -i))  # a tie: the one shown first
        return comparison[best]

    def _winner(self, comparison: Comparison, value: int) -> int:
        return value
