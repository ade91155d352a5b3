"""The fine-tuning benchmark's runs side by side: one table and one plot from ``benchmarks/results/finetune-*.json``.

Each JSON is one run of ``benchmarks/finetune.py`` (a variant a-e, or the SciFact-train run). The table gives,
per run, the training (loss, score, steps, epochs, seconds) and for DL19 and SciFact the fine-tuned nDCG@10
with its difference from BM25 and from the zero-shot likelihood score of the same base model and its paired
t-test p-values; a second table per dataset puts the runs against each other. The plot draws the same nDCG@10
as horizontal bars, one panel per dataset, with BM25 and the zero-shot likelihood run as lines.

    python benchmarks/plot_finetune.py [--results benchmarks/results] [--out docs/finetune.png]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from _common import plot_options, save_png

DATASETS = ("dl19", "scifact")
ORDER = ("a", "b", "c", "d", "e", "scifact")
LEVEL = 0.05


def load(results: Path) -> list[dict[str, Any]]:
    """The complete runs, variants in the order a-e, then SciFact; a file's name tells runs of one variant apart."""
    runs = []
    for path in sorted(results.glob("finetune-*.json")):
        r = json.loads(path.read_text(encoding="utf-8"))
        if r.get("status") != "complete" or r.get("smoke") or r.get("variant") not in ORDER:
            continue
        r["_name"] = path.stem.removeprefix("finetune-")
        runs.append(r)
    return sorted(runs, key=lambda r: (ORDER.index(r["variant"]), r["training"]["steps"], r["_name"]))


def label(r: dict[str, Any]) -> str:
    c, t = r["config"], r["training"]
    score = "likelihood" if c["method"] == "likelihood" else f"{c['head']} head"
    data = "SciFact train" if r["variant"] == "scifact" else "DL21 train"
    epochs = t["steps"] / t["epoch_steps"]  # an epoch: every group once, the last step possibly short
    return f"{r['_name']}: {c['loss']}, {score}, {data}, {t['steps']} steps ({epochs:.1f} epochs)"


def dev_curve(r: dict[str, Any]) -> str:
    """Dev nDCG@10 before training (the base model, as finetune.py's probe scores it) and at the end."""
    dev = r["training"].get("dev") or []
    before = r["training"].get("dev_nDCG@10_before_training")
    if not dev:
        return ""
    return ("?" if before is None else f"{before:.3f}") + f" → {dev[-1]['nDCG@10']:.3f}"


def fmt_p(p: float | None) -> str:
    return "" if p is None else ("<0.001" if p < 0.001 else f"{p:.3f}")


def finetuned(r: dict[str, Any], dataset: str) -> dict[str, Any] | None:
    """The fine-tuned run's numbers on ``dataset``, or None when the run was not evaluated there (--datasets)."""
    return r["datasets"].get(dataset, {}).get("runs", {}).get("finetuned")


def baselines(runs: list[dict[str, Any]], dataset: str) -> dict[str, Any]:
    """The dataset's entry (BM25 and zero-shot runs; the same in every run) from the first run evaluated on it."""
    return next(r["datasets"][dataset] for r in runs if finetuned(r, dataset) is not None)


