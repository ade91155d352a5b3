"""Evaluation over ir_measures: metrics per query and on average, paired significance tests, tables, plots.

Conventions:

- The queries evaluated are those of the qrels with at least one judgement. A query missing from a run
  scores 0 on every measure (it is not skipped), so runs that drop queries are not flattered.
- A run is evaluated in its list order (rank 1 first), not re-sorted by score: the scores given to
  ir_measures are derived from the positions, so tied scores cannot reorder the documents.
- nDCG uses trec_eval's gain, the grade itself (linear: ``DCG = sum_i rel_i / log2(i + 1)``), and the
  ideal ranking is built from every judgement of the query, including documents absent from the run.
- Binary measures (RR, R, P, AP, Success) count a document as relevant when its grade is ``>= rel``;
  :func:`default_rel` picks 2 for graded collections (the TREC DL convention) and 1 otherwise.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path
from typing import Any, Union

import ir_measures

from .outputs import write_atomic

PathLike = Union[str, Path]
Run = Mapping[str, Sequence[tuple[str, float]]]
Qrels = Mapping[str, Mapping[str, int]]

DEFAULT_MEASURES: tuple[str, ...] = ("nDCG@10", "RR@10", "R@100", "AP", "Judged@10")
BINARY_MEASURES = frozenset({"RR", "R", "P", "AP", "Success"})
SIGNIFICANCE_LEVEL = 0.05
MARK = "†"


def resolve_measures(names: Sequence[str], rel: int) -> list[Any]:
    """Parse measure names (ir_measures syntax, e.g. ``"nDCG@10"``) into ir_measures measures.

    The binary measures (RR, R, P, AP, Success) get the relevance threshold ``rel=rel`` unless the name
    sets one itself (``"RR(rel=1)@10"``); graded measures such as nDCG and Judged are left untouched.

    Raises:
        ValueError: a name ir_measures does not know or cannot parse (the message names it).
    """
    if isinstance(names, str):
        raise TypeError("names must be a sequence of measure names, not a single string")
    measures = []
    for name in names:
        try:
            measure = ir_measures.parse_measure(name)
        except (NameError, ValueError, SyntaxError) as e:
            raise ValueError(f"unknown measure {name!r}: {e}") from None
        if measure.NAME in BINARY_MEASURES and "rel" not in measure.params:
            measure = measure(rel=rel)
        measures.append(measure)
    return measures


def default_rel(qrels: Qrels) -> int:
    """The relevance threshold for binary measures: 2 if any grade is >= 2 (graded, TREC DL), else 1."""
    return 2 if any(g >= 2 for docs in qrels.values() for g in docs.values()) else 1


@dataclass
class Evaluation:
    """The result of :func:`evaluate_runs`.

    Attributes:
        run_names: run names, the baseline first.
        measures: measure names as given (the binary ones evaluated with threshold ``rel``).
        query_ids: the evaluated queries (those of the qrels with at least one judgement).
        rel: the relevance threshold used for the binary measures.
        aggregate: ``aggregate[run][measure]``, the mean over ``query_ids``.
        per_query: ``per_query[run][measure][qid]``.
        p_values: ``p_values[run][measure]``, paired two-sided t-test against the baseline over
            ``query_ids``; None for the baseline, NaN when undefined (fewer than two queries).
    """

    run_names: list[str]
    measures: list[str]
    query_ids: list[str]
    rel: int
    aggregate: dict[str, dict[str, float]] = field(default_factory=dict)
    per_query: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    p_values: dict[str, dict[str, float | None]] = field(default_factory=dict)

    @property
    def baseline(self) -> str:
        return self.run_names[0]

    def significant(self, run: str, measure: str, level: float = SIGNIFICANCE_LEVEL) -> bool:
        """Whether ``run`` differs from the baseline on ``measure`` with p < ``level``."""
        p = self.p_values[run][measure]
        return p is not None and not math.isnan(p) and p < level

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (NaN p-values become None)."""

        def clean(p: float | None) -> float | None:
            return None if p is None or math.isnan(p) else p

        return {
            "baseline": self.baseline,
            "runs": list(self.run_names),
            "measures": list(self.measures),
            "rel": self.rel,
            "num_queries": len(self.query_ids),
            "aggregate": {r: dict(m) for r, m in self.aggregate.items()},
            "p_values": {r: {m: clean(p) for m, p in ps.items()} for r, ps in self.p_values.items()},
            "per_query": {r: {m: dict(q) for m, q in ms.items()} for r, ms in self.per_query.items()},
        }


