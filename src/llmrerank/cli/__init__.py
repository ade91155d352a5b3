"""The ``llmrerank`` command: retrieve, rerank, evaluate, train, demo. A thin layer over the public API.

Each subcommand is one module with ``add_parser(subparsers)``, which adds its subparser and sets ``func`` to its
``run(args)``. A ``run`` that finds the arguments inconsistent raises ``argparse.ArgumentError(None, message)``,
reported like a parse error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from . import demo, evaluate, rerank, retrieve, train

EPILOG = "Models are never downloaded: presets come from installed packages (see `llmrerank rerank --help`)."

# In the order `llmrerank --help` lists them.
SUBCOMMANDS = (retrieve, rerank, evaluate, train, demo)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per module in ``SUBCOMMANDS``."""
    parser = argparse.ArgumentParser(prog="llmrerank", description="Rerank documents with LLMs.", epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"llmrerank {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit code (2 for bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except argparse.ArgumentError as e:
        parser.error(str(e))
    except (ValueError, TypeError, KeyError, FileNotFoundError, ImportError) as e:
        # Bad input: one clear line, no traceback.
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 2
    return 0
