"""The prepared device check for issues 13 and 14: one short run on a lent GPU (or, to try it, this CPU).

The packaged weights are too large to send to a device machine, so the presets' shapes are rebuilt with random
weights (a speed check needs the shapes, not the weights; scores mean nothing here). For each preset shape and
dtype it measures, on synthetic DL19-like prompts (a 64-token shared head per query, documents of 80-200
tokens, an 8-token tail), with llmrerank's backend as the library runs it:

- **pass cost**: passes of 1-32 rows × 64-256 tokens, a line fitted per width (as ``pass_cost.py``): what one
  more pass costs in tokens on this device, the figure behind the planner's per-device default;
- **throughput**: docs/s and served tokens/s of ``last_logits`` over ``--queries`` queries × ``--docs``
  documents with the device's defaults (prefix reuse; a GPU fills its passes), with the measured pass cost,
  with ``compile``, and of a plain loop (length-sorted batches of 16, the last position's logits), the
  fastest peer on the CPU;
- **micro-batching ceiling**: 16 one-document prompts of 16 queries, one call each against one call for all
  (what the server's micro-batching can gain at most: issue 13's aim is 2x);
- **roofline**: the device's matrix-multiply FLOP/s on the model's linear shapes and the tokens/s they allow.

Everything is written to ``--out`` (default ``$OUT/device_check.json`` when ``$OUT`` is set, else
``results/device_check.json``) after each measurement, so a run cut short keeps what it finished::

    python benchmarks/device_check.py                                # the device run (about 5 minutes on a GPU)
    python benchmarks/device_check.py --device cpu --quick           # a trial here: 135M shapes, small sizes
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from pass_cost import fit

# the presets' architectures (their config.json), without weights
SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "smollm2-135m": ("llama", dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                   num_attention_heads=9, num_key_value_heads=3, vocab_size=49152)),
    "qwen2.5-0.5b": ("qwen2", dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                   num_attention_heads=14, num_key_value_heads=2, vocab_size=151936)),
}


def random_model(preset: str, dtype: torch.dtype, device: torch.device) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    arch, sizes = SHAPES[preset]
    config_class, model_class = (LlamaConfig, LlamaForCausalLM) if arch == "llama" else (Qwen2Config, Qwen2ForCausalLM)
    config = config_class(**sizes, max_position_embeddings=4096, tie_word_embeddings=True, pad_token_id=0,
                          eos_token_id=1)
    torch.manual_seed(0)
    return model_class(config).to(device=device, dtype=dtype).eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Any, repeats: int = 1) -> float:
    """The best wall time of ``repeats`` calls of ``fn`` (after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def prompts(queries: int, docs: int, vocab: int, seed: int = 0) -> list[list[list[int]]]:
    """Per query, ``docs`` prompts: its 64-token head, a document of 80-200 tokens, an 8-token tail."""
    g = torch.Generator().manual_seed(seed)
    tail = torch.randint(100, vocab, (8,), generator=g).tolist()
    out = []
    for _ in range(queries):
        head = torch.randint(100, vocab, (64,), generator=g).tolist()
        lengths = torch.randint(80, 201, (docs,), generator=g).tolist()
        out.append([[*head, *torch.randint(100, vocab, (n,), generator=g).tolist(), *tail] for n in lengths])
    return out


def plain_loop(model: Any, seqs: list[list[int]], device: torch.device, batch: int = 16) -> None:
    """The peers' way: length-sorted batches, left padding, the last position's logits."""
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    with torch.inference_mode():
        for k in range(0, len(order), batch):
            rows = [seqs[i] for i in order[k : k + batch]]
            width = max(len(r) for r in rows)
            ids = torch.zeros((len(rows), width), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for j, r in enumerate(rows):
                ids[j, width - len(r) :] = torch.tensor(r)
                mask[j, width - len(r) :] = 1
            model(input_ids=ids.to(device), attention_mask=mask.to(device), logits_to_keep=1).logits[:, -1, :2]


def measure(model: Any, device: torch.device, args: argparse.Namespace, row: dict[str, Any], save: Any) -> None:
    """Every measurement of one model (its shapes and dtype) into ``row``, saved after each."""
    from llmrerank.backends.hf import HFBackend, uncompile

    tok = SimpleNamespace(pad_token_id=0, eos_token_id=1)
    vocab, dtype = model.config.vocab_size, next(model.parameters()).dtype
    # roofline: the model's linear layers' shapes, 2048 rows
    hidden, inter = model.config.hidden_size, model.config.intermediate_size
    x = torch.randn(2048, hidden, device=device, dtype=dtype)
    w = torch.randn(inter, hidden, device=device, dtype=dtype)
    flops = 2 * 2048 * hidden * inter / timed(device, lambda: x @ w.T, repeats=5)
    params = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n and "lm_head" not in n)
    row["roofline"] = {"flop_per_s": flops, "tokens_per_s": flops / (2 * params), "params": params}
    save()
    # pass cost
    rows_list = [1, 2, 4, 8, 16] if args.quick else [1, 2, 4, 8, 16, 32]
    costs = {}
    g = torch.Generator().manual_seed(1)
    for width in [64, 256] if args.quick else [64, 128, 256]:
        times = []
        for rows in rows_list:
            ids = torch.randint(100, vocab, (rows, width), generator=g).to(device)
            with torch.inference_mode():
                times.append(timed(device, lambda ids=ids: model(input_ids=ids, logits_to_keep=1), 3))
        a, b = fit([r * width for r in rows_list], times)
        costs[width] = {"seconds": times, "pass_seconds": a, "token_seconds": b, "pass_cost_tokens": a / b}
    measured = max(0, round(sum(c["pass_cost_tokens"] for c in costs.values()) / len(costs)))
    row["pass_cost"], row["pass_cost_tokens"] = costs, measured
    save()
    # throughput
    data = prompts(args.queries, args.docs, vocab)
    served = sum(len(s) for q in data for s in q)
    ndocs = args.queries * args.docs

    def run(backend: HFBackend) -> None:
        for seqs in data:
            backend.last_logits(seqs, columns=[2, 3])

    setups: dict[str, dict[str, Any]] = {"defaults": {}, f"pass cost {measured} (measured)": {"pass_cost": measured}}
    if not args.no_compile:
        setups["defaults + compile"] = {"compile": True}
    throughput: dict[str, dict[str, Any]] = {}
    row["throughput"] = throughput
    for name, options in setups.items():
        try:
            backend = HFBackend(model, tok, batch_size=16, device=device, **options)
            seconds = timed(device, lambda backend=backend: run(backend))
            throughput[name] = {"docs_per_s": ndocs / seconds, "served_tokens_per_s": served / seconds,
                                "pass_cost": backend.pass_cost, "compile_seconds": backend.compile_seconds}
        except Exception as e:  # a device without a compiler still reports the rest
            throughput[name] = {"error": f"{type(e).__name__}: {e}"[:300]}
        save()
    uncompile([m for m in model.modules() if getattr(m, "_compiled_call_impl", None) is not None])
    seconds = timed(device, lambda: [plain_loop(model, seqs, device) for seqs in data])
    throughput["plain loop (peers' way)"] = {"docs_per_s": ndocs / seconds, "served_tokens_per_s": served / seconds}
    save()
    # micro-batching ceiling: 16 one-document prompts of 16 queries
    single = [q[0] for q in prompts(16, 1, vocab, seed=2)]
    backend = HFBackend(model, tok, batch_size=16, device=device)
    alone = timed(device, lambda: [backend.last_logits([s], columns=[2, 3]) for s in single], 2)
    merged = timed(device, lambda: backend.last_logits(single, columns=[2, 3]), 2)
    row["micro_batching"] = {"one_by_one_s": alone, "one_call_s": merged, "ceiling": alone / merged}
    save()


def main(argv: list[str] | None = None) -> None:
    from llmrerank.backends.hf import resolve_device

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--presets", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--queries", type=int, default=8)
    ap.add_argument("--docs", type=int, default=100)
    ap.add_argument("--quick", action="store_true", help="135M shapes, 2 queries × 32 documents, fewer pass sizes")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.presets, args.queries, args.docs = ["smollm2-135m"], 2, 32
    device = resolve_device(args.device)
    out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else Path("results")) / "device_check.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "benchmark": "device_check",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "settings": vars(args) | {"out": str(out)},
        "rows": {},
    }

    def save() -> None:
        out.write_text(json.dumps(result, indent=1))

    for preset in args.presets:
        for dtype_name in args.dtypes:
            key = f"{preset} {dtype_name}"
            row: dict[str, Any] = result["rows"].setdefault(key, {})
            model = random_model(preset, getattr(torch, dtype_name), device)
            measure(model, device, args, row, save)
            tp = row["throughput"]
            line = ", ".join(f"{k} {v['docs_per_s']:.1f}" for k, v in tp.items() if "docs_per_s" in v)
            print(f"{key}: pass cost {row['pass_cost_tokens']} tokens; docs/s {line}; micro-batching ceiling "
                  f"{row['micro_batching']['ceiling']:.2f}x; roofline {row['roofline']['flop_per_s'] / 1e12:.1f} "
                  "TFLOP/s", flush=True)
            del model
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
