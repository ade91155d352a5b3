"""Helpers the benchmark scripts share: the command line as run, the environment, peak memory."""

from __future__ import annotations

import platform
import resource
import shlex
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def rel(path: str) -> str:
    """A path relative to the repository root when it is inside it."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return path


def command_line() -> str:
    """How this script was run, from the repository root."""
    return "python " + " ".join(shlex.quote(a) for a in [rel(sys.argv[0]), *sys.argv[1:]])


def peak_rss_mib() -> float:
    """The process's peak resident memory so far: ``VmHWM`` of /proc/self/status on Linux (the peak of this
    program's own memory), else ``ru_maxrss`` (which on Linux also counts the parent's resident memory at the
    fork that started a child, so a child of a large process would report the parent's size)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kib / 1024 if sys.platform != "darwin" else kib / 2**20, 1)


def environment() -> dict[str, Any]:
    import torch
    import transformers

    import llmrerank

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "llmrerank": llmrerank.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
