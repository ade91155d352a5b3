"""The pass planner: token-budget batches and shared-prefix groups, as pure functions of ids and lengths."""

from __future__ import annotations

import random

import pytest

from llmrerank.backends.planner import GROUP_COST, Pass, plan, plan_batches, prefix_groups


def test_batches_keep_each_pass_within_the_token_budget_and_the_row_cap():
    lengths = [10, 50, 20, 50, 5, 30, 30, 1]
    passes = plan_batches(lengths, max_tokens=100, max_rows=3)
    # longest first; 50+50 = 2 rows of 50 = 100 tokens; then 30, 30, 20 (3 × 30 = 90); then 10, 5, 1 (cap 3)
    assert passes == [[1, 3], [5, 6, 2], [0, 4, 7]]
    for p in passes:
        assert len(p) * max(lengths[i] for i in p) <= 100 and len(p) <= 3
    assert sorted(i for p in passes for i in p) == list(range(len(lengths)))


def test_a_sequence_over_the_budget_gets_a_pass_of_its_own():
    assert plan_batches([500, 3, 3], max_tokens=64, max_rows=16) == [[0], [1, 2]]


def test_batches_with_a_count_only_budget_match_fixed_size_batches_of_the_sorted_order():
    rng = random.Random(0)
    lengths = [rng.randint(1, 300) for _ in range(50)]
    passes = plan_batches(lengths, max_tokens=10**9, max_rows=16)
    order = sorted(range(50), key=lambda i: -lengths[i])
    assert passes == [order[i : i + 16] for i in range(0, 50, 16)]


@pytest.mark.parametrize("bad", [(0, 4), (4, 0), (-1, 1)])
def test_budgets_must_be_positive(bad):
    with pytest.raises(ValueError, match="at least 1"):
        plan_batches([3], *bad)


def _query_prompts(head: list[int], docs: list[list[int]], tail: list[int]) -> list[list[int]]:
    return [[*head, *d, *tail] for d in docs]


def test_prompts_of_one_query_share_their_head():
    head = list(range(100, 140))  # 40 tokens: instruction and query
    seqs = _query_prompts(head, [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10]], [99, 98])
    assert prefix_groups(seqs) == [(40, [0, 1, 2, 3])]


def test_two_queries_get_a_group_each_rather_than_one_on_the_instruction():
    instruction = list(range(200, 220))  # 20 tokens all prompts share
    qa, qb = list(range(300, 330)), list(range(400, 430))  # 30 more tokens per query
    a = _query_prompts([*instruction, *qa], [[i, i + 1] for i in range(1, 40, 4)], [9])
    b = _query_prompts([*instruction, *qb], [[i, i + 2] for i in range(1, 40, 4)], [9])
    seqs = [x for pair in zip(a, b) for x in pair]  # interleaved: groups do not rely on input order
    groups = prefix_groups(seqs)
    assert groups == [(50, list(range(0, 20, 2))), (50, list(range(1, 20, 2)))]


def test_one_shared_instruction_is_a_group_when_the_queries_have_one_document_each():
    instruction = list(range(200, 260))  # 60 tokens
    seqs = [[*instruction, 300 + i, 7, 8] for i in range(5)]
    assert prefix_groups(seqs) == [(60, [0, 1, 2, 3, 4])]


def test_short_or_unprofitable_prefixes_are_not_grouped():
    assert prefix_groups([[1, 2, 3, 4, 5, 6, 7, 40], [1, 2, 3, 4, 5, 6, 7, 41]]) == []  # 7 < MIN_PREFIX
    # two rows sharing 20 tokens save 20 - GROUP_COST < 0
    assert GROUP_COST > 20
    assert prefix_groups([[*range(20), 1], [*range(20), 2]]) == []
    assert prefix_groups([[5] * 50]) == [] and prefix_groups([]) == []


def test_a_prefix_leaves_every_member_its_last_token_and_respects_limits():
    seqs = [list(range(60)), list(range(60)), list(range(61))]  # two identical sequences, one a token longer
    ((length, members),) = prefix_groups(seqs)
    assert length == 59 and members == [0, 1, 2]
    ((length, _),) = prefix_groups(seqs, limits=[45, 50, 50])
    assert length == 45
    with pytest.raises(ValueError, match="3 sequences but 2 prefix limits"):
        prefix_groups(seqs, limits=[1, 2])


def _saved(seqs: list[list[int]], group: list[int]) -> int:
    """Tokens a group saves, computed directly: its common prefix (each member keeps its last token)."""
    if len(group) < 2:
        return 0
    shared = min(len(seqs[i]) - 1 for i in group)
    first = seqs[group[0]]
    for i in group[1:]:
        k = 0
        while k < shared and seqs[i][k] == first[k]:
            k += 1
        shared = k
    return max(0, (len(group) - 1) * shared - GROUP_COST) if shared >= 8 else 0


def test_grouping_saves_the_most_tokens_over_every_contiguous_grouping():
    """Brute force on small random sets: no grouping of the sorted order saves more than the planner's."""
    rng = random.Random(3)
    for _ in range(40):
        stems = [[rng.randint(0, 2) for _ in range(rng.randint(0, 60))] for _ in range(3)]
        seqs = [[*rng.choice(stems), *[rng.randint(0, 2) for _ in range(rng.randint(1, 40))]] for _ in range(7)]
        order = sorted(range(len(seqs)), key=lambda i: tuple(seqs[i]))

        best = 0
        n = len(order)
        for cuts in range(1 << (n - 1)):  # every contiguous segmentation of the sorted order
            groups, start = [], 0
            for k in range(n - 1):
                if cuts >> k & 1:
                    groups.append(order[start : k + 1])
                    start = k + 1
            groups.append(order[start:])
            best = max(best, sum(_saved(seqs, g) for g in groups))
        got = sum(max(0, (len(m) - 1) * p - GROUP_COST) for p, m in prefix_groups(seqs))
        assert got == best


