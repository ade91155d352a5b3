"""Evaluation tests, with expected values computed by hand from the formulas.

nDCG: ir_measures (pytrec_eval, like trec_eval) uses the grade itself as the gain, linear, not 2^rel - 1:
    DCG@k = sum_{i=1..k} rel_i / log2(i + 1),  nDCG@k = DCG@k / DCG@k(ideal ordering of all judgements).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from scipy.stats import ttest_rel

from conftest import needs
from llmrerank.data import load_qrels, load_run
from llmrerank.evaluate import (
    DEFAULT_MEASURES,
    Evaluation,
    default_rel,
    evaluate_runs,
    format_table,
    paired_p,
    plot_per_query,
    resolve_measures,
)

TINY = Path(__file__).parent / "fixtures" / "tiny"


def dcg(grades, gain=lambda g: g):
    return sum(gain(g) / math.log2(i + 2) for i, g in enumerate(grades[:10]))


def ndcg(run_grades, all_grades, gain=lambda g: g):
    return dcg(run_grades, gain) / dcg(sorted(all_grades, reverse=True), gain)


# grades of tiny/run.trec in run order (unjudged d9 for q2 counts 0), and every grade of each query
RUN_GRADES = {"q1": [2, 3, 0, 1], "q2": [0, 3, 1, 0], "q3": [1, 0, 1, 3]}
ALL_GRADES = {"q1": [3, 2, 1, 0], "q2": [3, 2, 1, 0], "q3": [3, 1, 1, 0]}
NDCG = {q: ndcg(RUN_GRADES[q], ALL_GRADES[q]) for q in RUN_GRADES}
RR_REL2 = {"q1": 1.0, "q2": 1 / 2, "q3": 1 / 4}  # first grade >= 2: ranks 1, 2, 4
RR_REL1 = {"q1": 1.0, "q2": 1 / 2, "q3": 1.0}  # first grade >= 1: ranks 1, 2, 1


@pytest.fixture(scope="module")
def qrels():
    return load_qrels(TINY / "qrels" / "test.tsv")


@pytest.fixture(scope="module")
def run():
    return load_run(TINY / "run.trec")


def test_ndcg_and_rr_match_hand_computation(qrels, run):
    ev = evaluate_runs(qrels, {"first": run}, ["nDCG@10", "RR@10"])
    assert ev.rel == 2
    for q in RUN_GRADES:
        assert ev.per_query["first"]["nDCG@10"][q] == pytest.approx(NDCG[q], abs=1e-9)
        assert ev.per_query["first"]["RR@10"][q] == pytest.approx(RR_REL2[q], abs=1e-9)
    assert ev.aggregate["first"]["nDCG@10"] == pytest.approx(sum(NDCG.values()) / 3, abs=1e-9)
    assert ev.aggregate["first"]["RR@10"] == pytest.approx(sum(RR_REL2.values()) / 3, abs=1e-9)


def test_ndcg_gain_is_linear_not_exponential(qrels, run):
    ev = evaluate_runs(qrels, {"first": run}, ["nDCG@10"])
    exponential = ndcg(RUN_GRADES["q1"], ALL_GRADES["q1"], gain=lambda g: 2**g - 1)
    assert abs(exponential - NDCG["q1"]) > 1e-3  # the two conventions do differ here
    assert ev.per_query["first"]["nDCG@10"]["q1"] == pytest.approx(NDCG["q1"], abs=1e-9)


def test_rel_threshold_changes_binary_measures_only(qrels, run):
    ev1 = evaluate_runs(qrels, {"first": run}, ["nDCG@10", "RR@10"], rel=1)
    ev2 = evaluate_runs(qrels, {"first": run}, ["nDCG@10", "RR@10"], rel=2)
    assert ev1.per_query["first"]["RR@10"] == pytest.approx(RR_REL1)
    assert ev2.per_query["first"]["RR@10"] == pytest.approx(RR_REL2)
    assert ev1.per_query["first"]["nDCG@10"] == ev2.per_query["first"]["nDCG@10"]


def test_resolve_measures():
    measures = resolve_measures(["nDCG@10", "RR@10", "AP", "R@100", "P@5", "Success@3", "Judged@10"], rel=2)
    assert [str(m) for m in measures] == [
        "nDCG@10",
        "RR(rel=2)@10",
        "AP(rel=2)",
        "R(rel=2)@100",
        "P(rel=2)@5",
        "Success(rel=2)@3",
        "Judged@10",
    ]
    # an explicit threshold in the name wins
    assert resolve_measures(["RR(rel=1)@10"], rel=2)[0].params["rel"] == 1


@pytest.mark.parametrize("name", ["foo@10", "ndcg@10", "nDCG@x"])
def test_resolve_measures_unknown_name(name):
    with pytest.raises(ValueError, match=name.replace("@", ".")):
        resolve_measures([name], rel=1)


def test_default_rel():
    assert default_rel({"q": {"a": 1, "b": 0}}) == 1
    assert default_rel({"q": {"a": 1}, "r": {"b": 2}}) == 2
    assert default_rel({"q": {"a": 3}}) == 2


def test_missing_query_counts_zero(qrels, run):
    partial = {q: items for q, items in run.items() if q != "q3"}
    ev = evaluate_runs(qrels, {"full": run, "partial": partial})
    assert ev.query_ids == ["q1", "q2", "q3"]
    for m in DEFAULT_MEASURES:
        assert ev.per_query["partial"][m]["q3"] == 0.0
    expected = (NDCG["q1"] + NDCG["q2"]) / 3  # divided by 3, not 2
    assert ev.aggregate["partial"]["nDCG@10"] == pytest.approx(expected, abs=1e-9)
    # Judged@10 divides by the documents retrieved (at most 10): q1 4/4 judged, q2 3/4, q3 missing
    assert ev.aggregate["partial"]["Judged@10"] == pytest.approx((1.0 + 3 / 4 + 0.0) / 3)


def test_queries_without_judgements_or_outside_qrels_are_ignored():
    qrels = {"q1": {"a": 1}, "q2": {}}
    run = {"q1": [("a", 1.0)], "q2": [("a", 1.0)], "other": [("a", 1.0)]}
    ev = evaluate_runs(qrels, {"r": run}, ["RR@10"])
    assert ev.query_ids == ["q1"]
    assert ev.aggregate["r"]["RR@10"] == 1.0


def test_list_order_is_evaluated_not_scores():
    qrels = {"q": {"good": 1, "bad": 0}}
    # tied scores: trec_eval would break the tie by docid (descending: "good" first); we keep list order
    tied = {"q": [("bad", 1.0), ("good", 1.0)]}
    # scores contradicting the order: the order wins
    contradicting = {"q": [("bad", 1.0), ("good", 5.0)]}
    ev = evaluate_runs(qrels, {"tied": tied, "contra": contradicting}, ["RR@10"])
    assert ev.aggregate["tied"]["RR@10"] == 0.5
    assert ev.aggregate["contra"]["RR@10"] == 0.5


def _one_relevant_per_query(positions):
    """A run placing query i's single relevant document 'rel' at 1-based position positions[i]."""
    return {f"q{i}": [(f"junk{j}", 1.0) for j in range(p - 1)] + [("rel", 0.0)] for i, p in enumerate(positions)}


