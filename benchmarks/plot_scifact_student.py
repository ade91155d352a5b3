"""The SciFact student (``benchmarks/results/scifact-student.json`` and its students' records) drawn: each
student's dev nDCG@10 on 50 SciFact train queries over its training steps (step 0: the 135M zero-shot, measured by
the first student's probe; the same base model and queries for both), and nDCG@10 of BM25, the 135M zero-shot
likelihood, the two students and the 0.5B teacher on the SciFact sample and DL19.

    python benchmarks/plot_scifact_student.py [--results benchmarks/results] [--out docs/scifact_student.png]
"""

from __future__ import annotations

import json

from _common import ndcg_bars, plot_options, save_png

BARS = (
    ("BM25", "BM25"),
    ("zero-shot 135M", "135M zero-shot"),
    ("SciFact student", "SciFact student"),
    ("shipped DL21 student", "DL21 student (shipped)"),
    ("zero-shot 0.5B (teacher)", "0.5B (teacher)"),
)


def main(argv: list[str] | None = None) -> None:
    args = plot_options(__doc__ or "", "scifact_student.png", argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def read(name: str) -> dict:
        return json.loads((args.results / name).read_text(encoding="utf-8"))

    result = read("scifact-student.json")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    start = None
    for name in result["dev"]:
        record = read(f"finetune-{name}.json")
        start = record.get("time_bound", {}).get("probe", {}).get("dev_nDCG@10_before_training", start)
        curve = [(p["step"], p["nDCG@10"]) for p in record["training"]["dev"]]
        if start is not None:
            curve.insert(0, (0, start))
        mark = " (chosen)" if name == result["chosen"] else ""
        left.plot([s for s, _ in curve], [v for _, v in curve], marker="o", label=name + mark)
    left.set_xlabel("optimiser step (4 synthetic groups each)")
    left.set_ylabel("dev nDCG@10 (50 SciFact train queries)")
    left.set_title("SciFact students on dev (step 0: the 135M zero-shot)")
    left.legend(fontsize=7)
    left.grid(alpha=0.3)

    datasets = {name: result[name] for name in ("scifact", "dl19")}
    ndcg_bars(right, datasets, BARS, f"chosen: {result['chosen']}", legend="upper right")
    fig.tight_layout()
    save_png(fig, args.out, dpi=110)


if __name__ == "__main__":
    main()
