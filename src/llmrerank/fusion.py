"""Fusing a reranker's scores with the first stage's: each side min-max normalised per query, then weighted.

``fused(d) = w * norm(first_stage(d)) + (1 - w) * norm(reranker(d))`` over the reranked head of one query, where
``norm`` maps that query's scores linearly onto [0, 1] (a side whose scores are all equal contributes 0 to every
document, so it does not reorder). ``w = 0`` keeps the reranker's order, ``w = 1`` the first stage's. Ties keep the
reranker's order. The unreranked tail is not fused: it stays below the head, in run order, as without fusion.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from .types import Ranking

STAGES = ("bm25",)  # the first stage's name in ``--fuse``; its scores are the input run's


@dataclass(frozen=True)
class Fusion:
    """How to fuse: the first stage's ``weight`` in [0, 1] (``stage`` names it; its scores come from the run)."""

    weight: float
    stage: str = "bm25"

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"fuse: unknown first stage {self.stage!r}; give {' or '.join(STAGES)}:WEIGHT")
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)):
            raise TypeError(f"fuse: the weight must be a number in [0, 1], got {self.weight!r}")
        if not (0.0 <= self.weight <= 1.0):  # also refuses NaN
            raise ValueError(f"fuse: the weight must be in [0, 1], got {self.weight!r}")

    def to_dict(self) -> dict[str, object]:
        return {"stage": self.stage, "weight": float(self.weight)}


def parse_fusion(text: str) -> Fusion:
    """``"bm25:W"`` (the ``--fuse`` flag) as a :class:`Fusion`; anything else is a ValueError saying the form."""
    stage, sep, weight = text.partition(":")
    if not sep:
        raise ValueError(f"fuse: expected STAGE:WEIGHT such as bm25:0.3, got {text!r}")
    try:
        value = float(weight)
    except ValueError:
        raise ValueError(f"fuse: the weight of {text!r} is not a number") from None
    return Fusion(weight=value, stage=stage.strip())


def min_max(scores: Sequence[float]) -> list[float]:
    """``scores`` mapped linearly onto [0, 1] (all zeros when they are all equal); a non-finite one is refused."""
    if any(not math.isfinite(s) for s in scores):
        raise ValueError("fuse: cannot normalise a non-finite score")
    if not scores:
        return []
    low, high = min(scores), max(scores)
    if high == low:
        return [0.0] * len(scores)
    return [(s - low) / (high - low) for s in scores]


def fuse_ranking(ranking: Ranking, first_stage: Mapping[str, float], fusion: Fusion) -> Ranking:
    """``ranking`` (its ``ids`` set) reordered by the fused score, which becomes its scores.

    ``first_stage`` maps each ranked document id to its first-stage score; a ranked id without one is a
    ValueError naming it. The ranking's metadata is kept, with the fusion recorded under ``"fused"``."""
    if ranking.ids is None:
        raise ValueError("fuse: the ranking has no document ids to look the first-stage scores up by")
    missing = [d for d in ranking.ids if d not in first_stage]
    if missing:
        raise ValueError(f"fuse: document {missing[0]!r} has no first-stage score")
    first = min_max([float(first_stage[d]) for d in ranking.ids])
    second = min_max([float(s) for s in ranking.scores])
    w = float(fusion.weight)
    fused = [w * a + (1.0 - w) * b for a, b in zip(first, second)]
    order = sorted(range(len(fused)), key=lambda i: -fused[i])  # stable: ties keep the reranker's order
    return replace(
        ranking,
        indices=tuple(ranking.indices[i] for i in order),
        scores=tuple(fused[i] for i in order),
        ids=tuple(ranking.ids[i] for i in order),
        metadata={**ranking.metadata, "fused": fusion.to_dict()},
    )


def fuse_runs(
    runs: Sequence[Mapping[str, Sequence[tuple[str, float]]]], top_k: int | None = None
) -> dict[str, list[tuple[str, float]]]:
    """Several rankers' runs of the same queries fused into one (an ensemble, e.g. of teachers).

    For each query of the first run, its best ``top_k`` documents (all of them when ``None``) are scored by the
    mean of every run's scores, each min-max normalised over those documents per query; best first, ties in the
    first run's order. A query or one of those documents that another run lacks is a ValueError naming it."""
    if not runs:
        raise ValueError("fuse: no runs to fuse")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"fuse: top_k must be a whole number of at least 1 (or None for all), got {top_k!r}")
    fused: dict[str, list[tuple[str, float]]] = {}
    for qid, items in runs[0].items():
        docs = [d for d, _ in sorted(items, key=lambda item: -item[1])[:top_k]]
        total = [0.0] * len(docs)
        for number, run in enumerate(runs, start=1):
            if qid not in run:
                raise ValueError(f"fuse: run {number} has no query {qid!r}")
            scores = dict(run[qid])
            missing = [d for d in docs if d not in scores]
            if missing:
                raise ValueError(f"fuse: run {number} has no score for document {missing[0]!r} of query {qid!r}")
            for i, value in enumerate(min_max([float(scores[d]) for d in docs])):
                total[i] += value / len(runs)
        order = sorted(range(len(docs)), key=lambda i: -total[i])  # stable: ties keep the first run's order
        fused[qid] = [(docs[i], total[i]) for i in order]
    return fused
