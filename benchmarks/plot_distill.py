"""The distillation benchmark (``benchmarks/results/distill-dl21.json``) drawn: each student's DL21 dev nDCG@10
over its training steps (its zero-shot start at step 0; the teacher's dev score dashed), and nDCG@10 of BM25, the
135M zero-shot likelihood, the chosen student and the 0.5B teacher on DL19 and the SciFact sample.

    python benchmarks/plot_distill.py [--results benchmarks/results] [--out docs/distill.png]
"""

from __future__ import annotations

import json

from _common import ndcg_bars, plot_options, save_png

# the teacher's (0.5B zero-shot likelihood, float32, max_length 256) DL21 dev nDCG@10 over the same 11 queries and
# BM25 top 20: benchmarks/results/fusion-dl21-dev-qwen2.5-0.5b-likelihood.json, W = 0
TEACHER_DEV_JSON = "fusion-dl21-dev-qwen2.5-0.5b-likelihood.json"
BARS = (("bm25", "BM25"), ("zero_shot_135m", "135M zero-shot"), ("finetuned", "student"), ("zero_shot_0.5b", "0.5B"))


def main(argv: list[str] | None = None) -> None:
    args = plot_options(__doc__ or "", "distill.png", argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = json.loads((args.results / "distill-dl21.json").read_text(encoding="utf-8"))
    stages = result["stages"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for spec, student in stages["students"]["runs"].items():
        curve = [(0, student["dev_before"])] + [(p["step"], p["nDCG@10"]) for p in student["dev_curve"] or []]
        mark = " (chosen)" if spec == stages["select"]["chosen"] else ""
        left.plot([s for s, _ in curve], [v for _, v in curve], marker="o", label=spec + mark)
    teacher = json.loads((args.results / TEACHER_DEV_JSON).read_text(encoding="utf-8"))["runs"]["W=0"]["nDCG@10"]
    left.axhline(teacher, color="black", linestyle="--", linewidth=1, label="teacher (0.5B zero-shot)")
    left.set_xlabel("optimiser step (4 synthetic groups each)")
    left.set_ylabel("DL21 dev nDCG@10 (11 queries)")
    left.set_title("students on DL21 dev")
    left.legend(fontsize=7)
    left.grid(alpha=0.3)

    ndcg_bars(right, stages["evaluate"]["datasets"], BARS, f"chosen student: {stages['select']['chosen']}")
    fig.tight_layout()
    save_png(fig, args.out, dpi=110)


if __name__ == "__main__":
    main()
