"""The pure aggregation and sorting of pairwise/setwise reranking, driven by scripted comparators.

Worked examples are traced by hand in the comments: every comparison asked, in order, and the final order.
"""

from __future__ import annotations

import itertools
import random

import pytest

from llmrerank.rankers.sorting import (
    all_pairs,
    bubble_sort,
    complete_order,
    heap_sort,
    lockstep,
    order_by_scores,
    run_sort,
    win_sums,
)

# Item 1 is the best, then 3, 4, 0, 2.
REL = [1, 4, 0, 3, 2]


class Oracle:
    """A consistent comparator: the item with the highest relevance wins; a tie goes to the one shown first.
    Records every round it is asked."""

    def __init__(self, relevance):
        self.relevance = relevance
        self.rounds: list[list[tuple[int, ...]]] = []

    def __call__(self, round_):
        self.rounds.append(list(round_))
        return [max(c, key=lambda i: (self.relevance[i], -c.index(i))) for c in round_]

    @property
    def asked(self):
        return [c for r in self.rounds for c in r]


def test_heap_sort_pairwise_worked_example():
    oracle = Oracle(REL)
    order, asked = run_sort(heap_sort(5, k=2, set_size=2), oracle)
    # binary heap over slots 0..4 = items 0..4. Build, deepest internal node first:
    #   node 1 (children 3, 4): (1,3) -> 1, (1,4) -> 1: stays.
    #   node 0 (children 1, 2): (0,1) -> 1, (1,2) -> 1: swap -> heap [1,0,2,3,4]; node 1 now holds 0:
    #   (0,3) -> 3, (3,4) -> 3: swap -> heap [1,3,2,0,4].
    # Take 1 out; item 4 moves to the root: heap [4,3,2,0]. (4,3) is known (memo) -> 3, (3,2) -> 3: swap ->
    #   [3,4,2,0]; node 1 (child 3): (4,0) -> 4. Take 3 out: k = 2 reached, no sift.
    assert oracle.asked == [(1, 3), (1, 4), (0, 1), (1, 2), (0, 3), (3, 4), (3, 2), (4, 0)]
    assert asked == 8
    assert order == [1, 3, 0, 2, 4]  # the top 2, then the rest in input order


def test_heap_sort_setwise_worked_example():
    oracle = Oracle(REL)
    order, asked = run_sort(heap_sort(5, k=2, set_size=3), oracle)
    # sets of 3: a node and its 2 children in one comparison.
    #   node 1: (1,3,4) -> 1. node 0: (0,1,2) -> 1, swap -> [1,0,2,3,4]; node 1: (0,3,4) -> 3 -> [1,3,2,0,4].
    #   take 1; root <- 4: [4,3,2,0]: (4,3,2) -> 3 -> [3,4,2,0]; node 1: (4,0) -> 4. take 3.
    assert oracle.asked == [(1, 3, 4), (0, 1, 2), (0, 3, 4), (4, 3, 2), (4, 0)]
    assert (order, asked) == ([1, 3, 0, 2, 4], 5)


def test_bubble_sort_pairwise_worked_example():
    oracle = Oracle(REL)
    order, asked = run_sort(bubble_sort(5, k=2, set_size=2), oracle)
    # pass 0 from the bottom: (3,4) -> 3 stays; (2,3) -> 3 up: [0,1,3,2,4]; (1,3) -> 1 stays; (0,1) -> 1 up:
    #   [1,0,3,2,4]. pass 1 stops at slot 1: (2,4) -> 4 up: [1,0,3,4,2]; (3,4) known -> 3 stays;
    #   (0,3) -> 3 up: [1,3,0,4,2].
    assert oracle.asked == [(3, 4), (2, 3), (1, 3), (0, 1), (2, 4), (0, 3)]
    assert (order, asked) == ([1, 3, 0, 2, 4], 6)


