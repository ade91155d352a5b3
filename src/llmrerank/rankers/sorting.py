"""Pure parts of pairwise and setwise reranking: turning comparisons into an order.

Nothing here touches a model. A *comparison* is a tuple of item ids shown together (two for pairwise, up to
the set size for setwise), and a comparator answers with the id of the one it prefers. The sorting
strategies are generators that yield *rounds* — lists of comparisons that do not depend on one another, so a
ranker can send a whole round to the model in one batch — and receive the winners, in the same order:

    process = heap_sort(n, k)
    round_ = next(process)
    round_ = process.send(winners_of(round_))   # ... until StopIteration, whose value is the final order

:func:`run_sort` drives a process with a plain (batched) comparator, memoising answers so that a set asked
twice is asked once; the rankers drive several queries' processes in lockstep through the model.

The top-k rule (both strategies): only the best ``k`` are fully sorted; every other item follows them **in
its input order**, whatever the sort did to it on the way (as PRP and setwise do: the partial work below the
top k is not an order worth keeping).

- :func:`heap_sort`: a max-heap with ``arity`` children per node; building it and taking the top ``k`` out.
  Each sift-down step asks for the best of a node and its children: one comparison when they fit in a set
  (setwise, ``set_size = arity + 1``), otherwise a fold over sets (pairwise: the node against its first child,
  the winner against the second). The sift-downs of one heap level touch disjoint subtrees, so they run in
  lockstep: one round per step, not one per node.
- :func:`bubble_sort`: ``k`` passes from the bottom of the list up; each compares a window of ``set_size``
  items and moves the winner to the window's top (swapping it with the item there); consecutive windows
  overlap by one, so the winner travels up. Pass ``i`` stops at position ``i``. Every step depends on the
  previous one: one comparison per round.
- :func:`win_sums`: the all-pairs aggregate (duoT5's sym-sum): each item's score is the sum of its win
  probabilities against every other item.

Ties: a comparator that cannot separate a set answers with the item shown first, which the strategies show
in their current order (parent before children, upper before lower), so a tie never swaps. (Heap sort is
still not stable: taking the top out moves the last slot to the root.)

References: Qin et al., 2024, "Large Language Models are Effective Text Rankers with Pairwise Ranking
Prompting" (PRP: all pairs, heap sort, sliding/bubble sort); Zhuang et al., 2024, "A Setwise Approach to
Effective and Highly Efficient Zero-shot Ranking with Large Language Models" (setwise heap and bubble sort);
Pradeep et al., 2021, "The Expando-Mono-Duo Design Pattern for Text Ranking with Pretrained Sequence-to-
Sequence Models" (duoT5, sym-sum).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Mapping, Sequence

Comparison = tuple[int, ...]
Round = list[Comparison]
SortProcess = Generator[Round, list[int], list[int]]
Step = Generator[Comparison, int, int]

SORTS = ("heapsort", "bubblesort")


def _check(n: int, k: int, set_size: int) -> None:
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    if k < 1:
        raise ValueError(f"the top k to sort must be at least 1, got {k}")
    if set_size < 2:
        raise ValueError(f"set_size must be at least 2, got {set_size}")


def complete_order(top: Sequence[int], n: int) -> list[int]:
    """``top`` followed by every other item of ``range(n)`` in input order (the top-k rule).

    >>> complete_order([3, 0], 5)
    [3, 0, 1, 2, 4]
    """
    chosen = set(top)
    if len(chosen) != len(top) or not chosen <= set(range(n)):
        raise ValueError(f"top {list(top)} must be distinct items of range({n})")
    return [*top, *(i for i in range(n) if i not in chosen)]


def _ask(comparison: Comparison) -> Step:
    """One comparison as a step: yields it, checks the answer, returns the winner."""
    winner = yield comparison
    if winner not in comparison:
        raise ValueError(f"the comparator answered {winner!r}, which is not one of {comparison}")
    return winner


def _best_of(items: Sequence[int], set_size: int) -> Step:
    """The best of ``items``: one comparison if they fit in a set, else a fold (the winner so far shown first,
    with the next ``set_size - 1`` items)."""
    best = yield from _ask(tuple(items[:set_size]))
    rest = list(items[set_size:])
    while rest:
        chunk, rest = rest[: set_size - 1], rest[set_size - 1 :]
        best = yield from _ask((best, *chunk))
    return best


def lockstep(steps: Iterable[Step]) -> Generator[Round, list[int], list[int]]:
    """Run independent steps together: each round holds the next comparison of every step still running.
    Returns what each step returned, in the order given."""
    results: dict[int, int] = {}
    pending: list[tuple[int, Step, Comparison]] = []
    for index, step in enumerate(steps):
        try:
            pending.append((index, step, next(step)))
        except StopIteration as done:
            results[index] = done.value
    while pending:
        winners = yield [c for _, _, c in pending]
        if len(winners) != len(pending):
            raise ValueError(f"a round of {len(pending)} comparisons got {len(winners)} answers")
        following = []
        for (index, step, _), winner in zip(pending, winners):
            try:
                following.append((index, step, step.send(winner)))
            except StopIteration as done:
                results[index] = done.value
        pending = following
    return [results[i] for i in sorted(results)]


def _sift_down(heap: list[int], node: int, size: int, arity: int, set_size: int) -> Step:
    while True:
        first = arity * node + 1
        children = list(range(first, min(first + arity, size)))
        if not children:
            return node
        winner = yield from _best_of([heap[node], *(heap[c] for c in children)], set_size)
        if winner == heap[node]:
            return node
        child = next(c for c in children if heap[c] == winner)
        heap[node], heap[child] = heap[child], heap[node]
        node = child


def heap_sort(n: int, k: int = 10, set_size: int = 2, arity: int | None = None) -> SortProcess:
    """The top ``k`` of ``n`` items by heap sort, the rest in input order after them (a process; see above).

    ``arity`` (children per node) defaults to ``max(2, set_size - 1)``: a binary heap for pairwise
    comparisons, and for sets of ``c`` a heap whose node and children fill exactly one set. The heap is built
    over the items in input order (item ``i`` at slot ``i``), level by level from the deepest; then the top is
    taken out ``k`` times, each time moving the last slot to the root and sifting it down (no sift after the
    ``k``-th, or when one item is left).
    """
    _check(n, k, set_size)
    arity = arity if arity is not None else max(2, set_size - 1)
    if arity < 1:
        raise ValueError(f"arity must be at least 1, got {arity}")
    heap = list(range(n))
    levels: dict[int, list[int]] = {}
    for node in range((n - 2) // arity, -1, -1) if n > 1 else ():
        depth, p = 0, node
        while p > 0:
            p = (p - 1) // arity
            depth += 1
        levels.setdefault(depth, []).append(node)
    for depth in sorted(levels, reverse=True):
        yield from lockstep(_sift_down(heap, node, n, arity, set_size) for node in levels[depth])
    top: list[int] = []
    size = n
    while size > 0 and len(top) < k:
        top.append(heap[0])
        size -= 1
        if len(top) == k or size == 0:
            break
        heap[0] = heap[size]
        yield from lockstep([_sift_down(heap, 0, size, arity, set_size)])
    return complete_order(top, n)


def bubble_sort(n: int, k: int = 10, set_size: int = 2) -> SortProcess:
    """The top ``k`` of ``n`` items by ``min(k, n - 1)`` bubble passes, the rest in input order after them.

    A pass ``i`` starts with the window of the last ``set_size`` items; the winner is swapped to the window's
    first slot, and the next window ends just below that slot (so it holds the winner) and is cut at ``i``.
    With pairs this is PRP's sliding window of adjacent comparisons; with sets of ``c`` each comparison moves
    the winner ``c - 1`` places up.
    """
    _check(n, k, set_size)
    order = list(range(n))
    passes = min(k, n - 1) if n > 0 else 0
    for i in range(passes):
        end = n
        while True:
            start = max(i, end - set_size)
            window = tuple(order[start:end])
            (winner,) = yield from lockstep([_ask(window)])
            j = start + window.index(winner)
            order[start], order[j] = order[j], order[start]
            if start == i:
                break
            end = start + 1
    return complete_order(order[: min(k, n)], n)


def run_sort(
    process: SortProcess,
    compare: Callable[[Round], Sequence[int]],
    memo: dict[frozenset[int], int] | None = None,
) -> tuple[list[int], int]:
    """Drive a sorting process with a batched comparator; returns (final order, comparisons asked).

    ``compare`` gets each round's comparisons not yet answered (a set already asked, in any order, is
    answered from ``memo``) and returns the winners. A round whose every comparison is known is not sent.
    """
    memo = {} if memo is None else memo
    asked = 0
    try:
        round_ = next(process)
        while True:
            new = list(dict.fromkeys(c for c in round_ if frozenset(c) not in memo))
            if new:
                winners = list(compare(new))
                if len(winners) != len(new):
                    raise ValueError(f"the comparator answered {len(winners)} of {len(new)} comparisons")
                for c, w in zip(new, winners):
                    memo[frozenset(c)] = w
                asked += len(new)
            round_ = process.send([memo[frozenset(c)] for c in round_])
    except StopIteration as done:
        return list(done.value), asked


def all_pairs(n: int) -> list[tuple[int, int]]:
    """Every unordered pair of ``range(n)`` once, as ``(i, j)`` with ``i < j``: ``n (n - 1) / 2`` of them."""
    return [(i, j) for i in range(n) for j in range(i + 1, n)]


def win_sums(n: int, prefer: Mapping[tuple[int, int], float]) -> list[float]:
    """All-pairs scores: ``score[i] = sum over j != i of P(i beats j)``.

    ``prefer[(i, j)]`` (``i < j``) is P(i beats j); P(j beats i) is ``1 - prefer[(i, j)]``. The scores sum to
    ``n (n - 1) / 2``.

    >>> win_sums(3, {(0, 1): 0.75, (0, 2): 0.5, (1, 2): 1.0})
    [1.25, 1.25, 0.5]
    """
    scores = [0.0] * n
    for i, j in all_pairs(n):
        p = prefer[(i, j)]
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"P({i} beats {j}) must be a probability, got {p}")
        scores[i] += p
        scores[j] += 1.0 - p
    return scores


def order_by_scores(scores: Sequence[float]) -> list[int]:
    """Items by score, best first; equal scores keep their input order."""
    return sorted(range(len(scores)), key=lambda i: -scores[i])
