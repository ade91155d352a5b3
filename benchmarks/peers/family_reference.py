"""The reference implementations of two model families, run on given pairs: prints the token ids each feeds
the model and its scores, as JSON, for llmrerank's parity tests (tests/test_family_bge.py, test_family_mxbai.py).

Runs in the peers' virtualenv (``bash benchmarks/peers/setup.sh``: transformers 4, which both references need)
and never imports llmrerank. The request is JSON on stdin, one or more runs of one reference on one model::

    {"reference": "flag_llm" | "mxbai_v2", "model": FOLDER,
     "runs": [{"pairs": [[query, passage], ...], "max_length": 512, "instruction": null, "batch_size": 3}, ...]}

- ``flag_llm``: FlagEmbedding's ``FlagLLMReranker`` (``prompt`` = the instruction when given), ``compute_score``
  with ``normalize=False``: the raw logit of "Yes".
- ``mxbai_v2``: mxbai-rerank's ``MxbaiRerankV2`` in float32 on the CPU, ``predict`` with ``normalize=False``:
  the logit of "1" minus that of "0".

Output: ``{"runs": [{"ids": [[...] per pair], "scores": [...], "yes_id": int}, ...], "versions": {...}}``; the
ids of a pair are what the reference feeds the model for it alone (padding cut), the scores come from one call
on all the pairs of the run.
"""

from __future__ import annotations

import json
import os
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from peers import Counter, v4_folder  # noqa: E402


def flag_llm(folder: Path, request: dict[str, Any]) -> dict[str, Any]:
    from FlagEmbedding import FlagLLMReranker

    pairs = [tuple(p) for p in request["pairs"]]
    size, max_length = request.get("batch_size", 3), request["max_length"]
    reranker = FlagLLMReranker(
        str(folder),
        use_fp16=False,
        devices="cpu",
        batch_size=size,
        max_length=max_length,
        normalize=False,
        prompt=request.get("instruction"),
    )
    counter = Counter()
    counter.attach(reranker.model)
    ids = [
        counter.captured(lambda p=p: reranker.compute_score([p], batch_size=1, max_length=max_length))[0]
        for p in pairs
    ]
    scores = reranker.compute_score(pairs, batch_size=size, max_length=max_length, normalize=False)
    return {"ids": ids, "scores": [float(s) for s in scores], "yes_id": int(reranker.yes_loc)}


def mxbai_v2(folder: Path, request: dict[str, Any]) -> dict[str, Any]:
    import torch
    from mxbai_rerank import MxbaiRerankV2

    reranker = MxbaiRerankV2(
        str(folder), device="cpu", torch_dtype=torch.float32, max_length=request["max_length"]
    )
    instruction = request.get("instruction")
    queries = [p[0] for p in request["pairs"]]
    documents = [p[1] for p in request["pairs"]]
    ids = []
    for q, d in zip(queries, documents):
        inputs = reranker.prepare_inputs([q], [d], instruction=instruction)
        ids.append(inputs["input_ids"][0][inputs["attention_mask"][0].bool()].tolist())
    scores = reranker.predict(queries, documents, instruction=instruction, normalize=False)
    return {"ids": ids, "scores": scores.tolist(), "yes_id": int(reranker.yes_loc), "no_id": int(reranker.no_loc)}


REFERENCES = {"flag_llm": flag_llm, "mxbai_v2": mxbai_v2}


def main() -> None:
    request = json.load(sys.stdin)
    name = request["reference"]
    if name not in REFERENCES:
        raise SystemExit(f"unknown reference {name!r}: choose one of {', '.join(REFERENCES)}")
    folder = v4_folder(Path(request["model"]))
    runs = [REFERENCES[name](folder, run) for run in request["runs"]]
    packages = ("transformers", "torch", "FlagEmbedding" if name == "flag_llm" else "mxbai-rerank")
    json.dump({"runs": runs, "versions": {p: version(p) for p in packages}}, sys.stdout)


if __name__ == "__main__":
    main()
