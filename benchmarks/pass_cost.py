"""What one more forward pass costs on this machine, in tokens: the measurement behind the planner's CPU default.

A pass of ``rows`` prompts padded to ``width`` tokens takes about ``a + b × rows × width`` seconds: ``b`` is the
time of a token, ``a`` what a pass costs whatever its size (Python and dispatch, the last position's output layer,
threads starting). ``a / b`` is the pass cost in tokens: padding a prompt by more tokens than that costs more
than running it in a pass of its own. For each dtype and width this times passes of 1 to 16 rows (random token
ids, no padding, best of ``--repeats``), fits the line by least squares over rows, and reports ``a / b``::

    python benchmarks/pass_cost.py                  # smollm2-135m, float32 and bfloat16: results/pass_cost-*.json
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from _common import RESULTS, command_line, environment, stamp, write_json


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares intercept and slope of ys over xs."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - slope * mx, slope


def main(argv: list[str] | None = None) -> None:
    from llmrerank.models import load_causal_lm

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--widths", nargs="+", type=int, default=[64, 128, 256])
    ap.add_argument("--rows", nargs="+", type=int, default=[1, 2, 4, 8, 16])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = args.out or RESULTS / f"pass_cost-{args.model}.json"
    result = {"benchmark": "pass_cost", "command": command_line(), "started": stamp(), "environment": environment(),
              "model": args.model, "rows": {}}
    g = torch.Generator().manual_seed(0)
    for dtype in args.dtypes:
        model, _, _ = load_causal_lm(args.model, getattr(torch, dtype), torch.device("cpu"))
        vocab = model.config.vocab_size
        for width in args.widths:
            seconds = []
            for rows in args.rows:
                ids = torch.randint(100, vocab, (rows, width), generator=g)
                with torch.inference_mode():
                    model(input_ids=ids, logits_to_keep=1)  # warm-up
                    best = float("inf")
                    for _ in range(args.repeats):
                        start = time.perf_counter()
                        model(input_ids=ids, logits_to_keep=1)
                        best = min(best, time.perf_counter() - start)
                seconds.append(best)
            a, b = fit([r * width for r in args.rows], seconds)
            key = f"{dtype} width {width}"
            result["rows"][key] = {"dtype": dtype, "width": width, "rows": args.rows, "seconds": seconds,
                                   "pass_seconds": a, "token_seconds": b, "pass_cost_tokens": a / b}
            print(f"{key:22} pass {a * 1000:7.1f} ms  token {b * 1e6:7.1f} us  pass cost {a / b:6.0f} tokens  "
                  f"(1 row {seconds[0] / width * 1e6:.0f} us/token, {args.rows[-1]} rows "
                  f"{seconds[-1] / (args.rows[-1] * width) * 1e6:.0f} us/token)", flush=True)
            write_json(out, result)
        del model
    result["finished"] = stamp()
    write_json(out, result)


if __name__ == "__main__":
    main()