def paired_p(values: Sequence[float], baseline: Sequence[float]) -> float:
    """The two-sided paired t-test's p-value of ``values`` against ``baseline`` (per-query values, aligned).

    Identical sequences give 1.0; a constant non-zero difference (zero variance, where scipy answers NaN) gives
    0.0; fewer than two pairs give NaN.
    """
    from scipy.stats import ttest_rel

    if len(values) != len(baseline):
        raise ValueError(f"paired_p needs aligned values: {len(values)} values against {len(baseline)} baseline values")
    if len(values) < 2:
        return math.nan
    if all(a == b for a, b in zip(values, baseline)):
        return 1.0
    p = float(ttest_rel(values, baseline).pvalue)
    # constant non-zero differences have zero variance: scipy may answer NaN; the difference is certain
    return 0.0 if math.isnan(p) else p


def evaluate_runs(
    qrels: Qrels,
    runs: Mapping[str, Run],
    measures: Sequence[str] = DEFAULT_MEASURES,
    rel: int | None = None,
) -> Evaluation:
    """Evaluate one or more runs on the same qrels, the first run being the baseline.

    Args:
        qrels: ``{query_id: {doc_id: grade}}`` (e.g. from :func:`llmrerank.data.load_qrels`).
        runs: ``{run_name: run}``, each run ``{query_id: [(doc_id, score), ...]}`` best first, as
            :func:`llmrerank.data.load_run` returns.
        measures: ir_measures names; see :func:`resolve_measures`.
        rel: relevance threshold for the binary measures; None picks :func:`default_rel`.

    Returns:
        An :class:`Evaluation` with means, per-query values and p-values against the baseline.

    Raises:
        ValueError: no runs, no judged query, no or repeated measures, an unknown measure, or ``rel`` not an
            int >= 1.
        TypeError: ``qrels``, ``runs`` or a run not a mapping, or ``measures`` a single string.

    Example:
        >>> qrels = {"q1": {"d1": 1}}
        >>> ev = evaluate_runs(qrels, {"bm25": {"q1": [("d2", 2.0), ("d1", 1.0)]}}, ["RR@10"])
        >>> ev.aggregate["bm25"]["RR@10"]
        0.5
    """
    if not isinstance(qrels, Mapping):
        raise TypeError(f"qrels must be a mapping {{query_id: {{doc_id: grade}}}}, got {type(qrels).__name__}")
    if not isinstance(runs, Mapping):
        raise TypeError(f"runs must be a mapping {{run_name: run}}, got {type(runs).__name__}")
    if not runs:
        raise ValueError("no runs to evaluate")
    for run_name, run in runs.items():
        if not isinstance(run, Mapping):
            raise TypeError(
                f"run {run_name!r} must be a mapping {{query_id: [(doc_id, score), ...]}}, got {type(run).__name__}"
            )
    if isinstance(measures, str):
        raise TypeError(f"measures must be a sequence of measure names, e.g. [{measures!r}], not a single string")
    if rel is not None and (not isinstance(rel, Integral) or isinstance(rel, bool) or rel < 1):
        raise ValueError(
            "rel is the grade at or above which a judged document counts as relevant for the binary measures: "
            f"an integer >= 1, got {type(rel).__name__} {rel!r}"
        )
    names = list(measures)
    if not names:
        raise ValueError("no measures to compute")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"measures given more than once: {', '.join(repeated)}")
    query_ids = [qid for qid, docs in qrels.items() if docs]
    if not query_ids:
        raise ValueError("the qrels judge no query: nothing to evaluate")
    threshold = default_rel(qrels) if rel is None else int(rel)
    resolved = resolve_measures(names, threshold)
    seen: dict[Any, str] = {}
    for name, measure in zip(names, resolved):
        if measure in seen:
            raise ValueError(f"measures {seen[measure]!r} and {name!r} are the same measure ({measure}); give it once")
        seen[measure] = name
    name_of = dict(zip(resolved, names))
    judged = {qid: {d: int(g) for d, g in qrels[qid].items()} for qid in query_ids}

    ev = Evaluation(run_names=list(runs), measures=names, query_ids=query_ids, rel=threshold)
    for run_name, run in runs.items():
        # positions, not scores: the list order is the ranking evaluated
        as_scores = {
            qid: {doc_id: float(len(items) - i) for i, (doc_id, _) in enumerate(items)}
            for qid, items in run.items()
            if qid in judged and items
        }
        values: dict[str, dict[str, float]] = {n: {qid: 0.0 for qid in query_ids} for n in names}
        if as_scores:
            for metric in ir_measures.iter_calc(resolved, judged, as_scores):
                if metric.query_id in judged:
                    values[name_of[metric.measure]][metric.query_id] = float(metric.value)
        ev.per_query[run_name] = values
        ev.aggregate[run_name] = {n: sum(v.values()) / len(query_ids) for n, v in values.items()}

    base = ev.per_query[ev.baseline]
    for run_name in ev.run_names:
        if run_name == ev.baseline:
            ev.p_values[run_name] = {n: None for n in names}
            continue
        ours = ev.per_query[run_name]
        ev.p_values[run_name] = {
            n: paired_p([ours[n][q] for q in query_ids], [base[n][q] for q in query_ids]) for n in names
        }
    return ev


