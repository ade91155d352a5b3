"""The ``llmrerank`` command: retrieve, rerank, evaluate, train, serve, demo, check-model. A thin layer over the
public API.

Each subcommand is one module with ``add_parser(subparsers)``, which adds its subparser and sets ``func`` to its
``run(args)``, which may return an exit status (``check-model`` returns 1 when a check failed; ``rerank`` and
``generate-queries`` return 3, :data:`STOPPED`, when their ``--max-minutes`` stopped them); a module that can
pick up where an interrupted run stopped also has ``resume_hint(args, argv)``.
A ``run`` that finds the arguments inconsistent raises ``argparse.ArgumentError(None, message)``, reported like
a parse error.

:func:`main` is the one error boundary: whatever fails ends as one line on stderr saying what failed (and, for a
fault that is not bad input, what to do), with a non-zero exit status; ``--debug`` adds the traceback. Ctrl-C
and SIGTERM end with one line too, naming how to resume where the command can, and the exit status a shell gives
a process killed by that signal (130, 143).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import traceback
from collections.abc import Sequence

from .. import __version__
from . import check_model, demo, evaluate, generate_queries, rerank, retrieve, serve, train

EPILOG = "Models are never downloaded: presets come from installed packages (see `llmrerank rerank --help`)."

# In the order `llmrerank --help` lists them.
SUBCOMMANDS = (retrieve, rerank, evaluate, train, generate_queries, serve, demo, check_model)

BAD_INPUT = 2  # the input (a file, an option, a model) is wrong: fix it and run again
FAILED = 1  # anything else: the environment (disk, memory, a lock) or a bug
STOPPED = 3  # stopped at its time bound (--max-minutes): what it did is kept, and running again goes on from there
DEBUG_ENV = "LLMRERANK_DEBUG"


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that the command unwinds (locks released, partial files kept) like
    Ctrl-C does. A BaseException, as KeyboardInterrupt is, so no ``except Exception`` swallows it."""


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per module in ``SUBCOMMANDS``."""
    parser = argparse.ArgumentParser(prog="llmrerank", description="Rerank documents with LLMs.", epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"llmrerank {__version__}")
    debug_help = f"show the traceback of a failure (also: {DEBUG_ENV}=1)"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(subparsers)
    for sub in subparsers.choices.values():  # also after the subcommand; SUPPRESS keeps a --debug given before it
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    return parser


def describe_error(e: BaseException) -> tuple[str, int]:
    """The one line a failure prints (without ``error: ``) and the exit status."""
    from ..data import DataFormatError
    from ..outputs import OutputError

    if isinstance(e, KeyError):
        return str(e.args[0]) if e.args else "a key is missing", BAD_INPUT
    if isinstance(e, FileNotFoundError) and e.filename and str(e.filename) not in str(e.args[-1]):
        return f"file not found: {e.filename}", BAD_INPUT  # open()'s own error, without our message
    if isinstance(e, IsADirectoryError) and e.filename:
        return f"{e.filename} is a folder; give a file", BAD_INPUT
    if isinstance(e, (DataFormatError, ValueError, TypeError, ImportError, FileNotFoundError, NotADirectoryError)):
        return str(e), BAD_INPUT
    if isinstance(e, OutputError):
        return str(e), FAILED
    from ..distributed import EngineError

    if isinstance(e, EngineError):
        return str(e), FAILED
    if isinstance(e, PermissionError):
        return f"permission denied: {e.filename}; check its permissions (and its folder's)", FAILED
    if isinstance(e, OSError):
        where = f" {e.filename}" if e.filename else ""
        return f"input/output failure{where}: {e.strerror or e}", FAILED
    if isinstance(e, MemoryError):
        return "out of memory; lower --batch-size (or --queries-per-batch, --max-length)", FAILED
    if type(e).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError, without importing torch here
        return "out of GPU memory; lower --batch-size (or --queries-per-batch, --max-length)", FAILED
    if isinstance(e, FloatingPointError):
        return str(e), FAILED
    hf = sys.modules.get("llmrerank.backends.hf")  # loaded whenever a model was: only then can compiling fail
    if hf is not None and isinstance(e, hf.CompileError):
        return str(e), FAILED
    return (
        f"unexpected {type(e).__name__}: {e}. This is a bug in llmrerank: rerun with --debug for the traceback "
        "and report it",
        FAILED,
    )


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status: 0, 2 for bad input, 1 for
    another failure, 3 when a command stopped at its ``--max-minutes`` (to be run again), 130 after Ctrl-C, 143
    after SIGTERM."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv  # for a command that says how to go on (resume_command)
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main else None
    try:
        try:
            status = args.func(args)
        except SystemError as e:
            # a signal whose handler raised while C code was running (Ray's wait, say) comes back as a SystemError
            # caused by the interruption: it is the interruption
            if isinstance(e.__cause__, (KeyboardInterrupt, Terminated)):
                raise e.__cause__ from None
            raise
    except argparse.ArgumentError as e:
        parser.error(str(e))
    except (KeyboardInterrupt, Terminated) as e:
        if debug:
            traceback.print_exc()
        what, status = ("interrupted", 130) if isinstance(e, KeyboardInterrupt) else ("terminated (SIGTERM)", 143)
        hint = getattr(sys.modules[args.func.__module__], "resume_hint", None)
        how = hint(args, argv) if hint else None
        print(f"{what}: {how}" if how else f"{what}: nothing was written", file=sys.stderr)
        return status
    except Exception as e:
        if debug:
            traceback.print_exc()
        message, status = describe_error(e)
        message = " ".join(line.strip() for line in message.splitlines() if line.strip())  # one line, always
        print(f"error: {message}", file=sys.stderr)
        return status
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    return status if isinstance(status, int) else 0


def resume_command(argv: Sequence[str], add: Sequence[str] = (), drop: Sequence[str] = ()) -> str:
    """The command line to run again: ``argv`` without the flags ``drop``, with the flags ``add``."""
    import shlex

    words = [a for a in argv if a not in drop]
    words += [a for a in add if a not in words]
    return "llmrerank " + shlex.join(words)
