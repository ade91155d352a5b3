"""Where a ranker's time goes: torch's profiler over real DL19 scoring, its operators grouped into matrix
multiplies, attention, compiled fused kernels, other elementwise work and the rest.

The roofline of ``throughput.py`` counts 2 × the non-embedding parameters a token, the matrix multiplies' work;
this shows what else the CPU spends its time on, and so why the fraction of the roofline stays where it is.
The first query warms up (and, with ``--compile on``, builds kernels); the next ``--queries`` are profiled. A
probe then times one layer's attention at the model's head shape: torch's CPU flash kernel against its math path,
and a mask against ``is_causal``.

    python benchmarks/op_profile.py                                   # 135M, pointwise, bfloat16 + compile
    python benchmarks/op_profile.py --dtype float32 --compile off --out benchmarks/results/op_profile-fp32.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from _common import RESULTS, add_data_option, command_line, environment, load_dataset, markdown_table, write_json

GROUPS = {
    "matrix multiplies": ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear"),
    "attention (SDPA)": ("aten::_scaled_dot_product", "aten::scaled_dot_product"),
    "compiled fused kernels": ("## Call CompiledFxGraph",),
    "elementwise and copies": (
        "aten::add", "aten::mul", "aten::cat", "aten::neg", "aten::where", "aten::copy_", "aten::silu",
        "aten::pow", "aten::mean", "aten::rsqrt", "aten::softmax", "aten::log_softmax", "aten::sub", "aten::div",
        "aten::index", "aten::gather", "aten::embedding", "aten::masked_fill", "aten::clone", "aten::to",
    ),
}  # fmt: skip


def group_of(name: str) -> str:
    for group, prefixes in GROUPS.items():
        if any(name.startswith(p) for p in prefixes):
            return group
    return "other (dispatch, Python, dynamo)"


def attention_probe(dtype: str, heads: int, head_dim: int, repeats: int = 10) -> dict[str, float]:
    """Milliseconds of one layer's attention for a pass of 16 rows (180 new tokens over 240 keys, as with a reused
    prefix; and 240 over 240), with torch's CPU flash kernel and its plain math path, with a mask and causal."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dt = getattr(torch, dtype)
    g = torch.Generator().manual_seed(0)
    rows, new, keys = 16, 180, 240

    def t(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(dt)

    q, k, v, square = t(rows, heads, new, head_dim), t(rows, heads, keys, head_dim), t(rows, heads, keys, head_dim), \
        t(rows, heads, keys, head_dim)
    mask = torch.ones(rows, 1, new, keys, dtype=torch.bool).tril(diagonal=keys - new)
    full = torch.ones(rows, 1, keys, keys, dtype=torch.bool).tril()
    cases = {
        "flash_mask": (SDPBackend.FLASH_ATTENTION, lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)),
        "math_mask": (SDPBackend.MATH, lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)),
        "flash_square_mask": (SDPBackend.FLASH_ATTENTION,
                              lambda: F.scaled_dot_product_attention(square, k, v, attn_mask=full)),
        "flash_square_causal": (SDPBackend.FLASH_ATTENTION,
                                lambda: F.scaled_dot_product_attention(square, k, v, is_causal=True)),
    }  # fmt: skip
    out = {}
    for name, (backend, run) in cases.items():
        with torch.inference_mode(), sdpa_kernel(backend):
            run()
            start = time.perf_counter()
            for _ in range(repeats):
                run()
            out[name + "_ms"] = round((time.perf_counter() - start) / repeats * 1000, 2)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from torch.profiler import profile

    from llmrerank import Reranker
    from llmrerank.options import parse_switch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_option(ap, "dl19/")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--method", default="pointwise")
    ap.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    ap.add_argument("--compile", default="on", type=parse_switch)
    ap.add_argument("--top-k", type=int, default=100)
    ap.add_argument("--queries", type=int, default=2, help="profiled, after one warm-up query")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--out", type=Path, default=RESULTS / "op_profile-smollm2-135m-bfloat16-compile.json")
    args = ap.parse_args(argv)

    ds = load_dataset("dl19", args.data, args.top_k, args.queries + 1)
    ranker = Reranker(args.method, model=args.model, dtype=args.dtype, compile=args.compile,
                      max_length=args.max_length)
    warm, *profiled = ds.qids
    ranker.score(ds.queries[warm], [ds.corpus[d] for d, _ in ds.run[warm]])
    start = time.perf_counter()
    with profile() as prof:
        for q in profiled:
            ranker.score(ds.queries[q], [ds.corpus[d] for d, _ in ds.run[q]])
    wall = time.perf_counter() - start
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    groups: dict[str, float] = {}
    for e in events:
        groups[group_of(e.key)] = groups.get(group_of(e.key), 0.0) + e.self_cpu_time_total
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:15]
    result = {
        "benchmark": "op_profile",
        "command": command_line(),
        "environment": environment(),
        "settings": {k: getattr(args, k) for k in ("model", "method", "dtype", "compile", "top_k", "max_length")},
        "queries_profiled": len(profiled),
        "wall_seconds": round(wall, 2),
        "docs_per_s": round(len(profiled) * args.top_k / wall, 2),
        "groups": {g: round(t / total, 4) for g, t in sorted(groups.items(), key=lambda kv: -kv[1])},
        "top_ops": [
            {"op": e.key[:80], "share": round(e.self_cpu_time_total / total, 4), "calls": e.count} for e in top
        ],
    }
    config = ranker.backend.model.config
    result["attention_probe"] = attention_probe(
        args.dtype, config.num_attention_heads, config.hidden_size // config.num_attention_heads
    )
    write_json(args.out, result)
    rows = [["group", "share of CPU time"]] + [[g, f"{100 * s:.1f}%"] for g, s in result["groups"].items()]
    print("\n".join(markdown_table(rows)))
    print(f"\n{result['docs_per_s']} docs/s while profiled; attention probe (ms): {result['attention_probe']}")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
