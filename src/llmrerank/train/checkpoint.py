"""Exact-resume checkpoints in a run's output folder, and the keep_best copy of the best dev evaluation.

A checkpoint (``checkpoints/step-NNNNNNNN``) holds the trainable weights, the optimiser, the scheduler and the
RNG states; with the data order a pure function of the seed and the step (:mod:`.schedule`), a run killed at
any point resumes from its last checkpoint and ends where an uninterrupted run would. Every folder here is
written under a temporary name and renamed into place, so one killed half-written is never taken for complete.
A file found damaged all the same (a disk filled up, a hand edit) is a ValueError naming it and saying what to do.
"""

from __future__ import annotations

import json
import pickle
import random
import shutil
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..data import DataFormatError, read_text
from .config import TrainConfig
from .setup import head_of

CHECKPOINTS = "checkpoints"
LOG = "log.jsonl"
BEST = "best"
CONFIG = "config.json"
WEIGHTS = "trainable.safetensors"
START_OVER = "start over with --no-resume"


def _read_json(path: Path, fix: str) -> Any:
    """The JSON value of a file written here; one that is missing or does not parse is a ValueError naming it (and
    the line) and saying what to do (``fix``)."""
    try:
        return json.loads(read_text(path))
    except FileNotFoundError:
        raise ValueError(f"{path} is missing; {fix}") from None
    except DataFormatError as e:
        raise DataFormatError(path, e.line, f"damaged file: {e.reason}; {fix}") from None
    except json.JSONDecodeError as e:
        raise DataFormatError(
            path, e.lineno, f"damaged file: not valid JSON ({e.msg} at column {e.colno}); {fix}"
        ) from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --- the trainable weights ----------------------------------------------------------------------------------


def _trainable(backend: Any, ranker: Any) -> dict[str, torch.nn.Parameter]:
    named = {f"model.{n}": p for n, p in backend.trainable_parameters()}
    head = head_of(ranker)
    if head is not None:
        named.update({f"head.{n}": p for n, p in head.named_parameters()})
    return named


def trainable_state(backend: Any, ranker: Any) -> dict[str, torch.Tensor]:
    """A copy of what training changes: the model's trainable weights (``model.*``) and the head's (``head.*``)."""
    return {n: p.detach().clone() for n, p in _trainable(backend, ranker).items()}


def load_trainable_state(backend: Any, ranker: Any, state: Mapping[str, torch.Tensor]) -> None:
    """Copy ``state`` (from :func:`trainable_state`) back into the trainable weights; the names must match."""
    named = _trainable(backend, ranker)
    if set(named) != set(state):
        raise ValueError("the checkpoint does not match this configuration's trainable parameters")
    with torch.no_grad():
        for n, p in named.items():
            p.copy_(state[n])


