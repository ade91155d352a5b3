"""The pure parts of listwise reranking: window planning, identifiers, parsing and repair (worked examples)."""

from __future__ import annotations

import pytest

from llmrerank.rankers.permutation import (
    apply_order,
    find_identifiers,
    make_identifiers,
    parse_permutation,
    plan_windows,
    repair_permutation,
)

# --- window planning ----------------------------------------------------------------------------------------


def test_100_candidates_window_20_step_10():
    assert plan_windows(100, 20, 10) == [
        (80, 100),
        (70, 90),
        (60, 80),
        (50, 70),
        (40, 60),
        (30, 50),
        (20, 40),
        (10, 30),
        (0, 20),
    ]


def test_25_candidates_the_front_window_is_shorter():
    # starts at 25 - 20 = 5; the next would start at -5, so it starts at 0 and ends 10 above the previous end
    assert plan_windows(25, 20, 10) == [(5, 25), (0, 15)]


@pytest.mark.parametrize(
    ("n", "window", "step", "expected"),
    [
        (0, 20, 10, []),
        (1, 20, 10, [(0, 1)]),
        (8, 20, 10, [(0, 8)]),
        (20, 20, 10, [(0, 20)]),
        (21, 20, 10, [(1, 21), (0, 11)]),
        (30, 20, 10, [(10, 30), (0, 20)]),
        (35, 20, 10, [(15, 35), (5, 25), (0, 15)]),
        (50, 20, 10, [(30, 50), (20, 40), (10, 30), (0, 20)]),
        (10, 4, 4, [(6, 10), (2, 6), (0, 2)]),
        (5, 3, 2, [(2, 5), (0, 3)]),
        (6, 3, 1, [(3, 6), (2, 5), (1, 4), (0, 3)]),
    ],
)
def test_window_plans(n, window, step, expected):
    assert plan_windows(n, window, step) == expected


@pytest.mark.parametrize("n", [2, 19, 20, 21, 37, 100, 101])
def test_windows_cover_every_position_and_overlap_by_window_minus_step(n):
    windows = plan_windows(n, 20, 10)
    assert windows[0][1] == n and windows[-1][0] == 0
    assert set().union(*(range(a, b) for a, b in windows)) == set(range(n))
    for (a, _), (_, d) in zip(windows, windows[1:]):
        assert d == a + 10  # each window ends where the previous began, plus the overlap of 20 - 10


@pytest.mark.parametrize(
    ("window", "step", "message"),
    [(1, 1, "window_size must be at least 2"), (20, 0, "step must be at least 1"), (10, 11, "may not exceed")],
)
def test_bad_window_options(window, step, message):
    with pytest.raises(ValueError, match=message):
        plan_windows(30, window, step)


# --- identifiers --------------------------------------------------------------------------------------------


def test_identifiers():
    assert make_identifiers("numbers", 12)[-3:] == ["10", "11", "12"]
    assert make_identifiers("letters", 20) == list("ABCDEFGHIJKLMNOPQRST")
    with pytest.raises(ValueError, match="up to 26"):
        make_identifiers("letters", 27)
    with pytest.raises(ValueError, match="unknown identifiers"):
        make_identifiers("roman", 3)


# --- parsing and repair -------------------------------------------------------------------------------------

NUM3 = ["1", "2", "3"]

PARSE_CASES = [
    # text, identifiers, order, missing, duplicates, unknown
    ("[2] > [1] > [3]", NUM3, (1, 0, 2), (), (), ()),
    ("[2]>[3]>[1]", NUM3, (1, 2, 0), (), (), ()),
    ("[ 2 ] > [ 1 ] > [ 3 ]", NUM3, (1, 0, 2), (), (), ()),  # a word-level tokenizer's decode
    ("[2] > [2] > [3]", NUM3, (1, 2, 0), (0,), ("2",), ()),
    ("[4] > [1]", NUM3, (0, 1, 2), (1, 2), (), ("4",)),
    ("", NUM3, (0, 1, 2), (0, 1, 2), (), ()),
    ("2 > 1 > 3", NUM3, (0, 1, 2), (0, 1, 2), (), ()),  # no brackets: nothing named
    ("The best is [3], then [1].", NUM3, (2, 0, 1), (1,), (), ()),
    ("[3] > [1] > [2", NUM3, (2, 0, 1), (1,), (), ()),  # cut off by the generation cap
    ("[] > [2, 3] > [1]", NUM3, (0, 1, 2), (1, 2), (), ("", "2, 3")),
    ("[[2]] > [1]", NUM3, (1, 0, 2), (2,), (), ()),
    ("[3] > [3] > [3] > [2] > [1]", NUM3, (2, 1, 0), (), ("3", "3"), ()),
    ("[B] > [a] > [A]", ["A", "B", "C"], (1, 0, 2), (2,), (), ("a",)),
    ("[10] > [1] > [2]", [str(i) for i in range(1, 11)], (9, 0, 1, *range(2, 9)), tuple(range(2, 9)), (), ()),
]


@pytest.mark.parametrize(("text", "ids", "order", "missing", "duplicates", "unknown"), PARSE_CASES)
def test_parse_and_repair(text, ids, order, missing, duplicates, unknown):
    p = parse_permutation(text, ids)
    assert p.order == order
    assert p.missing == missing
    assert p.duplicates == duplicates
    assert p.unknown == unknown
    assert p.repairs == len(missing) + len(duplicates) + len(unknown)
    assert sorted(p.order) == list(range(len(ids)))
    assert p.order == (*p.ranked, *p.missing)


def test_missing_identifiers_keep_their_previous_relative_order():
    ids = make_identifiers("letters", 6)
    p = repair_permutation(["E", "B"], ids)
    assert p.order == (4, 1, 0, 2, 3, 5)
    assert [ids[i] for i in p.missing] == ["A", "C", "D", "F"]


def test_find_identifiers_and_distinct_check():
    assert find_identifiers("x [1] y [ B ] [] [2, 3]") == ["1", "B", "", "2, 3"]
    with pytest.raises(ValueError, match="distinct"):
        repair_permutation(["1"], ["1", "1"])


def test_apply_order():
    assert apply_order(list("abcde"), 1, 4, (2, 0, 1)) == list("adbce")
    assert apply_order(list("abc"), 0, 3, (0, 1, 2)) == list("abc")
    with pytest.raises(ValueError, match="not a permutation"):
        apply_order(list("abcde"), 1, 4, (0, 0, 1))
