"""Peak memory of scoring long documents: 100 candidates cut to 512 tokens, and one document of a million
characters, each configuration in a process of its own.

DL19's passages are short (about 150 tokens a prompt at most), so they never reach 512 tokens: here each candidate
is its BM25 passage followed by the query's next passages, until it holds at least ``--min-chars`` characters
(4,000 by default, well past 512 tokens), so that every prompt is cut to ``--max-length``. A row reports the
resident memory after loading (the weights), the peak while scoring (``VmHWM``), the difference (what scoring
added: activations, the reused prefix's cache copies, the tokenizer's work) and the longest prompt. The peak is
bounded by the pass budget (``batch_tokens`` padded tokens and ``batch_size`` rows a pass, prompts cut to
``max_length``), not by how many candidates there are or how long they are: the rows with 200 candidates and with
a document of a million characters show it, and those with other budgets show what the budget moves.

    python benchmarks/memory.py                 # benchmarks/results/memory-smollm2-135m.json, ~8 minutes here
    python benchmarks/memory.py --model qwen2.5-0.5b --only defaults
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from _common import (
    RESULTS,
    add_data_option,
    command_line,
    environment,
    load_dataset,
    peak_rss_mib,
    resident_mib,
    run_child,
    stamp,
    write_json,
)

# name -> (options of the ranker, candidates, a document of a million characters among them)
CONFIGS: dict[str, tuple[dict[str, Any], int, bool]] = {
    "defaults (pointwise, float32)": ({}, 100, False),
    "pointwise, bfloat16": ({"dtype": "bfloat16"}, 100, False),
    "likelihood (its default dtype)": ({"method": "likelihood"}, 100, False),
    "defaults, 200 candidates": ({}, 200, False),
    "defaults, one document of 1,000,000 characters": ({}, 100, True),
    "defaults, batch_tokens 4096": ({"batch_tokens": 4096}, 100, False),
    "defaults, batch_tokens 16384, batch_size 32": ({"batch_tokens": 16384, "batch_size": 32}, 100, False),
}
HUGE = 1_000_000


def long_documents(texts: list[str], count: int, min_chars: int) -> list[str]:
    """``count`` documents, the i-th being text i followed by the next texts (wrapping round) until it holds at
    least ``min_chars`` characters. Past the number of texts, a document starts with its part number and takes
    every second, third, ... text, so that no two documents are alike (alike ones would share their whole prompt
    as a reused prefix and run otherwise)."""
    docs = []
    for i in range(count):
        turn = i // len(texts)
        parts, j = ([f"Part {turn + 1}."] if turn else []), i
        while sum(len(p) + 1 for p in parts) < min_chars:
            parts.append(texts[j % len(texts)])
            j += 1 + turn
        docs.append(" ".join(parts))
    if len(set(docs)) != len(docs):
        raise ValueError("two long documents are alike")
    return docs


def child(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from llmrerank import Reranker

    torch.set_num_threads(args.threads)
    options, candidates, huge = CONFIGS[args.config]
    options = dict(options)
    method = options.pop("method", "pointwise")
    ds = load_dataset("dl19", args.data, 100, 1)
    qid = ds.qids[0]
    texts = [ds.corpus[d].text for d, _ in ds.run[qid]]
    docs = long_documents(texts, candidates, args.min_chars)
    if huge:
        docs[0] = (docs[0] + " ") * (HUGE // (len(docs[0]) + 1) + 1)
        docs[0] = docs[0][:HUGE]
    ranker = Reranker(method, model=args.model, max_length=args.max_length, **options)
    loaded = resident_mib()
    prompts = [len(e.prompt) for e in ranker.encode(ds.queries[qid], docs)]
    before = ranker.backend.stats.snapshot()
    start = time.perf_counter()
    scores = ranker.score(ds.queries[qid], docs)
    seconds = time.perf_counter() - start
    used = ranker.backend.stats.since(before)
    peak = peak_rss_mib()
    return {
        "method": method,
        "options": options,
        "resolved_dtype": ranker.backend.dtype,
        "batch_tokens": ranker.backend.batch_tokens,
        "batch_size": ranker.backend.batch_size,
        "candidates": candidates,
        "longest_document_chars": max(len(d) for d in docs),
        "longest_prompt_tokens": max(prompts),
        "prompts_at_max_length": sum(p == max(prompts) for p in prompts),
        "seconds": seconds,
        "forward_calls": used["forward_calls"],
        "computed_tokens": used["tokens"],
        "loaded_rss_mib": loaded,
        "peak_rss_mib": peak,
        "scoring_added_mib": round(peak - loaded, 1),
        "finite_scores": all(s == s and abs(s) != float("inf") for s in scores),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_option(ap, "dl19/")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--min-chars", type=int, default=4000, help="each candidate's length at least (characters)")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--only", nargs="*", default=None, help="run only the configurations whose names contain these")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--config", choices=list(CONFIGS), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.config:
        write_json(args.out, child(args))
        return
    out = args.out or RESULTS / f"memory-{args.model}.json"
    result: dict[str, Any] = {
        "benchmark": "memory",
        "command": command_line(),
        "started": stamp(),
        "environment": environment(),
        "model": args.model,
        "max_length": args.max_length,
        "min_chars": args.min_chars,
        "rows": {},
    }
    if out.exists():  # resume: keep an earlier run's rows of the same settings
        old = json.loads(out.read_text())
        if (old.get("model"), old.get("max_length"), old.get("min_chars")) == (args.model, args.max_length,
                                                                              args.min_chars):
            result["rows"] = {k: v for k, v in old.get("rows", {}).items() if "error" not in v}
    rows = result["rows"]
    for name in CONFIGS:
        if name in rows or (args.only is not None and not any(s in name for s in args.only)):
            continue
        print(f"{name} ...", flush=True)
        rows[name] = run_child(Path(__file__).resolve(), [
            "--config", name, "--data", str(args.data), "--model", args.model, "--max-length", str(args.max_length),
            "--min-chars", str(args.min_chars), "--threads", str(args.threads)])
        write_json(out, result)
    result["finished"] = stamp()
    write_json(out, result)
    print(f"\n{'configuration':48} {'dtype':>8} {'cands':>5} {'prompt':>6} {'loaded':>7} {'peak':>7} {'added':>6}"
          f" {'s':>6}")
    for name, row in rows.items():
        if "error" in row:
            print(f"{name:48} error: {' '.join(row['error'])[:80]}")
            continue
        print(f"{name:48} {row['resolved_dtype']:>8} {row['candidates']:5d} {row['longest_prompt_tokens']:6d} "
              f"{row['loaded_rss_mib']:7.0f} {row['peak_rss_mib']:7.0f} {row['scoring_added_mib']:6.0f} "
              f"{row['seconds']:6.1f}")


if __name__ == "__main__":
    main()
