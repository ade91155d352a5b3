"""Fine-tuning a ranker's own scoring function: groups -> ``score_encoded(grad=True)`` -> loss -> optimiser.

The trainer optimises exactly the function inference calls (the ranker's ``score_encoded``), with LoRA adapters
(peft) or full fine-tuning, a dense head when there is one, gradient accumulation, optional gradient
checkpointing, periodic dev evaluation and checkpoints. A run killed at any point resumes from its last
checkpoint and ends where an uninterrupted run would: the data order is a pure function of the seed and the
step, and the checkpoint holds the trainable weights, the optimiser, the scheduler and the RNG states.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from ..models import TRAINED_CONFIG
from .config import TrainConfig
from .groups import DevSet, Group, load_dev, load_groups

CHECKPOINTS = "checkpoints"
LOG = "log.jsonl"
FINAL = "model"
BEST = "best"


@dataclass
class TrainResult:
    output_dir: Path
    model_dir: Path
    steps: int
    resumed_from: int
    dev: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, float] | None = None  # keep_best: the step and dev nDCG@10 of the weights in model_dir


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes bfloat16 natively: a CUDA GPU that supports it, or a CPU with AVX512-BF16
    or AMX tiles (elsewhere bfloat16 autocast still runs, but emulated and slower than float32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private but long-standing in torch.cpu
        return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)
    return False


def bf16_enabled(setting: bool | str, device: torch.device | str) -> bool:
    """The config's ``bf16_autocast`` (true, false or "auto") for this device."""
    return native_bf16(device) if setting == "auto" else bool(setting)