def _grid(rows: list[list[str]]) -> list[str]:
    """Left-align the first column, right-align the rest, rule under the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for j, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def format_table(ev: Evaluation, digits: int = 4) -> str:
    """A plain-text table: one row per run (baseline first), one column per measure, ``†`` for p < 0.05."""
    rows = [["run", *ev.measures]]
    for run_name in ev.run_names:
        row = [run_name]
        for m in ev.measures:
            cell = f"{ev.aggregate[run_name][m]:.{digits}f}"
            row.append(cell + (MARK if ev.significant(run_name, m) else " "))
        rows.append(row)
    lines = _grid(rows)
    lines.append(
        f"{MARK} p < {SIGNIFICANCE_LEVEL} vs {ev.baseline} (paired two-sided t-test over "
        f"{len(ev.query_ids)} queries); binary measures count grade >= {ev.rel} as relevant"
    )
    return "\n".join(lines)


def format_per_query(ev: Evaluation, measure: str, digits: int = 4) -> str:
    """One row per query, one column per run, for one measure (and the difference of each run vs the baseline)."""
    if measure not in ev.measures:
        raise ValueError(f"measure {measure!r} was not evaluated; evaluated: {', '.join(ev.measures)}")
    others = ev.run_names[1:]
    rows = [["query", *ev.run_names, *(f"Δ {r}" for r in others)]]
    for qid in ev.query_ids:
        base = ev.per_query[ev.baseline][measure][qid]
        values = [ev.per_query[r][measure][qid] for r in ev.run_names]
        rows.append([qid, *(f"{v:.{digits}f}" for v in values), *(f"{v - base:+.{digits}f}" for v in values[1:])])
    return "\n".join(_grid(rows))


def plot_per_query(ev: Evaluation, measure: str, path: PathLike) -> Path:
    """Save a PNG bar chart of each run's per-query difference from the baseline on ``measure``.

    One panel per non-baseline run, queries sorted from largest gain to largest loss.

    Raises:
        ImportError: matplotlib is not installed (``pip install "llmrerank[plot]"``).
        ValueError: an unknown measure, or only the baseline run to compare.
    """
    from .extras import require

    Figure = require("matplotlib.figure", "plot_per_query").Figure
    if measure not in ev.measures:
        raise ValueError(f"measure {measure!r} was not evaluated; have: {', '.join(ev.measures)}")
    others = ev.run_names[1:]
    if not others:
        raise ValueError("only the baseline run was evaluated: no per-query difference to plot")

    base = ev.per_query[ev.baseline][measure]
    fig = Figure(figsize=(max(6.0, 0.12 * len(ev.query_ids) + 2), 2.8 * len(others)), layout="constrained")
    axes = fig.subplots(len(others), 1, squeeze=False)[:, 0]
    for ax, run_name in zip(axes, others):
        diffs = sorted((ev.per_query[run_name][measure][q] - base[q] for q in ev.query_ids), reverse=True)
        colours = ["tab:green" if d > 0 else "tab:red" if d < 0 else "tab:gray" for d in diffs]
        ax.bar(range(len(diffs)), diffs, color=colours, width=0.8)
        ax.axhline(0.0, color="black", linewidth=0.6)
        wins = sum(d > 0 for d in diffs)
        losses = sum(d < 0 for d in diffs)
        ax.set_title(f"{run_name} - {ev.baseline}: {wins} better, {losses} worse, {len(diffs)} queries")
        ax.set_ylabel(f"\u0394 {measure}")
        ax.set_xticks([])
    axes[-1].set_xlabel("queries, sorted by difference")
    out = Path(path)
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=120)
    write_atomic(out, image.getvalue(), "plot")  # an earlier plot stays whole until this one is
    return out