def test_p_value_equals_scipy_paired_t_test():
    qrels = {f"q{i}": {"rel": 1} for i in range(4)}
    base = _one_relevant_per_query([1, 2, 1, 4])  # RR 1, 1/2, 1, 1/4
    other = _one_relevant_per_query([1, 1, 2, 1])  # RR 1, 1, 1/2, 1
    ev = evaluate_runs(qrels, {"base": base, "other": other}, ["RR@10"])
    assert ev.per_query["other"]["RR@10"] == {"q0": 1.0, "q1": 1.0, "q2": 0.5, "q3": 1.0}
    expected = ttest_rel([1.0, 1.0, 0.5, 1.0], [1.0, 0.5, 1.0, 0.25]).pvalue
    assert 0 < expected < 1
    assert ev.p_values["other"]["RR@10"] == pytest.approx(expected, rel=1e-12)
    assert ev.p_values["base"]["RR@10"] is None


def test_p_value_pairs_missing_queries_as_zero():
    qrels = {f"q{i}": {"rel": 1} for i in range(4)}
    base = _one_relevant_per_query([1, 2, 1, 4])
    other = {q: items for q, items in _one_relevant_per_query([1, 1, 2, 1]).items() if q != "q3"}
    ev = evaluate_runs(qrels, {"base": base, "other": other}, ["RR@10"])
    expected = ttest_rel([1.0, 1.0, 0.5, 0.0], [1.0, 0.5, 1.0, 0.25]).pvalue
    assert ev.p_values["other"]["RR@10"] == pytest.approx(expected, rel=1e-12)


def test_p_value_is_one_when_runs_are_identical(qrels, run):
    ev = evaluate_runs(qrels, {"a": run, "b": dict(run)})
    assert all(ev.p_values["b"][m] == 1.0 for m in DEFAULT_MEASURES)
    assert not any(ev.significant("b", m) for m in DEFAULT_MEASURES)


def _clear_win():
    qrels = {f"q{i}": {"rel": 1} for i in range(8)}
    base = _one_relevant_per_query([2, 3, 2, 3, 2, 4, 2, 3])
    better = _one_relevant_per_query([1] * 8)
    return evaluate_runs(qrels, {"base": base, "better": better}, ["RR@10", "nDCG@10"])