def test_plan_runs_groups_first_then_the_rest_and_covers_every_sequence_once():
    head = list(range(100, 150))
    seqs = [*_query_prompts(head, [[i] * (i % 7 + 1) for i in range(1, 11)], [9]), [1, 2, 3], [4, 5]]
    passes = plan(seqs, max_tokens=32, max_rows=4)
    grouped = [p for p in passes if p.prefix]
    assert all(p.prefix == 50 and p.group == 0 for p in grouped)
    assert passes[: len(grouped)] == grouped and passes[-1] == Pass((10, 11))
    for p in grouped:  # the budget counts each row's own tokens after the prefix
        assert len(p.rows) * max(len(seqs[i]) - 50 for i in p.rows) <= 32 and len(p.rows) <= 4
    assert sorted(i for p in passes for i in p.rows) == list(range(12))
    assert [p.prefix for p in plan(seqs, 32, 4, reuse_prefix=False)] == [0] * len(plan(seqs, 32, 4, False))


def _cost(passes: list[list[int]], lengths: list[int], pass_cost: int) -> int:
    return sum(pass_cost + len(p) * max(lengths[i] for i in p) for p in passes)


def test_a_pass_cost_cuts_a_short_prompt_away_from_a_long_one():
    # one pass of four: 4 × 100 = 400 tokens, 262 of them padding; two passes: 2 × 100 + 2 × 20 = 240 plus a
    # second pass's cost. At 32 a pass two passes are cheaper (304 against 432); at 200 one is (600 against 640).
    lengths = [20, 100, 18, 90]
    assert plan_batches(lengths, max_tokens=10**6, max_rows=16) == [[1, 3, 0, 2]]  # no pass cost: fill the pass
    assert plan_batches(lengths, max_tokens=10**6, max_rows=16, pass_cost=32) == [[1, 3], [0, 2]]
    assert plan_batches(lengths, max_tokens=10**6, max_rows=16, pass_cost=200) == [[1, 3, 0, 2]]
    assert plan_batches(lengths, max_tokens=10**6, max_rows=16, pass_cost=0) == [[1], [3], [0], [2]]
    assert plan_batches([7, 7, 7], max_tokens=10**6, max_rows=16, pass_cost=0) == [[0, 1, 2]]  # no padding to save


def test_the_least_cost_plan_is_the_best_of_every_plan_within_the_budgets():
    """Brute force over every partition of a few sequences (any grouping, not only runs of the sorted order)."""

    def partitions(items: list[int]):
        if not items:
            yield []
            return
        first, rest = items[0], items[1:]
        for part in partitions(rest):
            yield [[first], *part]
            for k in range(len(part)):
                yield [*part[:k], [first, *part[k]], *part[k + 1 :]]

    rng = random.Random(3)
    for _ in range(40):
        lengths = [rng.randint(1, 60) for _ in range(rng.randint(1, 7))]
        max_tokens, max_rows, pass_cost = rng.randint(40, 200), rng.randint(1, 4), rng.choice([0, 5, 30, 100])
        got = plan_batches(lengths, max_tokens, max_rows, pass_cost)
        assert sorted(i for p in got for i in p) == list(range(len(lengths)))
        fits = [
            part for part in partitions(list(range(len(lengths))))
            if all(len(p) <= max_rows and (len(p) == 1 or len(p) * max(lengths[i] for i in p) <= max_tokens)
                   for p in part)
        ]
        assert all(len(p) <= max_rows for p in got)
        assert all(len(p) == 1 or len(p) * max(lengths[i] for i in p) <= max_tokens for p in got)
        assert _cost(got, lengths, pass_cost) == min(_cost(part, lengths, pass_cost) for part in fits)


def test_a_large_pass_cost_gives_as_few_passes_as_filling_them():
    rng = random.Random(4)
    lengths = [rng.randint(1, 300) for _ in range(60)]
    filled = plan_batches(lengths, max_tokens=2048, max_rows=16)
    costly = plan_batches(lengths, max_tokens=2048, max_rows=16, pass_cost=10**6)
    assert len(costly) == len(filled)
    assert _cost(costly, lengths, 0) <= _cost(filled, lengths, 0)  # and no more padding
    with pytest.raises(ValueError, match="pass_cost must be at least 0"):
        plan_batches(lengths, 2048, 16, pass_cost=-1)


def test_plan_passes_the_pass_cost_to_groups_and_the_rest():
    head = list(range(100, 140))
    seqs = [*_query_prompts(head, [[1] * 60, [2] * 2, [3] * 58, [4]], [9]), [5] * 70, [6] * 3]
    passes = plan(seqs, max_tokens=10**6, max_rows=16, pass_cost=16)
    assert [(p.rows, p.prefix) for p in passes] == [((0, 2), 40), ((1, 3), 40), ((4,), 0), ((5,), 0)]
    assert [(p.rows, p.prefix) for p in plan(seqs, 10**6, 16)] == [((0, 2, 1, 3), 40), ((4, 5), 0)]
