"""Scoring throughput: llmrerank (each speed feature on and off) against peers on the same weights and data, and
the machine's roofline.

One run, one model (``--model``, a preset: its dequantised folder is what every contestant loads), the first
``--queries`` DL19 queries with their BM25 top ``--top-k``, prompts cut to ``--max-length`` tokens. Every
contestant runs in its own subprocess, one after another, so each has the machine to itself and its peak memory
is its own:

- llmrerank, pointwise yes/no (its default method and template), in the configurations of ``CONFIGS``: the
  earlier defaults (float32, count batches, no prefix reuse), then one feature at a time, then the defaults,
  and with ``compile`` (its warm-up at load is reported apart, not counted in docs/s);
- llmrerank with the peer's prompt and score (the BGE reranker prompt, the raw "Yes" logit), to check that the
  rankings agree with the peer's;
- peers, in their own virtualenv (``benchmarks/peers/setup.sh`` builds it; ``--no-peers`` skips them):
  FlagEmbedding's ``FlagLLMReranker`` (float32 and its ``use_bf16``), sentence-transformers' ``CrossEncoder``
  where it can load a causal LM, and a plain transformers loop (same prompt as FlagLLMReranker, length-sorted
  batches, float32 and bfloat16);
- the roofline: this CPU's matrix-multiply FLOP/s in float32 and bfloat16 on the model's own linear-layer
  shapes (``--roofline-tokens`` rows), the tokens/s that allows (FLOP/s ÷ (2 × non-embedding parameters)), and
  each contestant's fraction of it, counting every prompt token as served (a reused prefix's tokens included);
- other methods (llmrerank defaults, each method's own max_length and dtype, ``--other-queries`` queries at top
  20, since pairwise compares every ordered pair): query likelihood (tokens/s), listwise generation (generated
  tokens/s), setwise and pairwise comparisons (comparisons/s), each with its fraction of the roofline in its dtype
  (every prompt token as served and every generated token, each worth 2 x the non-embedding parameters).

    python benchmarks/throughput.py                       # writes benchmarks/results/throughput-smollm2-135m.json
    python benchmarks/throughput.py --queries 1 --no-others --out results/smoke.json

Each contestant's row is written to the JSON as soon as it finishes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import _common
from _common import (
    REPO,
    RESULTS,
    add_data_option,
    command_line,
    environment,
    load_dataset,
    peak_rss_mib,
    stamp,
    write_json,
)

PEERS_PYTHON = REPO / "benchmarks" / "peers" / ".venv" / "bin" / "python"
PEERS_SCRIPT = REPO / "benchmarks" / "peers" / "peers.py"
BGE_TEMPLATE = REPO / "benchmarks" / "peers" / "bge_prompt.toml"

# name -> backend options of llmrerank's pointwise ranker (its default method); "defaults" is what Reranker() does
# the earlier defaults fill every pass (a pass cost this large), so that each row adds one feature at a time
PLAIN = {"dtype": "float32", "reuse_prefix": False, "batch_tokens": 10**9, "pass_cost": 10**9}
CONFIGS: dict[str, dict[str, Any]] = {
    "llmrerank float32 (earlier defaults)": PLAIN,
    "llmrerank float32 + token budget": {**PLAIN, "batch_tokens": 8192},
    "llmrerank float32 + prefix reuse": {**PLAIN, "reuse_prefix": True},
    "llmrerank int8": {**PLAIN, "quantize": "int8"},
    "llmrerank bfloat16": {**PLAIN, "dtype": "bfloat16"},
    "llmrerank bfloat16 + prefix reuse + token budget": {"dtype": "bfloat16"},
    "llmrerank defaults": {},
    "llmrerank defaults, max_length 512 (memory)": {"max_length": 512},
    "llmrerank defaults, passes filled (no pass cost)": {"pass_cost": 10**9},
    "llmrerank defaults + compile": {"compile": True},
    "llmrerank bfloat16 + prefix reuse + token budget, passes filled": {"dtype": "bfloat16", "pass_cost": 10**9},
    "llmrerank bfloat16 + prefix reuse + token budget + compile": {"dtype": "bfloat16", "compile": True},
}
BGE_ROW = "llmrerank defaults, BGE prompt and Yes logit"
FAMILY_ROW = "llmrerank defaults, family bge-reranker-v2-gemma"
FAMILY_BF16_ROW = "llmrerank bfloat16, family bge-reranker-v2-gemma"
OTHERS = ("likelihood", "listwise", "setwise", "pairwise")  # at top 20: pairwise scores every ordered pair
PEERS = {
    "FlagLLMReranker float32": ["--peer", "flag_llm"],
    "FlagLLMReranker use_bf16": ["--peer", "flag_llm", "--bf16"],
    "CrossEncoder float32": ["--peer", "cross_encoder"],
    "CrossEncoder bfloat16": ["--peer", "cross_encoder", "--bf16"],
    "transformers loop float32": ["--peer", "transformers_loop"],
    "transformers loop bfloat16": ["--peer", "transformers_loop", "--bf16"],
}


# --- the children ---------------------------------------------------------------------------------------------


def child_llmrerank(args: argparse.Namespace) -> dict[str, Any]:
    """Score the data with one llmrerank configuration; print what was measured."""
    import torch

    from llmrerank import Reranker

    torch.set_num_threads(args.threads)
    options = json.loads(args.options)
    ds = load_dataset("dl19", args.data, args.top_k, args.queries)
    options = {"max_length": args.max_length, "batch_size": args.batch_size, **options}
    loading = time.perf_counter()
    ranker = Reranker(args.method, model=args.model, **options)
    load_seconds = time.perf_counter() - loading
    before = ranker.backend.stats.snapshot()
    start = time.perf_counter()
    scores = {}
    for q in ds.qids:
        scores[q] = ranker.score(ds.queries[q], [ds.corpus[d] for d, _ in ds.run[q]])
    seconds = time.perf_counter() - start
    used = ranker.backend.stats.since(before)
    docs = sum(len(ds.run[q]) for q in ds.qids)
    return {
        "seconds": seconds,
        "docs": docs,
        "docs_per_s": docs / seconds,
        "served_tokens": used["tokens"] + used["reused_tokens"],
        "computed_tokens": used["tokens"],
        "padded_tokens": used["padded_tokens"],
        "forward_calls": used["forward_calls"],
        "tokens_per_s": (used["tokens"] + used["reused_tokens"]) / seconds,
        "resolved_dtype": ranker.backend.dtype,
        "backend": ranker.config()["backend"],
        "load_seconds": load_seconds,  # not in docs/s: loading, and with compile its warm-up passes
        "compile_seconds": ranker.backend.compile_seconds,
        "peak_rss_mib": peak_rss_mib(),
        "scores": {q: [[d, s] for (d, _), s in zip(ds.run[q], scores[q])] for q in ds.qids},
    }


def child_other(args: argparse.Namespace) -> dict[str, Any]:
    """One other method with the library's defaults: its own throughput unit."""
    import torch

    from llmrerank import Reranker

    torch.set_num_threads(args.threads)
    ds = load_dataset("dl19", args.data, 20, args.queries)
    ranker = Reranker(args.method, model=args.model)  # the method's own defaults, max_length included
    before = ranker.backend.stats.snapshot()
    counts: dict[str, float] = {}
    start = time.perf_counter()
    for q in ds.qids:
        ranking = ranker.rank(ds.queries[q], [ds.corpus[d] for d, _ in ds.run[q]])
        for k, v in (ranking.metadata or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                counts[k] = counts.get(k, 0) + v
    seconds = time.perf_counter() - start
    used = ranker.backend.stats.since(before)
    docs = sum(len(ds.run[q]) for q in ds.qids)
    return {
        "method": args.method,
        "seconds": seconds,
        "docs_per_s": docs / seconds,
        "served_tokens": used["tokens"] + used["reused_tokens"],
        "prompt_tokens_per_s": (used["tokens"] + used["reused_tokens"]) / seconds,
        "generated_tokens": used["generated_tokens"],
        "generated_tokens_per_s": used["generated_tokens"] / seconds,
        "comparisons_per_s": counts.get("comparisons", 0) / seconds,
        "counts": counts,
        "resolved_dtype": ranker.backend.dtype,
        "peak_rss_mib": peak_rss_mib(),
    }


def child_roofline(args: argparse.Namespace) -> dict[str, Any]:
    """Matrix-multiply FLOP/s on the model's own linear layers, float32 and bfloat16."""
    import torch

    from llmrerank.models import load_causal_lm

    torch.set_num_threads(args.threads)
    model, _, _ = load_causal_lm(args.model, torch.float32, torch.device("cpu"))
    head = model.get_output_embeddings()
    shapes: dict[tuple[int, int], int] = {}
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module is not head:
            key = (module.in_features, module.out_features)
            shapes[key] = shapes.get(key, 0) + 1
    params = sum(n * i * o for (i, o), n in shapes.items())
    del model
    out: dict[str, Any] = {
        "non_embedding_linear_parameters": params,
        "shapes": [[i, o, n] for (i, o), n in shapes.items()],
        "rows": args.roofline_tokens,
    }
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        x = {i: torch.randn(args.roofline_tokens, i, dtype=dtype) for i, _ in shapes}
        w = {(i, o): torch.randn(o, i, dtype=dtype) / i**0.5 for i, o in shapes}
        with torch.inference_mode():
            for (i, o) in shapes:  # warm up each kernel
                torch.nn.functional.linear(x[i], w[(i, o)])
            best = float("inf")
            for _ in range(3):
                start = time.perf_counter()
                for (i, o), n in shapes.items():
                    for _ in range(n):
                        torch.nn.functional.linear(x[i], w[(i, o)])
                best = min(best, time.perf_counter() - start)
        flops = 2 * args.roofline_tokens * params / best
        out[name] = {"flop_per_s": flops, "tokens_per_s_allowed": flops / (2 * params)}
    return out


# --- the parent -------------------------------------------------------------------------------------------------


def run_child(argv: list[str], python: str | Path = sys.executable, script: Path | None = None) -> dict[str, Any]:
    """A child: this script's (``script`` None), or the peers' in their own virtualenv."""
    if script is None:
        return _common.run_child(Path(__file__).resolve(), argv)
    return _common.run_child(script, argv, python, isolated=True)


def agreement(ds: Any, a: dict[str, list], b: dict[str, list]) -> dict[str, float]:
    """nDCG@10 of two score sets and the mean per-query Kendall tau between them."""
    from precision import kendall_tau_b

    from llmrerank.evaluate import evaluate_runs

    def run(scores):
        return {q: sorted(((d, s) for d, s in scores[q]), key=lambda p: -p[1]) for q in scores}

    ev = evaluate_runs(ds.qrels, {"a": run(a), "b": run(b)}, measures=["nDCG@10"])
    taus = [kendall_tau_b([s for _, s in a[q]], [s for _, s in b[q]]) for q in a]
    return {"nDCG@10_a": ev.aggregate["a"]["nDCG@10"], "nDCG@10_b": ev.aggregate["b"]["nDCG@10"],
            "mean_tau": sum(taus) / len(taus)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_option(ap, "dl19/")
    ap.add_argument("--model", default="smollm2-135m", help="a preset (its dequantised folder goes to the peers)")
    ap.add_argument("--queries", type=int, default=5)
    ap.add_argument("--top-k", type=int, default=100)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--roofline-tokens", type=int, default=2048)
    ap.add_argument("--other-queries", type=int, default=5)
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--no-others", action="store_true")
    ap.add_argument("--only", nargs="*", default=None, help="run only the contestants whose names contain these")
    ap.add_argument("--exact", action="store_true", help="--only names whole contestant names")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--child", choices=["llmrerank", "other", "roofline"], help=argparse.SUPPRESS)
    ap.add_argument("--options", default="{}", help=argparse.SUPPRESS)
    ap.add_argument("--method", default="pointwise", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        sys.path.insert(0, str(Path(__file__).parent))
        fn = {"llmrerank": child_llmrerank, "other": child_other, "roofline": child_roofline}[args.child]
        write_json(args.out, fn(args))
        return

    from llmrerank.models import resolve

    out = args.out or RESULTS / f"throughput-{args.model}.json"
    folder = resolve(args.model).folder
    ds = load_dataset("dl19", args.data, args.top_k, args.queries)
    common = ["--data", str(args.data), "--model", args.model, "--queries", str(args.queries), "--top-k",
              str(args.top_k), "--max-length", str(args.max_length), "--batch-size", str(args.batch_size),
              "--threads", str(args.threads)]
    result: dict[str, Any] = {
        "benchmark": "throughput",
        "command": command_line(),
        "started": stamp(),
        "environment": environment(),
        "model": args.model,
        "weights": str(folder),
        "data": {"dataset": "dl19", "queries": len(ds.qids), "top_k": args.top_k, "max_length": args.max_length,
                 "batch_size": args.batch_size, "threads": args.threads, "other_queries": args.other_queries},
        "rows": {},
    }
    if out.exists():  # resume: keep the rows of an earlier run with the same settings
        old = json.loads(out.read_text())
        if old.get("data") == result["data"] and old.get("model") == args.model:
            result["rows"] = {k: v for k, v in old.get("rows", {}).items() if "error" not in v}
            result["roofline"] = old.get("roofline")
            result["others"] = old.get("others")
    rows = result["rows"]

    def wanted(name: str) -> bool:
        if name in rows:
            return False
        return args.only is None or any(s == name if args.exact else s in name for s in args.only)

    if not result.get("roofline"):
        print("roofline ...", flush=True)
        result["roofline"] = run_child(["--child", "roofline", *common, "--roofline-tokens", str(args.roofline_tokens)])
        write_json(out, result)
    contestants: list[tuple[str, list[str], Any, Any]] = []
    for name, options in CONFIGS.items():
        contestants.append((name, ["--child", "llmrerank", *common, "--options", json.dumps(options)], None, None))
    bge = {"template": str(BGE_TEMPLATE), "tokens": ["Yes", "No"], "normalisation": "yes_logit"}
    contestants.append((BGE_ROW, ["--child", "llmrerank", *common, "--options", json.dumps(bge)], None, None))
    family = {"family": "bge-reranker-v2-gemma"}  # FlagLLMReranker's prompt and score, token for token (issue 15)
    contestants.append((FAMILY_ROW, ["--child", "llmrerank", *common, "--options", json.dumps(family)], None, None))
    family_bf16 = json.dumps({**family, "dtype": "bfloat16"})
    contestants.append((FAMILY_BF16_ROW, ["--child", "llmrerank", *common, "--options", family_bf16], None, None))
    if not args.no_peers:
        peer_common = ["--model", str(folder), "--data", str(args.data / "dl19"), "--queries", str(args.queries),
                       "--top-k", str(args.top_k), "--max-length", str(args.max_length), "--batch-size",
                       str(args.batch_size), "--threads", str(args.threads)]
        for name, flags in PEERS.items():
            contestants.append((name, [*flags, *peer_common], PEERS_PYTHON, PEERS_SCRIPT))
    for name, argv_, python, script in contestants:
        if not wanted(name):
            continue
        if python is not None and not Path(python).exists():
            rows[name] = {"error": [f"no peer virtualenv at {python}: run benchmarks/peers/setup.sh"]}
            continue
        print(f"{name} ...", flush=True)
        rows[name] = run_child(argv_, python or sys.executable, script)
        write_json(out, result)
    if not args.no_others:
        result["others"] = {k: v for k, v in (result.get("others") or {}).items() if "error" not in v}
        for method in OTHERS:
            if method in result["others"]:
                continue
            print(f"{method} ...", flush=True)
            result["others"][method] = run_child(["--child", "other", "--method", method, "--data", str(args.data),
                                                  "--model", args.model, "--queries", str(args.other_queries),
                                                  "--threads", str(args.threads)])
            write_json(out, result)

    # --- the summary: ratios, agreement, roofline fractions
    roof = result["roofline"]
    ok = {k: v for k, v in rows.items() if "error" not in v and "docs_per_s" in v}
    peers = {k: v for k, v in ok.items() if k in PEERS}
    fastest_peer = max(peers, key=lambda k: peers[k]["docs_per_s"]) if peers else None
    reference = ok.get("llmrerank float32 (earlier defaults)")
    summary: dict[str, Any] = {"fastest_peer": fastest_peer}
    for name, row in ok.items():
        s: dict[str, Any] = {}
        if fastest_peer:
            s["vs_fastest_peer"] = row["docs_per_s"] / peers[fastest_peer]["docs_per_s"]
        if reference:
            s["vs_earlier_defaults"] = row["docs_per_s"] / reference["docs_per_s"]
        bf16 = "bf16" in name or "bfloat16" in name or row.get("resolved_dtype") == "bfloat16"
        dtype = "bfloat16" if bf16 else "float32"
        if "tokens_per_s" in row and "error" not in roof:
            s["roofline_dtype"] = dtype
            s["fraction_of_roofline"] = row["tokens_per_s"] / roof[dtype]["tokens_per_s_allowed"]
        if reference and "scores" in row and "512" not in name:
            s["agreement_with_earlier_defaults"] = agreement(ds, reference["scores"], row["scores"])
        summary[name] = s
    for row_name, key in ((BGE_ROW, "bge_prompt_vs"), (FAMILY_ROW, "bge_family_vs"),
                          (FAMILY_BF16_ROW, "bge_family_bf16_vs")):
        mine = ok.get(row_name)
        for peer in dict.fromkeys(("FlagLLMReranker float32", "FlagLLMReranker use_bf16", fastest_peer)):
            if mine and peer in peers and "scores" in peers[peer]:
                summary[f"{key} {peer}"] = agreement(ds, peers[peer]["scores"], mine["scores"])
    for row in (result.get("others") or {}).values():
        if "error" in row or "error" in roof:
            continue
        # every token the model ran over, as served: the prompts' (a reused prefix's included) and the generated
        # ones (each a pass of its own, fed back one at a time), each worth 2 x the non-embedding parameters
        served = row["served_tokens"] + row["generated_tokens"]
        dtype = "bfloat16" if row.get("resolved_dtype") == "bfloat16" else "float32"
        row["roofline_dtype"] = dtype
        row["fraction_of_roofline"] = served / row["seconds"] / roof[dtype]["tokens_per_s_allowed"]
    result["summary"] = summary
    result["finished"] = stamp()
    write_json(out, result)

    print(f"\n{'contestant':52} {'docs/s':>7} {'tok/s':>7} {'RSS MiB':>8} {'× peer':>7} {'× fp32':>7} {'roof':>5}")
    for name, row in rows.items():
        if name not in ok:
            print(f"{name:52} {'error: ' + ' '.join(row.get('error', []))[:60]}")
            continue
        s = summary[name]
        print(f"{name:52} {row['docs_per_s']:7.2f} {row.get('tokens_per_s', 0):7.0f} {row.get('peak_rss_mib', 0):8.0f} "
              f"{s.get('vs_fastest_peer', 0):7.2f} {s.get('vs_earlier_defaults', 0):7.2f} "
              f"{s.get('fraction_of_roofline', 0):5.0%}")
    if "error" not in roof:
        for dt in ("float32", "bfloat16"):
            print(f"roofline {dt}: {roof[dt]['flop_per_s'] / 1e9:.0f} GFLOP/s on the model's shapes = "
                  f"{roof[dt]['tokens_per_s_allowed']:.0f} tokens/s")
    for method, row in (result.get("others") or {}).items():
        if "error" in row:
            print(f"{method}: error {row['error']}")
        else:
            print(f"{method}: {row['docs_per_s']:.2f} docs/s, {row['prompt_tokens_per_s']:.0f} prompt tok/s, "
                  f"{row['generated_tokens_per_s']:.1f} generated tok/s, {row['comparisons_per_s']:.2f} comparisons/s"
                  f", {row.get('fraction_of_roofline', 0):.0%} of the {row.get('roofline_dtype', '?')} roofline")


if __name__ == "__main__":
    main()