def test_format_table_marks_significant_rows():
    ev = _clear_win()
    assert ev.p_values["better"]["RR@10"] < 0.05
    table = format_table(ev)
    lines = table.splitlines()
    assert lines[0].split() == ["run", "RR@10", "nDCG@10"]
    base_row = next(line for line in lines if line.startswith("base "))
    better_row = next(line for line in lines if line.startswith("better "))
    assert "†" not in base_row
    assert f"{ev.aggregate['better']['RR@10']:.4f}†" in better_row
    assert f"{ev.aggregate['base']['RR@10']:.4f}" in base_row
    assert lines[-1].startswith("† p < 0.05 vs base")
    assert lines.index(base_row) < lines.index(better_row)


def test_format_table_no_mark_when_not_significant(qrels, run):
    assert "†" not in "\n".join(format_table(evaluate_runs(qrels, {"a": run, "b": run})).splitlines()[:-1])


def test_to_dict_is_json_serialisable(qrels, run):
    ev = evaluate_runs(qrels, {"a": run, "b": run})
    d = json.loads(json.dumps(ev.to_dict()))
    assert d["baseline"] == "a"
    assert d["measures"] == list(DEFAULT_MEASURES)
    assert d["aggregate"]["a"]["nDCG@10"] == pytest.approx(sum(NDCG.values()) / 3)
    assert d["p_values"]["a"]["nDCG@10"] is None
    assert d["per_query"]["b"]["RR@10"]["q3"] == 0.25


def test_single_query_p_value_is_nan_and_serialises_as_none():
    ev = evaluate_runs({"q": {"a": 1}}, {"x": {"q": [("a", 1.0)]}, "y": {"q": [("b", 1.0), ("a", 0.0)]}})
    assert math.isnan(ev.p_values["y"]["RR@10"])
    assert ev.to_dict()["p_values"]["y"]["RR@10"] is None


def test_evaluate_runs_input_errors(qrels, run):
    with pytest.raises(ValueError, match="no runs"):
        evaluate_runs(qrels, {})
    with pytest.raises(ValueError, match="judge no query"):
        evaluate_runs({"q": {}}, {"r": run})
    with pytest.raises(ValueError, match="more than once"):
        evaluate_runs(qrels, {"r": run}, ["AP", "AP"])
    with pytest.raises(ValueError, match="bogus"):
        evaluate_runs(qrels, {"r": run}, ["bogus"])


def test_plot_per_query_writes_png(tmp_path):
    needs("matplotlib", "plot_per_query")
    ev = _clear_win()
    out = plot_per_query(ev, "RR@10", tmp_path / "plots" / "diff.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_per_query_errors(tmp_path, qrels, run):
    needs("matplotlib", "plot_per_query")
    with pytest.raises(ValueError, match="only the baseline"):
        plot_per_query(evaluate_runs(qrels, {"a": run}), "AP", tmp_path / "x.png")
    with pytest.raises(ValueError, match="not evaluated"):
        plot_per_query(_clear_win(), "AP", tmp_path / "x.png")


def test_plot_per_query_without_matplotlib_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r'pip install "llmrerank\[plot\]"'):
        plot_per_query(_clear_win(), "RR@10", tmp_path / "x.png")


def test_evaluation_is_a_dataclass_with_baseline_first(qrels, run):
    ev = evaluate_runs(qrels, {"z": run, "a": run})
    assert isinstance(ev, Evaluation)
    assert ev.run_names == ["z", "a"]
    assert ev.baseline == "z"


def test_two_names_for_one_measure_are_refused():
    from llmrerank.evaluate import evaluate_runs

    qrels = {"q1": {"d1": 2, "d2": 0}}
    run = {"q1": [("d1", 2.0), ("d2", 1.0)]}
    with pytest.raises(ValueError, match="same measure"):
        evaluate_runs(qrels, {"r": run}, ["RR@10", "RR(rel=2)@10"])
    with pytest.raises(ValueError, match="same measure"):
        evaluate_runs(qrels, {"r": run}, ["nDCG@10", "nDCG(cutoff=10)"])


def test_paired_p_edge_cases_and_scipy_parity():
    x, y = [0.9, 0.4, 0.7, 0.2], [0.5, 0.5, 0.6, 0.1]
    assert paired_p(x, y) == pytest.approx(ttest_rel(x, y).pvalue, rel=1e-12)
    assert paired_p(x, list(x)) == 1.0
    assert paired_p([0.75, 0.5, 0.25], [0.5, 0.25, 0.0]) == 0.0  # a constant difference: certain, not NaN
    assert math.isnan(paired_p([0.5], [0.4]))
    with pytest.raises(ValueError, match="aligned"):
        paired_p(x, y[:3])
