"""nDCG@10 of a reranked run fused with BM25 at each weight (``benchmarks/results/fusion-*.json``), one line per
run, BM25 and the unfused reranking as the ends of each line.

    python benchmarks/plot_fusion.py [--results benchmarks/results] [--out docs/fusion.png]
"""

from __future__ import annotations

import json

from _common import plot_options, save_png


def main(argv: list[str] | None = None) -> None:
    args = plot_options(__doc__ or "", "fusion.png", argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for path in sorted(args.results.glob("fusion-*.json")):
        r = json.loads(path.read_text(encoding="utf-8"))
        if r.get("status") != "complete":
            continue
        weights = [(float(name[2:]), v["nDCG@10"]) for name, v in r["runs"].items() if name.startswith("W=")]
        weights.sort()
        label = f"{path.stem.removeprefix('fusion-')} ({r['queries']} queries)"
        line = ax.plot([w for w, _ in weights], [v for _, v in weights], marker="o", label=label)[0]
        ax.axhline(r["runs"]["bm25"]["nDCG@10"], color=line.get_color(), linestyle=":", linewidth=1)
    ax.set_xlabel("W, the first stage's weight (0: the reranker alone, 1: BM25 alone)")
    ax.set_ylabel("nDCG@10")
    ax.set_title("--fuse bm25:W on the 0.5B query likelihood, top 20 (dotted: BM25)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_png(fig, args.out, dpi=110)


if __name__ == "__main__":
    main()
