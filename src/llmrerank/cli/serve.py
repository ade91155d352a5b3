"""``llmrerank serve``: the rerank APIs people already call (Cohere v1/v2, Jina, TEI, vLLM) over HTTP."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from .argtypes import nonnegative_float, nonnegative_int, positive_int
from .ranker_args import add_model_args, ranker_options_from_args

KEYS_ENV = "LLMRERANK_API_KEYS"


def add_parser(subparsers: Any) -> None:
    """Add the ``serve`` subparser."""
    p = subparsers.add_parser("serve", help="serve rankers over HTTP (Cohere, Jina, TEI and vLLM rerank APIs)")
    p.add_argument(
        "--config",
        default=None,
        help="a .toml/.yaml/.json file with [[rankers]] (name, method, model, "
        "backend, options) instead of --model/--method",
    )
    p.add_argument(
        "--name",
        default=None,
        help="the ranker's name, which a request's model field picks (default: the --model value)",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=positive_int, default=8000)
    g = p.add_argument_group("batching and limits")
    g.add_argument(
        "--max-batch-tokens",
        type=positive_int,
        default=8192,
        help="merge concurrent requests into one model call up to about this many prompt tokens",
    )
    g.add_argument(
        "--batch-wait-ms",
        type=nonnegative_float,
        default=5.0,
        help="how long a batch waits for more requests (milliseconds)",
    )
    g.add_argument("--no-micro-batching", action="store_true", help="one model call per request")
    g.add_argument("--max-queue", type=positive_int, default=256, help="requests waiting beyond this get 503")
    g.add_argument("--timeout", type=positive_int, default=60, help="seconds before a request gets 504")
    g.add_argument("--max-documents", type=positive_int, default=1000, help="documents per request (413 beyond)")
    g.add_argument("--max-document-chars", type=positive_int, default=100_000, help="characters per document")
    g.add_argument("--max-query-chars", type=positive_int, default=20_000, help="characters per query")
    g.add_argument(
        "--score-cache",
        type=nonnegative_int,
        default=0,
        help="keep this many (query, document) scores of each pointwise or likelihood ranker (LRU); 0: off",
    )
    g.add_argument("--max-body-bytes", type=positive_int, default=20 * 1024 * 1024, help="bytes per request body")
    g.add_argument(
        "--api-key",
        action="append",
        default=None,
        help=f"require Authorization: Bearer KEY (repeatable; also ${KEYS_ENV}, comma-separated)",
    )
    add_model_args(p, "pointwise")
    p.set_defaults(func=run)


def resume_hint(args: argparse.Namespace, argv: list[str]) -> str:
    return "the server stopped after answering the requests it had accepted"


def one_ranker_flags(args: argparse.Namespace) -> list[tuple[str, Any, Any]]:
    """(flag, value, default) of the flags that describe one ranker, which --config replaces."""
    from .ranker_args import _flags

    out = [("--model", args.model, "default"), ("--method", args.method, None), ("--name", args.name, None)]
    for name, declared in _flags().items():
        out.append((declared[0][1].cli_flag(name), getattr(args, name), None))
    return out


def specs_from_args(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The rankers to serve: the --config file's [[rankers]], or the one --model/--method (and option flags)."""
    if args.config:
        given = [flag for flag, value, default in one_ranker_flags(args) if value != default]
        if given:
            raise ValueError(
                f"--config names the rankers to serve; drop {', '.join(given)} (set them in the file's [[rankers]])"
            )
        from ..train.config import read_config_file  # the one config reader (TOML, YAML, JSON)

        data = read_config_file(args.config)
        unknown = sorted(set(data) - {"rankers"})
        if unknown:
            raise ValueError(f"{args.config}: unknown key(s) {', '.join(unknown)}; a serve config holds [[rankers]]")
        rankers = data.get("rankers")
        if not isinstance(rankers, list):
            raise ValueError(f"{args.config}: rankers must be a list of tables ([[rankers]] in TOML)")
        return rankers
    backend, options = ranker_options_from_args(args)
    spec = {"method": args.method, "model": args.model, "backend": backend, "options": options}
    return [{**spec, "name": args.name or args.model}]


def run(args: argparse.Namespace) -> None:
    """Check the rankers' options, start the server (models load while /health answers 503), serve until stopped."""
    from ..extras import require
    from ..options import BackendOptions
    from ..registry import options_class
    from ..serve.protocol import Limits
    from ..serve.service import Settings, check_specs

    specs = check_specs(specs_from_args(args))
    for spec in specs:  # every option checked before the server starts or a model loads
        BackendOptions.build(dict(spec.get("backend") or {}))
        options_class(spec["method"]).build(dict(spec.get("options") or {}))
    require("fastapi", "llmrerank serve", extra="serve")
    uvicorn = require("uvicorn", "llmrerank serve", extra="serve")
    require("prometheus_client", "llmrerank serve", extra="serve")
    from ..serve.app import create_app
    from ..serve.metrics import Metrics
    from ..serve.service import Service

    keys = tuple(args.api_key or ()) + tuple(os.environ.get(KEYS_ENV, "").split(","))
    keys = tuple(k.strip() for k in keys if k.strip())  # an empty key would let "Bearer " through
    settings = Settings(
        limits=Limits(args.max_documents, args.max_document_chars, args.max_query_chars, args.max_body_bytes),
        max_batch_tokens=args.max_batch_tokens,
        batch_wait_ms=args.batch_wait_ms,
        max_queue=args.max_queue,
        timeout_s=float(args.timeout),
        micro_batching=not args.no_micro_batching,
        api_keys=keys,
        score_cache=args.score_cache,
    )
    service = Service(specs, settings, Metrics())
    config = uvicorn.Config(None, host=args.host, port=args.port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    failure: list[str] = []

    def stop(reason: str) -> None:
        failure.append(reason)
        server.should_exit = True

    config.app = create_app(service, on_load_failure=stop)
    config.loaded = False
    names = ", ".join(s["name"] for s in specs)
    print(
        f"serving {names} on http://{args.host}:{args.port} (models loading; /health says when ready)", file=sys.stderr
    )
    server.run()
    if failure:
        raise ValueError(f"the models failed to load: {failure[0]}")