class Trainer:
    """Fine-tune a pointwise or likelihood ranker.

    Args:
        config: the run's settings.
        backend: an already loaded backend (tests pass a tiny model); default: load ``config.model``.
        groups: training groups; default: built from ``config.data`` / ``split`` / ``run``.
        dev: a dev set; default: ``config.dev_split`` of ``config.data`` if set.
        callbacks: called as ``callback(trainer, step)`` after every optimiser step; a callback that returns True
            stops training there (after a checkpoint of that step), and the run ends as usual: final dev
            evaluation and the trained folder (e.g. a time budget).
    """

    def __init__(
        self,
        config: TrainConfig,
        backend: Any = None,
        groups: Sequence[Group] | None = None,
        dev: DevSet | None = None,
        callbacks: Sequence[Callable[[Trainer, int], bool | None]] = (),
    ):
        from ..train.losses import LOSSES

        self.config = c = config
        if c.loss not in LOSSES:
            raise ValueError(f"unknown loss {c.loss!r}: choose one of {', '.join(sorted(LOSSES))}")
        self.loss_fn = partial(LOSSES[c.loss], **c.loss_options)
        self.distill = c.loss in ("kl", "margin_mse")
        self.output_dir = Path(c.output_dir)
        self.callbacks = list(callbacks)
        torch.manual_seed(c.seed)
        random.seed(c.seed)
        if backend is None:
            from ..backends.hf import HFBackend

            backend = HFBackend.load(c.model, dtype=c.dtype, threads=c.threads)
        self.backend = backend
        self._wrap_model()
        self.ranker = self._build_ranker()
        if groups is None:
            groups, stats = load_groups(c)
            print(f"training groups: {stats}", file=sys.stderr)
        self.groups = list(groups)
        if not self.groups:
            raise ValueError("no training groups: check the split, the run and the relevance threshold")
        if self.distill and any(g.teacher is None for g in self.groups):
            raise ValueError(f"loss {c.loss!r} distils a teacher: set teacher_run in the config")
        sizes = {len(g.docs) for g in self.groups}
        if len(sizes) != 1:
            raise ValueError(f"all groups must have the same size, got sizes {sorted(sizes)}")
        self.dev = dev if dev is not None else load_dev(c)
        if c.keep_best and self.dev is None:
            raise ValueError("config: keep_best picks the best dev evaluation: set dev_split (or pass a dev set)")
        self._best: dict[str, float] | None = None
        self.params = [p for p in self._trainable_modules_params()]
        head_params = list(self.ranker.dense.parameters()) if getattr(self.ranker, "dense", None) else []
        head_ids = {id(p) for p in head_params}
        model_params = [p for p in self.params if id(p) not in head_ids]
        param_groups = [{"params": model_params, "lr": c.learning_rate}]
        if head_params:
            param_groups.append({"params": head_params, "lr": c.head_learning_rate})
        self.optimizer = torch.optim.AdamW(param_groups, weight_decay=c.weight_decay)
        self._orders: dict[int, list[int]] = {}
        self.total_steps = self._total_steps()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)

    # --- set-up ---------------------------------------------------------------------------------------------

    def _wrap_model(self) -> None:
        c = self.config
        if c.lora:
            self.backend.add_lora(c.lora_r, c.lora_alpha, c.lora_dropout, c.lora_targets)
        else:
            self.backend.unfreeze()
        if c.gradient_checkpointing:
            self.backend.set_checkpointing(True)

    def _build_ranker(self) -> Any:
        from ..registry import METHODS

        c = self.config
        if c.method == "pointwise":
            opts: dict[str, Any] = {"head": c.head, "max_length": c.max_length, "template": c.template}
            if c.head == "tokens":
                opts.update(tokens=c.tokens if isinstance(c.tokens, str) else tuple(c.tokens))
                opts.update(normalisation=c.normalisation)
            ranker = METHODS["pointwise"](self.backend, **opts)
            if ranker.dense is not None:
                ranker.dense.trained = True  # it is being trained: let dev evaluation use it
                for p in ranker.dense.parameters():
                    p.requires_grad_(True)
            return ranker
        return METHODS["likelihood"](self.backend, reduction=c.reduction, template=c.template, max_length=c.max_length)

    def _trainable_modules_params(self) -> list[torch.nn.Parameter]:
        params = [p for _, p in self.backend.trainable_parameters()]
        if getattr(self.ranker, "dense", None) is not None:
            params += list(self.ranker.dense.parameters())
        return params

    # --- schedule and data order ----------------------------------------------------------------------------

    @property
    def groups_per_step(self) -> int:
        return self.config.groups_per_batch * self.config.grad_accum

    def _total_steps(self) -> int:
        if self.config.max_steps:  # as in transformers' Trainer, max_steps overrides epochs
            return self.config.max_steps
        return self.config.epochs * math.ceil(len(self.groups) / self.groups_per_step)

    def _lr_factor(self, step: int) -> float:
        warm = self.config.warmup_steps
        if warm and step < warm:
            return (step + 1) / warm
        remaining = max(self.total_steps - step, 0)
        return remaining / max(self.total_steps - warm, 1)

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            order = list(range(len(self.groups)))
            random.Random(self.config.seed * 1_000_003 + epoch).shuffle(order)
            self._orders = {epoch: order}  # one epoch at a time is all the loop needs
        return self._orders[epoch]

    def group_indices(self, step: int, micro: int) -> list[int]:
        """The groups of one micro-batch: a pure function of the seed, the step and the micro-batch."""
        n = len(self.groups)
        start = step * self.groups_per_step + micro * self.config.groups_per_batch
        out = []
        for p in range(start, start + self.config.groups_per_batch):
            out.append(self._order(p // n)[p % n])
        return out

    # --- one step -------------------------------------------------------------------------------------------

    def _autocast(self) -> Any:
        device = torch.device(getattr(self.backend, "device", "cpu"))
        return torch.autocast(
            device_type=device.type, dtype=torch.bfloat16, enabled=bf16_enabled(self.config.bf16_autocast, device)
        )

    def batch_loss(self, groups: Sequence[Group]) -> torch.Tensor:
        """The loss of a micro-batch of groups, through the ranker's own scoring function."""
        items = [e for g in groups for e in self.ranker.encode(g.query, g.docs)]
        with self._autocast():
            scores = self.ranker.score_encoded(items, grad=True).view(len(groups), -1).float()
        target = [g.teacher if self.distill else g.labels for g in groups]
        labels = torch.tensor(target, dtype=scores.dtype)
        return self.loss_fn(scores, labels)

    def evaluate_dev(self) -> dict[str, float]:
        """nDCG@10 of the ranker being trained on the dev set (its top ``top_k`` reranked), or {} without one."""
        from ..evaluate import evaluate_runs
        from ..pipeline import rerank

        if self.dev is None:
            return {}
        d = self.dev
        self.backend.train_mode(False)
        run = {}
        with self._autocast():
            for qid, r in rerank(self.ranker, d.queries, d.corpus, d.run, top_k=d.top_k, queries_per_batch=4):
                run[qid] = list(zip(r.ids or (), r.scores))
        ev = evaluate_runs({q: d.qrels[q] for q in run}, {"model": run}, measures=["nDCG@10"])
        return {"nDCG@10": ev.aggregate["model"]["nDCG@10"]}

    # --- the loop -------------------------------------------------------------------------------------------

    def train(self, resume: bool = True, progress: bool = True) -> TrainResult:
        from tqdm.auto import tqdm

        c = self.config
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self._check_same_config()
        else:  # start over: nothing of an earlier run may be picked up later
            shutil.rmtree(self.output_dir / CHECKPOINTS, ignore_errors=True)
            (self.output_dir / LOG).unlink(missing_ok=True)
        (self.output_dir / "config.json").write_text(json.dumps(c.to_dict(), indent=2) + "\n")
        start = self._resume() if resume else 0
        self._best = self._read_best(start)
        result = TrainResult(self.output_dir, self.output_dir / FINAL, self.total_steps, start)
        bar = tqdm(total=self.total_steps, initial=start, desc="train", unit="step", disable=not progress)
        t0 = time.perf_counter()
        for step in range(start, self.total_steps):
            self.backend.train_mode(True)
            self.optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for micro in range(c.grad_accum):
                groups = [self.groups[i] for i in self.group_indices(step, micro)]
                loss = self.batch_loss(groups) / c.grad_accum
                loss.backward()
                step_loss += loss.item()
            if c.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(self.params, c.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            done = step + 1
            entry: dict[str, Any] = {"step": done, "loss": step_loss, "lr": self.scheduler.get_last_lr()[0]}
            entry["seconds"] = round(time.perf_counter() - t0, 3)
            if c.eval_every and done % c.eval_every == 0 and done < self.total_steps:
                dev = self.evaluate_dev()
                entry.update({f"dev_{k}": v for k, v in dev.items()})
                result.dev.append({"step": done, **{k: v for k, v in entry.items() if k.startswith("dev_")}})
                self._track_best(done, dev)
            self._log(entry)
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}")
            stop = any([bool(callback(self, done)) for callback in self.callbacks])
            if done % c.save_every == 0 or done == self.total_steps or stop:
                self._save_checkpoint(done)
            if stop:
                result.steps = done
                break
        bar.close()
        final = self.evaluate_dev()
        if final:
            self._log({"step": result.steps, **{f"dev_{k}": v for k, v in final.items()}, "final": True})
            result.dev.append({"step": result.steps, **{f"dev_{k}": v for k, v in final.items()}})
            self._track_best(result.steps, final)
        steps = result.steps
        if c.keep_best and self._best is not None:
            result.best = dict(self._best)
            if self._best["step"] != result.steps:  # an earlier evaluation was better: its weights go out
                from safetensors.torch import load_file

                self._load_trainable_state(load_file(str(self.output_dir / BEST / "trainable.safetensors")))
                steps = int(self._best["step"])
        self.save_model(result.model_dir, steps=steps, run_steps=result.steps)
        return result

    # --- the best dev evaluation (keep_best) ----------------------------------------------------------------

    def _track_best(self, step: int, dev: Mapping[str, float]) -> None:
        """Keep the trainable weights of the best dev nDCG@10 so far (the earliest of equal ones)."""
        if not self.config.keep_best or "nDCG@10" not in dev:
            return
        if self._best is not None and dev["nDCG@10"] <= self._best["nDCG@10"]:
            return
        self._best = {"step": step, "nDCG@10": dev["nDCG@10"]}
        tmp = self._start_state_folder(self.output_dir / BEST)
        (tmp / "best.json").write_text(json.dumps(self._best) + "\n")
        self._finish_state_folder(tmp, self.output_dir / BEST)

    def _read_best(self, start: int) -> dict[str, float] | None:
        """The best evaluation of the steps a resumed run keeps; one of a later (lost) step is dropped, since
        the rerun evaluates that step again."""
        folder = self.output_dir / BEST
        record = folder / "best.json"
        if self.config.keep_best and start > 0 and record.is_file():
            best = json.loads(record.read_text())
            if best["step"] <= start:
                return best
        shutil.rmtree(folder, ignore_errors=True)
        return None

    def _log(self, entry: Mapping[str, Any]) -> None:
        with open(self.output_dir / LOG, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    # --- checkpoints ----------------------------------------------------------------------------------------

    def trainable_state(self) -> dict[str, torch.Tensor]:
        state = {f"model.{n}": p.detach().clone() for n, p in self.backend.trainable_parameters()}
        if getattr(self.ranker, "dense", None) is not None:
            state.update({f"head.{n}": p.detach().clone() for n, p in self.ranker.dense.named_parameters()})
        return state

    def _load_trainable_state(self, state: Mapping[str, torch.Tensor]) -> None:
        named = {f"model.{n}": p for n, p in self.backend.trainable_parameters()}
        if getattr(self.ranker, "dense", None) is not None:
            named.update({f"head.{n}": p for n, p in self.ranker.dense.named_parameters()})
        if set(named) != set(state):
            raise ValueError("the checkpoint does not match this configuration's trainable parameters")
        with torch.no_grad():
            for n, p in named.items():
                p.copy_(state[n])

    def _start_state_folder(self, final: Path) -> Path:
        """A fresh temporary sibling of ``final`` holding the trainable weights; ``_finish_state_folder`` renames
        it into place, so a folder killed half-written is never taken for a complete one."""
        from safetensors.torch import save_file

        tmp = final.with_name(f".{final.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_file({k: v.contiguous() for k, v in self.trainable_state().items()}, str(tmp / "trainable.safetensors"))
        return tmp

    @staticmethod
    def _finish_state_folder(tmp: Path, final: Path) -> None:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)

    def _save_checkpoint(self, step: int) -> None:
        root = self.output_dir / CHECKPOINTS
        root.mkdir(parents=True, exist_ok=True)
        final = root / f"step-{step:08d}"
        tmp = self._start_state_folder(final)
        torch.save(
            {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "python_rng": random.getstate(),
            },
            tmp / "state.pt",
        )
        (tmp / "step.json").write_text(json.dumps({"step": step, "total_steps": self.total_steps}) + "\n")
        self._finish_state_folder(tmp, final)  # a checkpoint exists only once complete
        for old in sorted(root.glob("step-*"))[: -self.config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)

    def _check_same_config(self) -> None:
        """Refuse to resume checkpoints written with another configuration (the output folder may differ)."""
        path = self.output_dir / "config.json"
        if not (self.output_dir / CHECKPOINTS).is_dir() or not path.is_file():
            return
        before = json.loads(path.read_text())
        now = json.loads(json.dumps(self.config.to_dict()))
        differ = sorted(k for k in set(before) | set(now) if k != "output_dir" and before.get(k) != now.get(k))
        if differ:
            raise ValueError(
                f"{self.output_dir} holds checkpoints of a run with other {', '.join(differ)}; "
                "use another output_dir, or --no-resume to start over"
            )

    def _resume(self) -> int:
        from safetensors.torch import load_file

        root = self.output_dir / CHECKPOINTS
        done = sorted(root.glob("step-*")) if root.is_dir() else []
        if not done:
            return 0
        last = done[-1]
        step = json.loads((last / "step.json").read_text())["step"]
        self._load_trainable_state(load_file(str(last / "trainable.safetensors")))
        state = torch.load(last / "state.pt", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        random.setstate(state["python_rng"])
        log = self.output_dir / LOG
        if log.exists():  # drop log lines of steps the checkpoint does not hold, and a line cut by the kill
            kept = []
            for line in log.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if entry["step"] <= step:
                    kept.append(line)
            log.write_text("".join(k + "\n" for k in kept))
        print(f"resumed from {last} (step {step} of {self.total_steps})", file=sys.stderr)
        return step

    # --- the trained folder ---------------------------------------------------------------------------------

    def save_model(self, folder: str | Path, steps: int | None = None, run_steps: int | None = None) -> Path:
        """Write a folder that ``Reranker(method, model=folder)`` restores exactly. ``steps``: the optimiser
        steps of the weights written; ``run_steps``: of the whole run, when the weights are an earlier step's
        (``keep_best``)."""
        c = self.config
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.backend.save_weights(folder)  # the adapter only under LoRA
        options: dict[str, Any] = {"max_length": c.max_length, "template": self.ranker.template.to_dict()}
        if c.method == "pointwise":
            options["head"] = c.head
            if c.head == "tokens":
                options.update(tokens=list(self.ranker.words), normalisation=c.normalisation)
            else:
                self.ranker.dense.save(folder / "head.safetensors")
        else:
            options["reduction"] = c.reduction
        base = c.model
        if Path(base).exists():
            base = str(Path(base).resolve())
        meta = {
            "format": 1,
            "method": c.method,
            "options": options,
            "base_model": base,
            "weights": "lora" if c.lora else "full",
            "trained_with": {"loss": c.loss, "steps": self.total_steps if steps is None else steps, "seed": c.seed},
        }
        if run_steps is not None and steps is not None and run_steps != steps:
            meta["trained_with"].update(run_steps=run_steps, selected_by="best dev nDCG@10")
        (folder / TRAINED_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
        return folder