def test_bubble_sort_setwise_worked_example():
    oracle = Oracle(REL)
    order, asked = run_sort(bubble_sort(5, k=2, set_size=3), oracle)
    # pass 0: (2,3,4) -> 3 swapped to the window top: [0,1,3,2,4]; (0,1,3) -> 1: [1,0,3,2,4].
    # pass 1: (3,2,4) is the set {2,3,4} again (memo) -> 3, already on top; (0,3) -> 3: [1,3,0,2,4].
    assert oracle.asked == [(2, 3, 4), (0, 1, 3), (0, 3)]
    assert (order, asked) == ([1, 3, 0, 2, 4], 3)


def test_comparison_counts_on_sorted_and_reversed_inputs():
    n = 10
    best_first = list(range(n, 0, -1))  # the input is already in order
    best_last = list(range(n))  # the input is reversed
    counts = {}
    for name, rel in (("sorted", best_first), ("reversed", best_last)):
        for sort, c in itertools.product(("heap", "bubble"), (2, 4)):
            process = (heap_sort if sort == "heap" else bubble_sort)(n, k=n, set_size=c)
            order, asked = run_sort(process, Oracle(rel))
            assert order == sorted(range(n), key=lambda i: -rel[i])
            counts[(name, sort, c)] = asked
    # bubble, pairs: the first pass asks the 9 adjacent pairs; on sorted input every later pass is memoised.
    # On reversed input each pass asks the pairs of the new leader with everything below: all 45 pairs.
    assert counts[("sorted", "bubble", 2)] == n - 1
    assert counts[("reversed", "bubble", 2)] == n * (n - 1) // 2
    # bubble, sets of 4 on sorted input: pass 0 asks (6,7,8,9) (3,4,5,6) (0,1,2,3); each later pass meets those
    # sets again (memo) except its own top window, cut at its start: (1,2,3) (2,3) -, (4,5,6) (5,6) -, (7,8,9)
    # (8,9), where "-" is a pass whose top window is one already asked.
    assert counts[("sorted", "bubble", 4)] == 9
    assert counts[("reversed", "bubble", 4)] == 16
    # heap sort of the whole list: well under the 45 pairs whatever the input (regression values)
    assert (counts[("sorted", "heap", 2)], counts[("reversed", "heap", 2)]) == (26, 29)
    assert (counts[("sorted", "heap", 4)], counts[("reversed", "heap", 4)]) == (15, 16)


def test_heap_build_runs_each_level_in_lockstep():
    oracle = Oracle(list(range(10)))
    run_sort(heap_sort(10, k=1, set_size=4), oracle)
    # arity 3: internal nodes 0..2; nodes 1 and 2 are the deepest level and go to the model together, then
    # the root's sift-down: item 0 meets the winners 6 and 9 and item 3, sinks to slot 2 and meets 7, 8, 2
    assert oracle.rounds == [[(2, 7, 8, 9), (1, 4, 5, 6)], [(0, 6, 9, 3)], [(0, 7, 8, 2)]]


@pytest.mark.parametrize("seed", range(3))
def test_top_k_exact_and_rest_in_input_order_for_any_consistent_comparator(seed):
    rng = random.Random(seed)
    for _ in range(200):
        n, k, c = rng.randint(0, 14), rng.randint(1, 12), rng.randint(2, 6)
        rel = [rng.random() for _ in range(n)]
        truth = sorted(range(n), key=lambda i: -rel[i])[: min(k, n)]
        for sort in (heap_sort, bubble_sort):
            order, _ = run_sort(sort(n, k, c), Oracle(rel))
            assert order == complete_order(truth, n), (sort.__name__, n, k, c)


def test_ties_never_swap():
    # a comparator that cannot separate anything answers with the item shown first: bubble sort keeps the input
    # order, and so does building a heap; taking the top out moves the last slot to the root (heap sort is not
    # stable)
    def first_shown(round_):
        return [comp[0] for comp in round_]

    for c in (2, 3, 5):
        assert run_sort(bubble_sort(7, 7, c), first_shown)[0] == list(range(7))
        assert run_sort(heap_sort(7, 1, c), first_shown)[0] == list(range(7))
        order, _ = run_sort(heap_sort(7, 7, c), first_shown)
        assert order[0] == 0 and sorted(order) == list(range(7))