def table(runs: list[dict[str, Any]]) -> str:
    head = (
        "| run | training s | DL21 dev before → end | "
        + " | ".join(f"{d} nDCG@10 | Δ BM25 | p | Δ zero-shot QL | p" for d in DATASETS)
        + " |"
    )
    lines = [head, "|" + "---|" * (3 + 5 * len(DATASETS))]
    if runs:  # the baselines, shared by every run (same queries, candidates and max_length)
        for name, key in (("BM25", "bm25"), ("zero-shot likelihood", "zero_shot_likelihood")):
            cells = []
            for d in DATASETS:
                b = baselines(runs, d)["runs"][key]
                delta = f"{b['delta_vs_bm25']:+.4f}" if "delta_vs_bm25" in b else ""
                cells += [f"{b['nDCG@10']:.4f}", delta, fmt_p(b.get("p_vs_bm25")), "", ""]
            lines.append(f"| {name} | | | " + " | ".join(cells) + " |")
    for r in runs:
        cells = []
        for d in DATASETS:
            f = finetuned(r, d)
            if f is None:
                cells += ["not evaluated", "", "", "", ""]
                continue
            mark_b = "†" if f.get("significant_win_vs_bm25") else ""
            mark_z = "†" if f.get("significant_win_vs_zero_shot_likelihood") else ""
            cells += [
                f"{f['nDCG@10']:.4f}",
                f"{f['delta_vs_bm25']:+.4f}{mark_b}",
                fmt_p(f.get("p_vs_bm25")),
                f"{f['delta_vs_zero_shot_likelihood']:+.4f}{mark_z}",
                fmt_p(f.get("p_vs_zero_shot_likelihood")),
            ]
        lines.append(f"| {label(r)} | {r['training']['seconds']:.0f} | {dev_curve(r)} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"† a significant win (paired two-sided t-test on per-query nDCG@10, p < {LEVEL}).")
    if any(r["training"].get("dev") and r["training"].get("dev_nDCG@10_before_training") is None for r in runs):
        lines.append(
            "? not measured: a run given `--max-steps` skips the probe that scores the dev set before training; "
            "it starts where the runs with the same score (method and head) start."
        )
    return "\n".join(lines)


def comparison(runs: list[dict[str, Any]], dataset: str) -> str:
    """The runs against each other on ``dataset``: row minus column nDCG@10 and the paired t-test's p.

    Every run reranks the same queries and candidates, so their per-query nDCG@10 pair up. The p-values are not
    corrected for the number of comparisons.
    """
    from llmrerank.evaluate import paired_p

    evaluated = [r for r in runs if finetuned(r, dataset) is not None]
    per_query = {  # lists aligned with query_ids
        r["_name"]: dict(
            zip(r["datasets"][dataset]["query_ids"], r["datasets"][dataset]["per_query_nDCG@10"]["finetuned"])
        )
        for r in evaluated
    }
    names = list(per_query)
    if len(names) < 2:
        return f"{dataset}: fewer than two runs evaluated, nothing to compare"
    lines = [
        f"{dataset}: row − column nDCG@10 (paired two-sided t-test p)",
        "",
        "| | " + " | ".join(names[1:]) + " |",
        "|---|" + "---|" * (len(names) - 1),
    ]
    for i, a in enumerate(names[:-1]):
        queries = list(per_query[a])
        cells = []
        for j, b in enumerate(names[1:], start=1):
            if j <= i:
                cells.append("")
                continue
            if per_query[a].keys() != per_query[b].keys():  # e.g. a run evaluated with --eval-queries
                cells.append("other queries")
                continue
            x = [per_query[a][q] for q in queries]
            y = [per_query[b][q] for q in queries]
            delta = (sum(x) - sum(y)) / len(queries)
            cells.append(f"{delta:+.4f} ({fmt_p(paired_p(x, y))})")
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(DATASETS), figsize=(13, 2.0 + 0.5 * len(runs)), sharey=True)
    names = [r["_name"] for r in runs]
    for ax, d in zip(axes, DATASETS):
        first = baselines(runs, d)
        bm25 = first["runs"]["bm25"]["nDCG@10"]
        zs = first["runs"]["zero_shot_likelihood"]["nDCG@10"]
        for i, r in enumerate(runs):
            f = finetuned(r, d)
            if f is None:
                ax.text(0.005, i, "not evaluated", va="center", fontsize=8, color="grey")
                continue
            v = f["nDCG@10"]
            ax.barh(i, v, color="tab:green" if r["config"]["method"] == "likelihood" else "tab:blue")
            marks = ("B" if f.get("significant_win_vs_bm25") else "") + (
                "Z" if f.get("significant_win_vs_zero_shot_likelihood") else ""
            )
            ax.text(
                v + 0.005,
                i,
                f"{v:.3f} {marks}".strip(),
                va="center",
                fontsize=8,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 1},
            )
        ax.axvline(bm25, color="black", linestyle="--", label=f"BM25 {bm25:.3f}")
        ax.axvline(zs, color="tab:red", linestyle=":", label=f"zero-shot likelihood {zs:.3f}")
        ax.set_title(f"{d} ({first['n_queries']} queries, BM25 top {first['top_k']})")
        ax.set_xlabel("nDCG@10")
        ax.set_xlim(0, 1)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=2, fontsize=8, frameon=False)
    axes[0].set_yticks(range(len(runs)), names)
    axes[0].invert_yaxis()
    fig.suptitle(
        "smollm2-135m fine-tuned (blue: yes/no logit, green: query likelihood); B/Z: significant win over BM25 / "
        "zero-shot likelihood",
        fontsize=9,
    )
    fig.tight_layout()
    save_png(fig, out, 120)


def main(argv: list[str] | None = None) -> None:
    args = plot_options(__doc__.splitlines()[0], "finetune.png", argv)
    runs = load(args.results)
    if not runs:
        raise SystemExit(f"no complete finetune-*.json in {args.results}")
    print(table(runs))
    for dataset in DATASETS:
        print()
        print(comparison(runs, dataset))
    plot(runs, args.out)


if __name__ == "__main__":
    main()