def load_weights(folder: Path, fix: str = START_OVER) -> dict[str, torch.Tensor]:
    """The trainable weights a checkpoint or the best/ folder holds; a missing or damaged file is a ValueError
    naming it and saying what to do (``fix``)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = folder / WEIGHTS
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise ValueError(f"{path} is missing; {fix}") from None
    except (SafetensorError, OSError) as e:
        raise ValueError(
            f"{path}: the weights file is damaged (truncated or not a safetensors file: {e}); {fix}"
        ) from None


# --- folders written then renamed ---------------------------------------------------------------------------


def start_state_folder(final: Path, state: Mapping[str, torch.Tensor]) -> Path:
    """A fresh temporary sibling of ``final`` holding the trainable weights ``state``; :func:`finish_state_folder`
    renames it into place, so a folder killed half-written is never taken for a complete one."""
    from safetensors.torch import save_file

    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / WEIGHTS))
    return tmp


def finish_state_folder(tmp: Path, final: Path) -> None:
    """Put the complete folder ``tmp`` in place of ``final``."""
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


# --- checkpoints and resume ---------------------------------------------------------------------------------


def save_checkpoint(
    output_dir: Path,
    step: int,
    total_steps: int,
    state: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    keep: int,
) -> Path:
    """Write the checkpoint of ``step`` (weights, optimiser, scheduler, RNG states) and keep the last ``keep``."""
    root = output_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = start_state_folder(final, state)
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "python_rng": random.getstate(),
        },
        tmp / "state.pt",
    )
    (tmp / "step.json").write_text(json.dumps({"step": step, "total_steps": total_steps}) + "\n")
    finish_state_folder(tmp, final)  # a checkpoint exists only once complete
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def check_same_config(output_dir: Path, config: TrainConfig) -> None:
    """Refuse to resume checkpoints written with another configuration (the output folder may differ)."""
    path = output_dir / CONFIG
    if not (output_dir / CHECKPOINTS).is_dir() or not path.is_file():
        return
    fix = f"use another output_dir, or {START_OVER}"
    before = _read_json(path, fix)
    if not isinstance(before, dict):
        raise ValueError(f"{path}: damaged file: expected a JSON object of config keys; {fix}")
    if "options" not in before:  # written before the options table: read as such a config is read today
        try:
            before = json.loads(json.dumps(type(config).from_dict(before).to_dict()))
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: not a training config this version reads ({e}); {fix}") from None
    now = json.loads(json.dumps(config.to_dict()))
    differ = sorted(k for k in set(before) | set(now) if k != "output_dir" and before.get(k) != now.get(k))
    if differ:
        raise ValueError(
            f"{output_dir} holds checkpoints of a run with other {', '.join(differ)}; "
            "use another output_dir, or --no-resume to start over"
        )


def start_over(output_dir: Path) -> None:
    """Remove the checkpoints and the log of an earlier run, so nothing of it is picked up later."""
    shutil.rmtree(output_dir / CHECKPOINTS, ignore_errors=True)
    (output_dir / LOG).unlink(missing_ok=True)


def truncate_log(log: Path, step: int) -> None:
    """Drop the log lines of steps after ``step``, and a last line cut short by a kill (no newline at its end).

    Any other line that is not a log entry (a JSON object with an integer ``step``) is a
    :class:`~llmrerank.data.DataFormatError` naming the file and the line."""
    if not log.exists():
        return
    fix = f"the log is damaged: {START_OVER}"
    try:
        text = read_text(log)
    except DataFormatError as e:
        raise DataFormatError(log, e.line, f"{e.reason}; {fix}") from None
    lines = text.split("\n")
    kept = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines):  # the last line, with no newline after it: cut short by a kill
                continue
            raise DataFormatError(log, number, f"not valid JSON ({e.msg} at column {e.colno}); {fix}") from None
        if not isinstance(entry, dict) or not _is_int(entry.get("step")):
            raise DataFormatError(log, number, f'not a log entry (a JSON object with an integer "step"); {fix}')
        if entry["step"] <= step:
            kept.append(line)
    log.write_text("".join(k + "\n" for k in kept), encoding="utf-8")


def resume(
    output_dir: Path, backend: Any, ranker: Any, optimizer: torch.optim.Optimizer, scheduler: Any, total_steps: int
) -> int:
    """Restore the last checkpoint (weights, optimiser, scheduler, RNG states) and cut the log back to it;
    return its step, or 0 when there is none."""
    root = output_dir / CHECKPOINTS
    done = sorted(root.glob("step-*")) if root.is_dir() else []
    if not done:
        truncate_log(output_dir / LOG, 0)  # a run killed before its first checkpoint: its steps run again
        return 0
    last = done[-1]
    fix = f"remove {last} to resume from the checkpoint before it, or {START_OVER}"
    record = _read_json(last / "step.json", fix)
    step = record.get("step") if isinstance(record, dict) else None
    if not _is_int(step) or step < 1:
        raise ValueError(f'{last / "step.json"}: damaged file: expected {{"step": <a positive integer>}}; {fix}')
    load_trainable_state(backend, ranker, load_weights(last, fix))
    try:
        state = torch.load(last / "state.pt", weights_only=False)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise ValueError(f"{last / 'state.pt'}: damaged file ({type(e).__name__}: {e}); {fix}") from None
    keys = ("optimizer", "scheduler", "torch_rng", "python_rng")
    if not isinstance(state, dict) or any(k not in state for k in keys):
        raise ValueError(f"{last / 'state.pt'}: damaged file: expected the keys {', '.join(keys)}; {fix}")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    random.setstate(state["python_rng"])
    truncate_log(output_dir / LOG, step)  # the steps the checkpoint does not hold are run (and logged) again
    print(f"resumed from {last} (step {step} of {total_steps})", file=sys.stderr)
    return step


# --- the best dev evaluation (keep_best) --------------------------------------------------------------------


class KeepBest:
    """With ``keep_best``, the trainable weights of the best dev nDCG@10 so far (the earliest of equal ones) in
    ``output_dir/best``, with their step and score in its ``best.json``; without it, nothing is kept."""

    def __init__(self, output_dir: Path, on: bool):
        self.folder = output_dir / BEST
        self.on = on
        self.record: dict[str, float] | None = None  # {"step": ..., "nDCG@10": ...}

    def restore(self, start: int) -> None:
        """Take up the best evaluation of the steps a run resumed at ``start`` keeps; one of a later (lost) step
        is dropped, since the rerun evaluates that step again."""
        record = self.folder / "best.json"
        if self.on and start > 0 and record.is_file():
            fix = f"remove {self.folder} to resume without the best evaluation so far, or {START_OVER}"
            best = _read_json(record, fix)
            if not (isinstance(best, dict) and _is_int(best.get("step")) and _is_number(best.get("nDCG@10"))):
                expected = '{"step": <an integer>, "nDCG@10": <a number>}'
                raise ValueError(f"{record}: damaged file: expected {expected}; {fix}")
            if best["step"] <= start:
                self.record = best
                return
        shutil.rmtree(self.folder, ignore_errors=True)
        self.record = None

    def offer(self, step: int, dev: Mapping[str, float], state: Callable[[], Mapping[str, torch.Tensor]]) -> None:
        """Keep ``state()`` if the dev evaluation of ``step`` beats the best so far."""
        if not self.on or "nDCG@10" not in dev:
            return
        if self.record is not None and dev["nDCG@10"] <= self.record["nDCG@10"]:
            return
        self.record = {"step": step, "nDCG@10": dev["nDCG@10"]}
        tmp = start_state_folder(self.folder, state())
        (tmp / "best.json").write_text(json.dumps(self.record) + "\n")
        finish_state_folder(tmp, self.folder)

    def weights(self) -> dict[str, torch.Tensor]:
        """The kept weights."""
        return load_weights(self.folder)
