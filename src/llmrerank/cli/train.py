"""``llmrerank train``: fine-tune a ranker (LoRA or full) from a TOML/YAML config."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .argtypes import positive_int


def add_parser(subparsers: Any) -> None:
    """Add the ``train`` subparser."""
    p = subparsers.add_parser("train", help="fine-tune a ranker (LoRA or full) from a TOML/YAML config")
    p.add_argument("--config", required=True, help="a .toml, .yaml or .json file (see examples/)")
    p.add_argument("--output-dir", default=None, help="overrides output_dir of the config")
    p.add_argument("--max-steps", type=positive_int, default=None, help="overrides max_steps of the config")
    p.add_argument("--no-resume", action="store_true", help="start over even if checkpoints exist")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def resume_hint(args: argparse.Namespace, argv: list[str]) -> str:
    """What an interrupted training says: the checkpoints are kept, and the command that resumes from the last."""
    from ..train.checkpoint import CHECKPOINTS
    from . import resume_command

    command = resume_command(argv, drop=["--no-resume"])
    output = getattr(args, "output_dir_in_use", None)
    folder = Path(output) / CHECKPOINTS if output else None
    if folder is None or not any(folder.glob("step-*")):  # the complete ones (a checkpoint is renamed into place)
        return f"no checkpoint was written yet; run it again: {command}"
    return f"the checkpoints written so far are kept in {folder}; resume with: {command}"


def run(args: argparse.Namespace) -> None:
    """Train as the config says; print the dev evaluations and where the trained model is."""
    from ..outputs import OutputLock, check_writable
    from ..train.config import TrainConfig
    from ..train.trainer import Trainer

    config = TrainConfig.load(args.config, output_dir=args.output_dir, max_steps=args.max_steps)
    output = check_writable(config.output_dir, "training output", folder=True)
    args.output_dir_in_use = str(output)  # for resume_hint
    with OutputLock(output, "training output"):  # a second trainer is refused before it loads a model
        result = Trainer(config).train(resume=not args.no_resume, progress=not args.quiet)
    for entry in result.dev:
        print(json.dumps(entry))
    if result.best is not None:
        print(f"keep_best: the weights of step {result.best['step']} (dev nDCG@10 {result.best['nDCG@10']:.4f})")
    print(f"trained model: {result.model_dir} (use --model {result.model_dir} --method {config.method})")