def test_an_inconsistent_comparator_still_gives_a_permutation():
    def rock_paper_scissors(round_):
        beats = {(0, 1), (1, 2), (2, 0)}  # and lower ids beat higher otherwise
        out = []
        for comp in round_:
            best = comp[0]
            for other in comp[1:]:
                key = (other % 3, best % 3)
                if key in beats or (key[0] == key[1] and other < best):
                    best = other
            out.append(best)
        return out

    for sort, c in itertools.product((heap_sort, bubble_sort), (2, 4)):
        order, asked = run_sort(sort(9, 4, c), rock_paper_scissors)
        assert sorted(order) == list(range(9)) and asked > 0


def test_a_set_asked_again_in_another_order_comes_from_the_memo():
    memo = {}
    oracle = Oracle(REL)
    run_sort(bubble_sort(5, 2, 3), oracle, memo)
    assert memo[frozenset((2, 3, 4))] == 3 and len(memo) == 3
    again = Oracle(REL)
    order, asked = run_sort(heap_sort(5, 1, 2), again, memo={frozenset((1, 3)): 1})
    assert (1, 3) not in again.asked and order[0] == 1


def test_small_and_empty_inputs():
    for sort in (heap_sort, bubble_sort):
        assert run_sort(sort(0, 3), Oracle([])) == ([], 0)
        assert run_sort(sort(1, 3), Oracle([0])) == ([0], 0)
        assert run_sort(sort(2, 1), Oracle([0, 1])) == ([1, 0], 1)


def test_bad_arguments_and_bad_answers():
    with pytest.raises(ValueError, match="at least 1"):
        next(heap_sort(5, k=0))
    with pytest.raises(ValueError, match="set_size must be at least 2"):
        next(bubble_sort(5, k=2, set_size=1))
    with pytest.raises(ValueError, match="not one of"):
        run_sort(heap_sort(3, 2), lambda round_: [99 for _ in round_])
    with pytest.raises(ValueError, match="answered 0 of 1"):
        run_sort(bubble_sort(3, 2), lambda round_: [])
    with pytest.raises(ValueError, match="distinct items"):
        complete_order([1, 1], 3)


def test_lockstep_returns_each_steps_result():
    def step(items):
        winner = yield tuple(items)
        return winner * 10

    process = lockstep([step([1, 2]), step([3, 4])])
    assert next(process) == [(1, 2), (3, 4)]
    with pytest.raises(StopIteration) as done:
        process.send([2, 3])
    assert done.value.value == [20, 30]


# --- all pairs: sum of win probabilities --------------------------------------------------------------------


def test_win_sums_exact_arithmetic_and_order():
    # P(row beats column) for 4 items; the lower triangle is 1 - the upper
    prefer = {(0, 1): 0.25, (0, 2): 0.5, (0, 3): 0.875, (1, 2): 0.75, (1, 3): 0.5, (2, 3): 0.125}
    scores = win_sums(4, prefer)
    assert scores == [
        0.25 + 0.5 + 0.875,  # 1.625
        0.75 + 0.75 + 0.5,  # 2.0
        0.5 + 0.25 + 0.125,  # 0.875
        0.125 + 0.5 + 0.875,  # 1.5
    ]
    assert sum(scores) == 6.0  # n (n - 1) / 2 wins are shared out
    assert order_by_scores(scores) == [1, 0, 3, 2]
    assert order_by_scores([1.0, 2.0, 1.0, 2.0]) == [1, 3, 0, 2]  # ties keep their input order
    assert all_pairs(4) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    with pytest.raises(ValueError, match="must be a probability"):
        win_sums(2, {(0, 1): 1.5})
