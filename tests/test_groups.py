"""Training groups from qrels and a run, on the tiny fixture (worked by hand from its files)."""

from __future__ import annotations

import pytest

from conftest import TINY
from llmrerank.data import load_beir, load_run
from llmrerank.train.groups import build_groups


@pytest.fixture(scope="module")
def tiny():
    ds = load_beir(TINY)
    return ds, load_run(TINY / "run.trec")


def _by_query(groups):
    out = {}
    for g in groups:
        out.setdefault(g.qid, []).append(g)
    return out


def test_positives_first_judged_negatives_by_grade(tiny):
    ds, run = tiny
    groups, stats = build_groups(ds.queries, ds.corpus, ds.qrels, run, group_size=3)
    q = _by_query(groups)
    # q1: positives d1 (3) and d4 (2); negatives from the run below rel 2: d3 (grade 0) before d2 (grade 1)
    assert [g.doc_ids for g in q["q1"]] == [("d1", "d3", "d2"), ("d4", "d3", "d2")]
    assert [g.labels for g in q["q1"]] == [(3.0, 0.0, 1.0), (2.0, 0.0, 1.0)]
    # q2: d6 is judged 2 with text, so a positive although BM25 missed it; d9 is unjudged, so not used
    assert [g.doc_ids for g in q["q2"]] == [("d5", "d7", "d8"), ("d6", "d7", "d8")]
    # q3: d12 (grade 0) first, then one of the two grade-1 documents
    assert q["q3"][0].doc_ids[:2] == ("d9", "d12") and q["q3"][0].doc_ids[2] in ("d10", "d11")
    assert all(g.docs[0] == ds.corpus[g.doc_ids[0]] for g in groups)
    assert stats.groups == 5 and stats.negatives_repeated == 0 and stats.queries == 3


def test_unjudged_negatives_repeats_and_max_positives(tiny):
    ds, run = tiny
    groups, stats = build_groups(ds.queries, ds.corpus, ds.qrels, run, group_size=4, unjudged=True)
    q2 = _by_query(groups)["q2"][0]
    assert q2.doc_ids == ("d5", "d7", "d8", "d9") and q2.labels == (3.0, 0.0, 1.0, 0.0)
    assert stats.negatives_unjudged == 2  # d9 in both q2 groups
    groups, stats = build_groups(ds.queries, ds.corpus, ds.qrels, run, group_size=5, max_positives=1)
    q1 = _by_query(groups)["q1"]
    assert len(q1) == 1 and q1[0].doc_ids[:3] == ("d1", "d3", "d2") and set(q1[0].doc_ids[3:]) <= {"d3", "d2"}
    assert stats.negatives_repeated == 2 + 2 + 1  # q1 and q2 have 2 negatives, q3 has 3; each group needs 4


def test_threshold_and_teacher(tiny):
    ds, run = tiny
    groups, _ = build_groups(ds.queries, ds.corpus, ds.qrels, run, group_size=2, rel=3, teacher_run=run)
    q1 = _by_query(groups)["q1"]
    assert [g.doc_ids[0] for g in q1] == ["d1"]  # only grade 3 is a positive now
    assert q1[0].teacher == (11.0, 4.25)  # the run's scores of d1 and d3
    ordered, _ = build_groups(
        ds.queries, ds.corpus, ds.qrels, run, group_size=2, rel=3, teacher_run=run, teacher_mode="order"
    )
    assert _by_query(ordered)["q1"][0].teacher == (-2.0, -3.0)
    with pytest.raises(KeyError, match="not in the teacher run"):
        build_groups(ds.queries, ds.corpus, ds.qrels, run, group_size=3, teacher_run={"q1": [("d1", 1.0)]})


def test_a_group_of_one_is_the_positive_alone(tiny):
    """group_size 1 (the loss nll reads the positive only): one group per positive, as with negatives."""
    ds, run = tiny
    groups, stats = build_groups(ds.queries, ds.corpus, ds.qrels, run, group_size=1)
    assert [g.doc_ids for g in groups] == [("d1",), ("d4",), ("d5",), ("d6",), ("d9",)]
    assert [g.labels for g in groups] == [(3.0,), (2.0,), (3.0,), (2.0,), (3.0,)]
    assert stats.groups == 5 and stats.negatives_repeated == 0 and stats.negatives_unjudged == 0
    # a query whose run holds its positive alone: a group of one needs no negative, a group of two skips it
    alone = {"q1": [("d1", 1.0)]}
    groups, stats = build_groups(ds.queries, ds.corpus, ds.qrels, alone, group_size=1, max_positives=1)
    assert [g.doc_ids for g in groups] == [("d1",)] and stats.queries_without_negative == 0
    groups, stats = build_groups(ds.queries, ds.corpus, ds.qrels, alone, group_size=2, max_positives=1)
    assert groups == [] and stats.queries_without_negative == 1


def test_same_seed_same_groups_and_bad_arguments(tiny):
    ds, run = tiny
    a, _ = build_groups(ds.queries, ds.corpus, ds.qrels, run, group_size=3, seed=7)
    b, _ = build_groups(ds.queries, ds.corpus, ds.qrels, run, group_size=3, seed=7)
    assert a == b
    with pytest.raises(ValueError, match="group_size must be at least 1"):
        build_groups(ds.queries, ds.corpus, ds.qrels, run, group_size=0)
    with pytest.raises(ValueError, match="teacher_mode"):
        build_groups(ds.queries, ds.corpus, ds.qrels, run, teacher_mode="rank")


def test_dev_set_from_another_folder(tmp_path):
    """`dev_data`: synthetic training queries have no dev split; the dev set comes from a labelled folder and
    reranks that folder's own run, never the training run."""
    import shutil

    from llmrerank.train.config import TrainConfig
    from llmrerank.train.groups import load_dev

    train = tmp_path / "train"
    shutil.copytree(TINY, train)
    (train / "run.trec").write_text("q1 Q0 d3 1 5.0 other\n", encoding="utf-8")  # only q1, one document
    config = dict(data=str(train), run=str(train / "run.trec"), dev_split="test", split="test")
    own = load_dev(TrainConfig(**config))
    assert set(own.run) == {"q1"}  # without dev_data: the training folder and its run
    dev = load_dev(TrainConfig(**config, dev_data=str(TINY)))
    assert dev.run == load_run(TINY / "run.trec") and dev.qrels == load_beir(TINY).qrels
    given = load_dev(TrainConfig(**config, dev_data=str(TINY), dev_run=str(train / "run.trec")))
    assert set(given.run) == {"q1"}
    (tmp_path / "no-run").mkdir()
    for name in ("corpus.jsonl", "queries.jsonl", "qrels"):
        (shutil.copytree if name == "qrels" else shutil.copy)(TINY / name, tmp_path / "no-run" / name)
    with pytest.raises(ValueError, match="dev_run`, or one .trec file in `dev_data`"):
        load_dev(TrainConfig(**config, dev_data=str(tmp_path / "no-run")))
    with pytest.raises(ValueError, match="dev_data names the folder of the dev split: set dev_split too"):
        TrainConfig(data=str(train), dev_data=str(TINY))
