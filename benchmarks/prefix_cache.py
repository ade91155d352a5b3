"""Speed of the read-only prefix cache against the cache that keeps each pass's keys, alternated in one process.

The same ranker scores the first ``--queries`` DL19 queries × BM25 top ``--top-k`` (``max_length`` 256) in turn
with the backend's ``read_only`` on and off (off: the pass keeps its joined keys in its copy of the prefix's cache,
as before the change), ``--rounds`` times each, in float32 and bfloat16; docs/s of each and the largest score
difference between the two.

    python benchmarks/prefix_cache.py        # benchmarks/results/prefix_cache-smollm2-135m.json, ~3 minutes here
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from _common import RESULTS, add_data_option, command_line, environment, load_dataset, stamp, write_json


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_option(ap, "dl19/")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--queries", type=int, default=5)
    ap.add_argument("--top-k", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch

    import llmrerank.backends.hf as hf
    from llmrerank import Reranker

    torch.set_num_threads(args.threads)
    ds = load_dataset("dl19", args.data, args.top_k, args.queries)
    modes = {"read-only": hf.read_only, "kept": lambda cache: None}
    result: dict[str, Any] = {"benchmark": "prefix_cache", "command": command_line(), "started": stamp(),
                              "environment": environment(), "model": args.model, "queries": len(ds.qids),
                              "top_k": args.top_k, "rows": []}
    try:
        for dtype in ("float32", "bfloat16"):
            ranker = Reranker("pointwise", model=args.model, max_length=256, dtype=dtype)
            scores: dict[str, list[float]] = {}
            for rnd in range(args.rounds):
                for mode, fn in modes.items():
                    hf.read_only = fn
                    start = time.perf_counter()
                    got = [s for q in ds.qids
                           for s in ranker.score(ds.queries[q], [ds.corpus[d] for d, _ in ds.run[q]])]
                    seconds = time.perf_counter() - start
                    scores[mode] = got
                    row = {"dtype": dtype, "round": rnd + 1, "mode": mode, "docs_per_s": len(got) / seconds}
                    result["rows"].append(row)
                    print(f"{dtype:9} round {rnd + 1} {mode:9} {row['docs_per_s']:6.2f} docs/s", flush=True)
            diff = max(abs(a - b) for a, b in zip(scores["read-only"], scores["kept"]))
            result.setdefault("max_score_difference", {})[dtype] = diff
            print(f"{dtype:9} largest score difference {diff:.2e}", flush=True)
    finally:
        hf.read_only = modes["read-only"]
    result["finished"] = stamp()
    write_json(args.out or RESULTS / f"prefix_cache-{args.model}.json", result)


if __name__ == "__main__":
    main()
