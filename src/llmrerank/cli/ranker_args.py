"""The model and method flags that ``rerank`` and ``demo`` share, and the ranker they build.

Only this module knows the per-method flags and which ranker option each one sets.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_model_args(p: argparse.ArgumentParser, method_default: str) -> None:
    """Add the "model and method" group to ``p``, with ``--method`` defaulting to ``method_default``."""
    from ..registry import METHODS

    g = p.add_argument_group("model and method")
    g.add_argument("--method", default=method_default, choices=sorted(METHODS), help="ranking method")
    g.add_argument(
        "--model",
        default="default",
        help="preset (default = qwen2.5-0.5b, smollm2-135m), a Hugging Face folder, or a .gguf file",
    )
    g.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="token budget of one prompt (documents are cut); default 512, listwise 4096 (a window and its answer), "
        "pairwise and setwise 4096",
    )
    g.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, or auto")
    g.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    g.add_argument("--prompt-file", default=None, help="a prompt template (.toml or .json)")
    g.add_argument("--tokens", default=None, help="pointwise answer tokens: yes_no, true_false, or 'WORD,WORD'")
    g.add_argument(
        "--normalisation",
        default=None,
        choices=["pair_softmax", "vocab_softmax", "yes_logit", "logit"],
        help="pointwise score normalisation (default pair_softmax; logit = z_yes - z_no)",
    )
    g.add_argument("--reduction", default=None, choices=["mean", "sum"], help="likelihood: mean (default) or sum")
    g.add_argument("--window-size", type=int, default=None, help="listwise: candidates per window (default 20)")
    g.add_argument("--step", type=int, default=None, help="listwise: how far the window moves up (default 10)")
    g.add_argument("--passes", type=int, default=None, help="listwise: sweeps over the list (default 1)")
    g.add_argument(
        "--decoding",
        default=None,
        choices=["generate", "first"],
        help="listwise: generate a permutation (default) or FIRST (first-token logits, one forward pass)",
    )
    g.add_argument(
        "--identifiers",
        default=None,
        choices=["numbers", "letters"],
        help="listwise: passage identifiers (default numbers; letters for FIRST)",
    )
    g.add_argument(
        "--passage-tokens",
        type=int,
        default=None,
        help="listwise, pairwise, setwise: each passage cut to this (default 100)",
    )
    g.add_argument(
        "--max-new-tokens", type=int, default=None, help="listwise: generation cap (default: a full permutation)"
    )
    g.add_argument(
        "--aggregation",
        default=None,
        choices=["allpairs", "heapsort", "bubblesort"],
        help="pairwise: allpairs (default; sum of win probabilities), heapsort or bubblesort of the top k; "
        "setwise: heapsort (default) or bubblesort",
    )
    g.add_argument(
        "--sort-top-k",
        type=int,
        default=None,
        help="pairwise/setwise sorting: fully sort this many (default 10); the rest keep their input order",
    )
    g.add_argument(
        "--pair-top-k", type=int, default=None, help="pairwise allpairs: compare all pairs of the first N (default all)"
    )
    g.add_argument("--set-size", type=int, default=None, help="setwise: passages per prompt (default 4)")


def ranker_from_args(args: argparse.Namespace) -> Any:
    """The ranker the parsed flags describe; a method-specific flag the method does not take is a ValueError."""
    from ..registry import Reranker, method_options

    options: dict[str, Any] = {
        "max_length": args.max_length,
        "batch_size": args.batch_size,
        "dtype": args.dtype,
        "device": args.device,
        "threads": args.threads,
    }
    method_specific = {  # option name -> (flag, value)
        "template": ("--prompt-file", args.prompt_file),
        "tokens": ("--tokens", _parse_tokens(args.tokens)),
        "normalisation": ("--normalisation", args.normalisation),
        "reduction": ("--reduction", args.reduction),
        "window_size": ("--window-size", args.window_size),
        "step": ("--step", args.step),
        "passes": ("--passes", args.passes),
        "decoding": ("--decoding", args.decoding),
        "identifiers": ("--identifiers", args.identifiers),
        "passage_tokens": ("--passage-tokens", args.passage_tokens),
        "max_new_tokens": ("--max-new-tokens", args.max_new_tokens),
        "aggregation": ("--aggregation", args.aggregation),
        "sort_top_k": ("--sort-top-k", args.sort_top_k),
        "pair_top_k": ("--pair-top-k", args.pair_top_k),
        "set_size": ("--set-size", args.set_size),
    }
    accepted = method_options(args.method)
    for name, (flag, value) in method_specific.items():
        if value is None:
            continue
        if name not in accepted:
            raise ValueError(f"{flag} does not apply to --method {args.method}")
        options[name] = value
    for name in ("threads", "max_length"):  # unset: each method's own default
        if options[name] is None:
            del options[name]
    return Reranker(args.method, model=args.model, **options)


def _parse_tokens(value: str | None) -> Any:
    if value is None or "," not in value:
        return value
    return tuple(w for w in value.split(","))
