"""Training speed on this machine: float32 against bfloat16 autocast, with and without gradient checkpointing.

One process, one LoRA trainer built from ``examples/smollm2-dl21-grouped-ce.toml`` (the 135M preset, DL21
train groups of 8 at ``max_length`` 192, two groups per micro-batch). Each mode computes the loss of the same
micro-batches through the trainer's own scoring function and back-propagates it (``Trainer.batch_loss`` +
``backward``, no optimiser step, so the weights never change); the modes take turns, ``--repeats`` times, so
they share whatever else the machine is doing, and the fastest repeat of each is kept. Reported per mode:
seconds per micro-batch, training tokens/s (real tokens, no padding), the loss and the gradient's norm (against
float32: how far bfloat16 moves them), and the peak resident memory of a separate child process that runs
only that mode (``--memory``).

    python benchmarks/train_speed.py                      # writes benchmarks/results/train_speed.json
    python benchmarks/train_speed.py --micro-batches 1 --repeats 1 --no-memory --out results/smoke.json
    python benchmarks/train_speed.py --modes float32 bf16_autocast float32-strided-head \
        bf16_autocast-strided-head --no-memory --out benchmarks/results/train_speed-head.json   # the head's fix
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import (
    REPO,
    RESULTS,
    add_data_option,
    command_line,
    environment,
    markdown_table,
    peak_rss_mib,
    write_json,
)

EXAMPLE = REPO / "examples" / "smollm2-dl21-grouped-ce.toml"
MODES: dict[str, dict[str, bool]] = {
    "float32": {"bf16_autocast": False, "gradient_checkpointing": False},
    "bf16_autocast": {"bf16_autocast": True, "gradient_checkpointing": False},
    "float32+checkpointing": {"bf16_autocast": False, "gradient_checkpointing": True},
    "bf16_autocast+checkpointing": {"bf16_autocast": True, "gradient_checkpointing": True},
    # before the output layer got a contiguous slice (llmrerank.backends.hf.contiguous_head_input): the frozen
    # head's weight copied for every row of a pass
    "float32-strided-head": {"bf16_autocast": False, "gradient_checkpointing": False, "strided_head": True},
    "bf16_autocast-strided-head": {"bf16_autocast": True, "gradient_checkpointing": False, "strided_head": True},
}
DEFAULT_MODES = [m for m in MODES if not MODES[m].get("strided_head")]


def build_trainer(args: argparse.Namespace) -> Any:
    from llmrerank.train.config import TrainConfig
    from llmrerank.train.trainer import Trainer

    cfg = TrainConfig.load(
        EXAMPLE,
        data=str(args.data / "dl21"),
        run=str(args.data / "dl21" / "bm25-top100.trec"),
        dev_split=None,
        eval_every=0,
        threads=args.threads,
        output_dir=str(REPO / "results" / "train_speed"),
    )
    return Trainer(cfg)


def set_mode(trainer: Any, mode: str) -> None:
    """Switch autocast (read by the trainer at every call) and gradient checkpointing on the loaded model."""
    from llmrerank.backends.hf import contiguous_head_input

    trainer.config.bf16_autocast = MODES[mode]["bf16_autocast"]
    trainer.backend.set_checkpointing(MODES[mode]["gradient_checkpointing"])
    head = trainer.backend.model.get_output_embeddings()
    if not MODES[mode].get("strided_head"):
        contiguous_head_input(trainer.backend.model)  # (again, after a strided mode)
    elif head._llmrerank_contiguous:
        head._llmrerank_contiguous.remove()
        head._llmrerank_contiguous = False


def measure(trainer: Any, mode: str, batches: list[list[Any]]) -> dict[str, Any]:
    """Loss and backward of each micro-batch in ``mode``: seconds, real tokens, mean loss, gradient norm."""
    import torch

    set_mode(trainer, mode)
    trainer.backend.train_mode(True)
    tokens = sum(e.length for groups in batches for g in groups for e in trainer.ranker.encode(g.query, g.docs))
    losses = []
    norms = []
    start = time.perf_counter()
    for groups in batches:
        trainer.optimizer.zero_grad(set_to_none=True)
        loss = trainer.batch_loss(groups)
        loss.backward()
        losses.append(loss.item())
        grads = [p.grad.detach().float().norm() for p in trainer.params if p.grad is not None]
        norms.append(torch.stack(grads).norm().item())
    seconds = time.perf_counter() - start
    trainer.optimizer.zero_grad(set_to_none=True)
    return {"seconds": seconds, "tokens": tokens, "losses": losses, "grad_norms": norms}


def child_peak(args: argparse.Namespace, mode: str) -> float | None:
    """Peak RSS (MiB) of a fresh process that runs only ``mode`` on one micro-batch."""
    cmd = [sys.executable, __file__, "--child", mode, "--data", str(args.data), "--micro-batches", "1"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    for line in done.stdout.splitlines():
        if line.startswith("peak_rss_mib="):
            return float(line.split("=", 1)[1])
    print(done.stderr[-2000:], file=sys.stderr)
    return None


def table(result: dict[str, Any]) -> str:
    header = ["mode", "s/micro-batch", "tokens/s", "speed-up", "loss", "|Δloss| vs fp32", "grad norm", "peak RSS MiB"]
    rows = [header]
    base = result["modes"]["float32"]
    for name, r in result["modes"].items():
        rows.append(
            [
                name,
                f"{r['seconds_per_micro_batch']:.1f}",
                f"{r['tokens_per_second']:.0f}",
                f"{base['seconds_per_micro_batch'] / r['seconds_per_micro_batch']:.2f}",
                f"{r['mean_loss']:.4f}",
                f"{r['max_abs_loss_diff']:.4f}",
                f"{r['mean_grad_norm']:.4f}",
                "" if r.get("peak_rss_mib") is None else f"{r['peak_rss_mib']:.0f}",
            ]
        )
    return "\n".join(markdown_table(rows))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_option(ap, "dl21/")
    ap.add_argument("--modes", nargs="+", choices=list(MODES), default=DEFAULT_MODES)
    ap.add_argument("--micro-batches", type=int, default=2, help="micro-batches (2 groups of 8 each) per timing")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-memory", dest="memory", action="store_false", help="skip the per-mode child processes")
    ap.add_argument("--out", type=Path, default=RESULTS / "train_speed.json")
    ap.add_argument("--child", choices=list(MODES), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    from tqdm.auto import tqdm

    trainer = build_trainer(args)
    per = trainer.config.groups_per_batch
    batches = [trainer.groups[i * per : (i + 1) * per] for i in range(args.micro_batches)]
    if args.child:
        measure(trainer, args.child, batches)
        print(f"peak_rss_mib={peak_rss_mib()}")
        return {}
    best: dict[str, dict[str, Any]] = {}
    with tqdm(total=args.repeats * len(args.modes), desc="modes", unit="run") as bar:
        for _ in range(args.repeats):
            for mode in args.modes:
                m = measure(trainer, mode, batches)
                if mode not in best or m["seconds"] < best[mode]["seconds"]:
                    best[mode] = m
                bar.update(1)
    reference = best.get("float32")
    result: dict[str, Any] = {
        "benchmark": "train_speed",
        "command": command_line(),
        "environment": environment(),
        "config": str(EXAMPLE.relative_to(REPO)),
        "micro_batches": args.micro_batches,
        "groups_per_micro_batch": per,
        "group_size": trainer.config.group_size,
        "max_length": trainer.config.options["max_length"],
        "repeats": args.repeats,
        "modes": {},
    }
    for mode, m in best.items():
        n = len(m["losses"])
        entry = {
            "seconds_per_micro_batch": round(m["seconds"] / n, 2),
            "tokens_per_second": round(m["tokens"] / m["seconds"], 1),
            "mean_loss": round(sum(m["losses"]) / n, 5),
            "mean_grad_norm": round(sum(m["grad_norms"]) / n, 5),
            "losses": m["losses"],
            "grad_norms": m["grad_norms"],
        }
        if reference is not None:
            entry["max_abs_loss_diff"] = round(max(abs(a - b) for a, b in zip(m["losses"], reference["losses"])), 5)
        result["modes"][mode] = entry
    del trainer
    if args.memory:
        for mode in tqdm(result["modes"], desc="peak memory", unit="mode"):
            result["modes"][mode]["peak_rss_mib"] = child_peak(args, mode)
    write_json(args.out, result)
    print(table(result))
    print(f"\nwrote {args.out}")
    return result


if __name__ == "__main__":
    main()
