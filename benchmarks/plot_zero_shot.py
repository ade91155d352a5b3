"""Plot nDCG@10 of the zero-shot benchmark (``benchmarks/zero_shot.py``) per dataset, model and method.

Reads every ``benchmarks/results/zero_shot-*.json`` (complete or partial: a method still running is left
out) and draws one panel per dataset, one group of bars per run (BM25 first), one bar per model; the BM25
level is drawn as a dashed line.

Usage (from the repository root)::

    python benchmarks/plot_zero_shot.py [--results benchmarks/results] [--out docs/zero_shot.png]
"""

from __future__ import annotations

import json
from pathlib import Path

from _common import plot_options, save_png

DATASETS = ("dl19", "scifact")
MODELS = ("smollm2-135m", "qwen2.5-0.5b")
RUNS = ("bm25", "pointwise.pair_softmax", "pointwise.vocab_softmax", "pointwise.yes_logit", "likelihood")
LABELS = {
    "bm25": "BM25",
    "pointwise.pair_softmax": "pointwise\npair softmax",
    "pointwise.vocab_softmax": "pointwise\nvocab softmax",
    "pointwise.yes_logit": "pointwise\nyes logit",
    "likelihood": "query\nlikelihood",
}
COLOURS = {"smollm2-135m": "tab:orange", "qwen2.5-0.5b": "tab:blue"}


def load(results: Path) -> dict[tuple[str, str], dict]:
    out = {}
    for path in sorted(results.glob("zero_shot-*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        out[(data["dataset"], data["model"])] = data
    return out


def plot(results: dict[tuple[str, str], dict], path: Path) -> Path:
    from matplotlib.figure import Figure

    datasets = [d for d in DATASETS if any(k[0] == d for k in results)]
    if not datasets:
        raise SystemExit("no zero_shot-*.json results to plot")
    models = [m for m in MODELS if any(k[1] == m for k in results)]
    models += sorted({k[1] for k in results} - set(models))
    fig = Figure(figsize=(11, 3.6 * len(datasets)), layout="constrained")
    axes = fig.subplots(len(datasets), 1, squeeze=False)[:, 0]
    width = 0.8 / max(len(models), 1)
    for ax, dataset in zip(axes, datasets):
        bm25 = None
        for j, model in enumerate(models):
            data = results.get((dataset, model))
            if data is None:
                continue
            runs = data["runs"]
            bm25 = runs["bm25"]["nDCG@10"]
            xs, ys, marks = [], [], []
            for i, name in enumerate(RUNS):
                if name in runs:
                    xs.append(i + (j - (len(models) - 1) / 2) * width)
                    ys.append(runs[name]["nDCG@10"])
                    p = runs[name].get("p_nDCG@10")
                    marks.append(p is not None and p < 0.05)
            bars = ax.bar(xs, ys, width=width * 0.95, color=COLOURS.get(model, None), label=model)
            for bar, y, sig in zip(bars, ys, marks):
                ax.annotate(
                    f"{y:.3f}" + ("*" if sig else ""),
                    (bar.get_x() + bar.get_width() / 2, y),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    xytext=(0, 1),
                    textcoords="offset points",
                )
        if bm25 is not None:
            ax.axhline(bm25, color="black", linestyle="--", linewidth=0.8)
        n = next(results[(dataset, m)]["n_queries"] for m in models if (dataset, m) in results)
        ax.set_title(f"{dataset}: rerank BM25 top 20, {n} queries (* p < 0.05 vs BM25, paired t-test)")
        ax.set_xticks(range(len(RUNS)), [LABELS[r] for r in RUNS])
        ax.set_ylabel("nDCG@10")
        ax.set_ylim(0, 1.0)
        ax.legend(loc="upper right", fontsize=8)
    return save_png(fig, path, 110)


def main(argv: list[str] | None = None) -> None:
    args = plot_options(__doc__.splitlines()[0], "zero_shot.png", argv)
    plot(load(args.results), args.out)


if __name__ == "__main__":
    main()
