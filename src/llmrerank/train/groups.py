"""Training groups: one query, a positive in column 0, hard negatives after it, graded labels, teacher scores.

Built from the pieces of an IR experiment (queries, corpus, qrels, a first-stage run):

- positives are the judged documents with text whose grade is at least ``rel`` (2 for TREC DL, 1 for binary
  collections; ``None`` picks it from the qrels as evaluation does);
- hard negatives are sampled from the run's top ``top_k``, never a judged positive: judged documents below
  ``rel`` first (grade 0 before grade 1), then, with ``unjudged=True``, unjudged ones; when a query has fewer
  candidates than the group needs, negatives are drawn again with replacement (counted in the stats);
- ``labels`` keep the graded judgement of every column (unjudged = 0) for listwise losses;
- with a teacher run, ``teacher`` holds its score of every column (``teacher_mode="order"`` uses minus the rank
  instead), for distillation.

Sampling depends only on ``seed``, so the same arguments give the same groups.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..evaluate import default_rel
from ..types import Document

if TYPE_CHECKING:
    from .config import TrainConfig


@dataclass(frozen=True)
class Group:
    """One training example: ``docs[0]`` is the positive; ``labels`` and ``teacher`` align with ``docs``."""

    qid: str
    query: str
    doc_ids: tuple[str, ...]
    docs: tuple[Document, ...]
    labels: tuple[float, ...]
    teacher: tuple[float, ...] | None = None


@dataclass
class GroupStats:
    queries: int = 0
    queries_without_positive: int = 0
    queries_without_negative: int = 0
    groups: int = 0
    negatives_repeated: int = 0
    negatives_unjudged: int = 0


def build_groups(
    queries: Mapping[str, str],
    corpus: Mapping[str, Document],
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Sequence[tuple[str, float]]],
    group_size: int = 8,
    top_k: int = 100,
    rel: int | None = None,
    unjudged: bool = False,
    max_positives: int | None = None,
    teacher_run: Mapping[str, Sequence[tuple[str, float]]] | None = None,
    teacher_mode: str = "scores",
    seed: int = 0,
) -> tuple[list[Group], GroupStats]:
    """Build one group per (query, positive); see the module docstring for the rules.

    Args:
        group_size: documents per group (1 positive + ``group_size - 1`` negatives); 1 for a loss that reads the
            positive alone.
        top_k: negatives come from this many of the run's top documents.
        rel: the grade at or above which a judged document is a positive.
        unjudged: also sample unjudged documents of the run as negatives (after the judged ones).
        max_positives: at most this many positives (so groups) per query, the highest graded first.
        teacher_run: a run whose scores (or order) become ``Group.teacher``; every group document must be in it.
        teacher_mode: ``"scores"`` or ``"order"``.

    Returns:
        The groups, in query order, and counts of what was skipped or repeated.
    """
    if group_size < 1:
        raise ValueError(f"group_size must be at least 1 (the positive), got {group_size}")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    if teacher_mode not in ("scores", "order"):
        raise ValueError(f"teacher_mode must be 'scores' or 'order', got {teacher_mode!r}")
    if max_positives is not None and max_positives < 1:
        raise ValueError(f"max_positives must be at least 1, got {max_positives}")
    threshold = default_rel(qrels) if rel is None else rel
    rng = random.Random(seed)
    stats = GroupStats()
    groups: list[Group] = []
    for qid, query in queries.items():
        judged = qrels.get(qid, {})
        if not judged or qid not in run:
            continue
        stats.queries += 1
        positives = sorted(
            (d for d, g in judged.items() if g >= threshold and d in corpus), key=lambda d: (-judged[d], d)
        )
        if max_positives is not None:
            positives = positives[:max_positives]
        if not positives:
            stats.queries_without_positive += 1
            continue
        candidates = [d for d, _ in list(run[qid])[:top_k] if d in corpus and judged.get(d, 0) < threshold]
        judged_neg = sorted((d for d in candidates if d in judged), key=lambda d: judged[d])
        # judged 0 before judged 1 (and so on); within a grade, the run's order is shuffled by the seed
        by_grade: dict[int, list[str]] = {}
        for d in judged_neg:
            by_grade.setdefault(judged[d], []).append(d)
        pool = [d for g in sorted(by_grade) for d in rng.sample(by_grade[g], len(by_grade[g]))]
        if unjudged:
            rest = [d for d in candidates if d not in judged]
            pool += rng.sample(rest, len(rest))
        if not pool and group_size > 1:
            stats.queries_without_negative += 1
            continue
        teacher_scores = _teacher_scores(teacher_run, qid, teacher_mode) if teacher_run is not None else None
        need = group_size - 1
        for pos in positives:
            if len(pool) >= need:
                negs = pool[:need]
            else:
                negs = pool + [rng.choice(pool) for _ in range(need - len(pool))]
                stats.negatives_repeated += need - len(pool)
            stats.negatives_unjudged += sum(d not in judged for d in negs)
            ids = (pos, *negs)
            teacher = None
            if teacher_scores is not None:
                missing = [d for d in ids if d not in teacher_scores]
                if missing:
                    raise KeyError(f"query {qid}: document {missing[0]!r} of a group is not in the teacher run")
                teacher = tuple(teacher_scores[d] for d in ids)
            groups.append(
                Group(
                    qid=qid,
                    query=query,
                    doc_ids=ids,
                    docs=tuple(corpus[d] for d in ids),
                    labels=tuple(float(judged.get(d, 0)) for d in ids),
                    teacher=teacher,
                )
            )
            # the next positive of this query gets other negatives first: rotate the pool
            if pool:
                pool = pool[need % len(pool) :] + pool[: need % len(pool)]
    stats.groups = len(groups)
    return groups, stats


def _teacher_scores(teacher_run: Mapping[str, Sequence[tuple[str, float]]], qid: str, mode: str) -> dict[str, float]:
    if qid not in teacher_run:
        raise KeyError(f"query {qid} is not in the teacher run")
    items = list(teacher_run[qid])
    if mode == "order":
        return {d: -float(rank) for rank, (d, _) in enumerate(items, start=1)}
    return {d: float(s) for d, s in items}


@dataclass
class DevSet:
    """Queries to evaluate on during training: their candidates (best first by the first stage) and qrels."""

    queries: Mapping[str, str]
    corpus: Mapping[str, Document]
    qrels: Mapping[str, Mapping[str, int]]
    run: Mapping[str, Sequence[tuple[str, float]]]
    top_k: int = 20


def load_groups(config: TrainConfig) -> tuple[list[Group], GroupStats]:
    """The training groups of a config: its BEIR folder's ``split``, first-stage ``run`` and ``teacher_run``."""
    from ..data import find_run, load_beir, load_run

    c = config
    if not c.data:
        raise ValueError("config: set `data` (a BEIR folder) or pass groups")
    ds = load_beir(c.data, split=c.split)
    run_path = c.run or find_run(c.data)
    if run_path is None:
        raise ValueError(f"config: no `run` given and {c.data} does not hold exactly one .trec file")
    return build_groups(
        ds.queries,
        ds.corpus,
        ds.qrels,
        load_run(run_path),
        group_size=c.group_size,
        top_k=c.top_k,
        rel=c.rel,
        unjudged=c.unjudged,
        max_positives=c.max_positives,
        teacher_run=load_run(c.teacher_run) if c.teacher_run else None,
        teacher_mode=c.teacher_mode,
        seed=c.seed,
    )


def load_dev(config: TrainConfig) -> DevSet | None:
    """The dev set of a config, if any: ``dev_split`` of ``dev_data`` (default: ``data``), reranking ``dev_run``,
    else the training ``run`` (with ``dev_data``: the one .trec file in ``dev_data``)."""
    from ..data import find_run, load_beir, load_run

    c = config
    if not c.dev_split:
        return None
    folder = c.dev_data or c.data
    if not folder:
        raise ValueError("config: dev evaluation needs `data` or `dev_data` (a BEIR folder with the dev split)")
    ds = load_beir(folder, split=c.dev_split)
    run_path = c.dev_run or (find_run(folder) if c.dev_data else c.run or find_run(folder))
    if run_path is None:
        where = "`dev_run`, or one .trec file in `dev_data`" if c.dev_data else "`dev_run` or `run`"
        raise ValueError(f"config: dev evaluation needs {where}")
    return DevSet(ds.queries, ds.corpus, ds.qrels, load_run(run_path), top_k=c.dev_top_k)
