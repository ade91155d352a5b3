"""Plot every reranking method measured on DL19 side by side: nDCG@10 and seconds per query.

Two panels, one per setting the benchmarks share (a method is only compared with runs on the same queries
and candidates):

- left, all 43 queries at BM25 top 20: the zero-shot pointwise (``pair_softmax``) and likelihood runs of
  ``zero_shot.py`` (both presets) and the listwise runs of ``listwise.py`` (setting ``top20``);
- right, the first 20 queries at BM25 top 10 (``pairwise.py``): pairwise and setwise, with the pointwise and
  likelihood baselines of that script.

One horizontal bar per run, BM25 as a dashed line, each bar labelled with its nDCG@10 and seconds per query.
Runs that stopped early (a time budget) are drawn only if they covered every query of their panel.

    python benchmarks/plot_methods.py [--results benchmarks/results] [--out docs/methods.png]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from _common import plot_options, save_png

MODELS = {"smollm2-135m": "135M", "qwen2.5-0.5b": "0.5B"}
COLOURS = {"smollm2-135m": "tab:orange", "qwen2.5-0.5b": "tab:blue"}
MEASURE = "nDCG@10"


def read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def top20_rows(results: Path) -> tuple[float | None, list[dict[str, Any]]]:
    """(BM25 nDCG@10, rows) for all 43 DL19 queries at top 20."""
    rows: list[dict[str, Any]] = []
    bm25 = None
    for model in MODELS:
        zs = read(results / f"zero_shot-dl19-{model}.json")
        if zs is None:
            continue
        bm25 = zs["runs"]["bm25"][MEASURE]
        n = zs["n_queries"]
        for run, method, label in (
            ("pointwise.pair_softmax", "pointwise", "pointwise yes/no"),
            ("likelihood", "likelihood", "query likelihood"),
        ):
            if run in zs["runs"] and zs["methods"].get(method, {}).get("status") == "complete":
                seconds = zs["methods"][method]["seconds"] / n
                rows.append({"model": model, "label": label, "ndcg": zs["runs"][run][MEASURE], "s": seconds})
    lw = read(results / "listwise-dl19-qwen2.5-0.5b.json")
    for run in (lw or {}).get("runs", {}).values():
        if run["setting"] == "top20" and run["queries_done"] == run["queries_planned"]:
            label = "listwise FIRST" if run["decoding"] == "first" else "listwise generate"
            rows.append({"model": "qwen2.5-0.5b", "label": label, "ndcg": run[MEASURE], "s": run["seconds_per_query"]})
    return bm25, rows


def top10_rows(results: Path) -> tuple[float | None, list[dict[str, Any]]]:
    """(BM25 nDCG@10, rows) for the pairwise benchmark's queries at top 10."""
    pw = read(results / "pairwise-dl19.json")
    if pw is None:
        return None, []
    rows = []
    bm25 = None
    for run in pw["runs"].values():
        if run["queries_done"] != run["queries_planned"]:
            continue
        bm25 = run[f"bm25_{MEASURE}"]
        label = run["variant"].replace(".", " ").replace("pointwise", "pointwise yes/no")
        label = label.replace("likelihood", "query likelihood")
        rows.append({"model": run["model"], "label": label, "ndcg": run[MEASURE], "s": run["seconds_per_query"]})
    return bm25, rows


def panel(ax: Any, title: str, bm25: float | None, rows: list[dict[str, Any]]) -> None:
    labels = [f"{r['label']} ({MODELS[r['model']]})" for r in rows]
    ys = range(len(rows))
    ax.barh(list(ys), [r["ndcg"] for r in rows], color=[COLOURS[r["model"]] for r in rows])
    for y, r in zip(ys, rows):
        ax.text(
            r["ndcg"] + 0.005,
            y,
            f"{r['ndcg']:.3f} · {r['s']:.1f} s/q",
            va="center",
            fontsize=8,
            bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5},
            zorder=3,
        )
    if bm25 is not None:
        ax.axvline(bm25, color="black", linestyle="--", linewidth=1, label=f"BM25 {bm25:.3f}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(list(ys), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 0.9)
    ax.set_xlabel(MEASURE)
    ax.set_title(title, fontsize=10)


def plot(results: Path, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    left = top20_rows(results)
    right = top10_rows(results)
    heights = [max(len(left[1]), 1), max(len(right[1]), 1)]
    fig, axes = plt.subplots(
        2, 1, figsize=(8, 1.2 + 0.32 * sum(heights)), gridspec_kw={"height_ratios": heights}, squeeze=True
    )
    panel(axes[0], "DL19, all 43 queries, BM25 top 20", *left)
    panel(axes[1], "DL19, first 20 queries, BM25 top 10 (passages cut to 96 tokens)", *right)
    fig.suptitle("Zero-shot reranking with the packaged models (CPU, 2 cores, float32)", fontsize=11)
    fig.tight_layout()
    save_png(fig, out, 120)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    args = plot_options(__doc__.splitlines()[0], "methods.png", argv)
    plot(args.results, args.out)


if __name__ == "__main__":
    main()
