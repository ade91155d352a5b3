"""Fine-tuning a ranker's own scoring function: groups -> ``score_encoded(grad=True)`` -> loss -> optimiser.

The trainer optimises exactly the function inference calls (the ranker's ``score_encoded``), with LoRA adapters
(peft) or full fine-tuning, a dense head when there is one, gradient accumulation, optional gradient
checkpointing, periodic dev evaluation and checkpoints. A run killed at any point resumes from its last
checkpoint and ends where an uninterrupted run would: the data order is a pure function of the seed and the
step, and the checkpoint holds the trainable weights, the optimiser, the scheduler and the RNG states.

This module is the loop; the set-up (:mod:`.setup`), the schedule and data order (:mod:`.schedule`), the
checkpoints (:mod:`.checkpoint`) and the trained folder (:mod:`.export`) live beside it.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from ..outputs import OutputLock, check_writable, make_parent, partial_path, replace_folder, write_atomic
from . import checkpoint, export, schedule, setup
from .config import TrainConfig
from .groups import DevSet, Group, load_dev, load_groups

FINAL = "model"


@dataclass
class TrainResult:
    output_dir: Path
    model_dir: Path
    steps: int
    resumed_from: int
    dev: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, float] | None = None  # keep_best: the step and dev nDCG@10 of the weights in model_dir


class Trainer:
    """Fine-tune a pointwise or likelihood ranker.

    Args:
        config: the run's settings.
        backend: an already loaded backend with the training primitives of ``HFBackend`` (tests pass a tiny
            model); default: load ``config.model``.
        groups: training groups; default: built from ``config.data`` / ``split`` / ``run``.
        dev: a dev set; default: ``config.dev_split`` of ``config.dev_data`` (else ``config.data``) if set.
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
        self.distill = c.learns_from_teacher
        # checked before a model is loaded: a folder that cannot be written fails at once
        self.output_dir = check_writable(c.output_dir, "training output", folder=True)
        self.callbacks = list(callbacks)
        # the seeds come first: LoRA adapters and a dense head are initialised from torch's global RNG
        torch.manual_seed(c.seed)
        random.seed(c.seed)
        if backend is None:
            from ..backends.hf import HFBackend

            backend = HFBackend.load(c.model, dtype=c.dtype, threads=c.threads)
        self.backend = backend
        if c.options.get("adapter") is not None:
            # a published adapter (RankLLaMA's) is merged into the model by the ranker, before LoRA wraps it
            self.ranker = setup.build_ranker(self.backend, c)
            setup.prepare_model(self.backend, c)
        else:  # the LoRA initialisation draws from the RNG before a dense head's, as runs before adapters did
            setup.prepare_model(self.backend, c)
            self.ranker = setup.build_ranker(self.backend, c)
        if groups is None:
            groups, stats = load_groups(c)
            print(f"training groups: {stats}", file=sys.stderr)
        self.groups = list(groups)
        if not self.groups:
            raise ValueError("no training groups: check the split, the run and the relevance threshold")
        if self.distill and any(g.teacher is None for g in self.groups):
            raise ValueError(f"loss {c.loss!r} learns from a teacher here: set teacher_run in the config")
        sizes = {len(g.docs) for g in self.groups}
        if len(sizes) != 1:
            raise ValueError(f"all groups must have the same size, got sizes {sorted(sizes)}")
        self.dev = dev if dev is not None else load_dev(c)
        if self.dev is not None:  # a dev query the ranker cannot score fails now, not after the first steps
            for qid in self.dev.run:
                if qid in self.dev.queries:
                    try:
                        self.ranker.check_query(self.dev.queries[qid])
                    except ValueError as e:
                        raise ValueError(f"dev query {qid}: {e}") from e
        if c.keep_best and self.dev is None:
            raise ValueError("config: keep_best picks the best dev evaluation: set dev_split (or pass a dev set)")
        self._best = checkpoint.KeepBest(self.output_dir, c.keep_best)
        self.params = setup.trainable_parameters(self.backend, self.ranker)
        self.optimizer = setup.make_optimizer(self.params, self.ranker, c)
        self.total_steps = schedule.total_steps(c.max_steps, c.epochs, len(self.groups), self.groups_per_step)
        factor = partial(schedule.lr_factor, warmup_steps=c.warmup_steps, total_steps=self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

    @property
    def groups_per_step(self) -> int:
        return self.config.groups_per_batch * self.config.grad_accum

    def group_indices(self, step: int, micro: int) -> list[int]:
        """The groups of one micro-batch: a pure function of the seed, the step and the micro-batch."""
        c = self.config
        return schedule.group_indices(step, micro, len(self.groups), c.groups_per_batch, c.grad_accum, c.seed)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """A copy of the weights being trained, as a checkpoint holds them."""
        return checkpoint.trainable_state(self.backend, self.ranker)

    # --- one step -------------------------------------------------------------------------------------------

    def _autocast(self) -> torch.autocast:
        return setup.autocast(self.config.bf16_autocast, getattr(self.backend, "device", "cpu"))

    def batch_loss(self, groups: Sequence[Group]) -> torch.Tensor:
        """The loss of a micro-batch of groups, through the ranker's own scoring function."""
        items = [e for g in groups for e in self.ranker.encode(g.query, g.docs)]
        with self._autocast():
            scores = self.ranker.score_encoded(items, grad=True).view(len(groups), -1).float()
        target = [g.teacher if self.distill else g.labels for g in groups]
        labels = torch.tensor(target, dtype=scores.dtype)
        return self.loss_fn(scores, labels)

    @property
    def eval_dtype(self) -> str:
        """What the dev evaluation computes in, resolved on this device: the config's ``eval_dtype``, else the
        method's default dtype (as ``Reranker()`` loads it); ``"float32"`` or ``"bfloat16"``."""
        from ..backends.hf import native_bf16
        from ..registry import method_class

        setting = self.config.eval_dtype or method_class(self.config.method).default_dtype
        if setting == "auto":
            setting = "bfloat16" if native_bf16(getattr(self.backend, "device", "cpu")) else "float32"
        return setting

    @contextmanager
    def _evaluation_backend(self) -> Iterator[None]:
        """The ranker scores with a backend in ``eval_dtype`` while inside: the training backend itself when its
        weights are in that dtype already (or float32 is asked for), else a bfloat16 copy of its model (LoRA
        adapters merged into it, as a trained folder loads), dropped on the way out."""
        model = getattr(self.backend, "model", None)
        if self.eval_dtype != "bfloat16" or model is None or next(model.parameters()).dtype == torch.bfloat16:
            yield
            return
        from ..backends.hf import HFBackend

        b = self.backend
        # Each weight copied straight into bfloat16 (never a second float32 copy of the model), the LoRA adapters in
        # float32 and the buffers as they are (the rotary frequencies stay float32): a trained folder loads so, its
        # base in bfloat16 and peft's adapters in float32, then merged. Always a copy, never a view of a weight the
        # merge would change. Not under inference mode: a conversion made there runs many times slower.
        memo = {
            id(p): torch.nn.Parameter(
                p.detach().to(torch.float32 if "lora_" in name else torch.bfloat16, copy=True), requires_grad=False
            )
            for name, p in model.named_parameters()
        }
        copy = deepcopy(model, memo)
        if b.has_lora:
            copy = copy.merge_and_unload()
        copy.eval()
        evaluator = HFBackend(copy, b.tokenizer, batch_size=b.batch_size, device=b.device, name=b.name,
                              batch_tokens=b.batch_tokens, reuse_prefix=b.reuse_prefix, pass_cost=b.pass_cost_option)
        self.ranker.backend = evaluator
        try:
            yield
        finally:
            self.ranker.backend = b

    def evaluate_dev(self) -> dict[str, float]:
        """nDCG@10 of the ranker being trained on the dev set (its top ``top_k`` reranked), or {} without one; in
        :attr:`eval_dtype`."""
        from ..evaluate import evaluate_runs
        from ..pipeline import rerank

        if self.dev is None:
            return {}
        d = self.dev
        self.backend.train_mode(False)
        run = {}
        with self._evaluation_backend(), self._autocast():
            for qid, r in rerank(self.ranker, d.queries, d.corpus, d.run, top_k=d.top_k, queries_per_batch=4):
                run[qid] = list(zip(r.ids, r.scores))
        ev = evaluate_runs({q: d.qrels[q] for q in run}, {"model": run}, measures=["nDCG@10"])
        return {"nDCG@10": ev.aggregate["model"]["nDCG@10"]}

    # --- the loop -------------------------------------------------------------------------------------------

    def train(self, resume: bool = True, progress: bool = True) -> TrainResult:
        """Run (or resume) the schedule to its end or until a callback stops it, evaluate on the dev set and
        write the trained folder (``output_dir/model``)."""
        with OutputLock(self.output_dir, "training output"):  # one trainer per output folder
            return self._train(resume, progress)

    def _train(self, resume: bool, progress: bool) -> TrainResult:
        from tqdm.auto import tqdm

        c = self.config
        make_parent(self.output_dir / checkpoint.CONFIG, "training output")
        if resume:
            checkpoint.check_same_config(self.output_dir, c)
        else:  # start over: nothing of an earlier run may be picked up later
            checkpoint.start_over(self.output_dir)
        write_atomic(self.output_dir / checkpoint.CONFIG, json.dumps(c.to_dict(), indent=2) + "\n", "training config")
        start = self._resume() if resume else 0
        self._best.restore(start)
        result = TrainResult(self.output_dir, self.output_dir / FINAL, self.total_steps, start)
        t0 = time.perf_counter()
        # the bar ends its line however the loop ends (an interrupt, a failure)
        with tqdm(total=self.total_steps, initial=start, desc="train", unit="step", disable=not progress) as bar:
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
                    self._best.offer(done, dev, self.trainable_state)
                self._log(entry)
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss:.4f}")
                stop = any([bool(callback(self, done)) for callback in self.callbacks])
                if done % c.save_every == 0 or done == self.total_steps or stop:
                    self._save_checkpoint(done)
                if stop:
                    result.steps = done
                    break
        final = self.evaluate_dev()
        if final:
            self._log({"step": result.steps, **{f"dev_{k}": v for k, v in final.items()}, "final": True})
            result.dev.append({"step": result.steps, **{f"dev_{k}": v for k, v in final.items()}})
            self._best.offer(result.steps, final, self.trainable_state)
        steps = result.steps
        best = self._best.record
        if c.keep_best and best is not None:
            result.best = dict(best)
            if best["step"] != result.steps:  # an earlier evaluation was better: its weights go out
                checkpoint.load_trainable_state(self.backend, self.ranker, self._best.weights())
                steps = int(best["step"])
        self.save_model(result.model_dir, steps=steps, run_steps=result.steps)
        return result

    def _log(self, entry: Mapping[str, Any]) -> None:
        with open(self.output_dir / checkpoint.LOG, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    def _save_checkpoint(self, step: int) -> None:
        checkpoint.save_checkpoint(
            self.output_dir,
            step,
            self.total_steps,
            self.trainable_state(),
            self.optimizer,
            self.scheduler,
            keep=self.config.keep_checkpoints,
        )

    def _resume(self) -> int:
        return checkpoint.resume(
            self.output_dir, self.backend, self.ranker, self.optimizer, self.scheduler, self.total_steps
        )

    # --- the trained folder ---------------------------------------------------------------------------------

    def save_model(self, folder: str | Path, steps: int | None = None, run_steps: int | None = None) -> Path:
        """Write a folder that ``Reranker(method, model=folder)`` restores exactly (see :func:`.export.save_model`).
        ``steps``: the optimiser steps of the weights written (default: the whole schedule's); ``run_steps``: of
        the whole run, when the weights are an earlier step's (``keep_best``)."""
        if steps is None:  # the weights of the whole schedule: no earlier step was selected
            steps, run_steps = self.total_steps, None
        final = check_writable(folder, "trained model", folder=True)
        # written beside, then put in place: an earlier trained folder stays whole until this one is
        with OutputLock(final, "trained model"):
            tmp = partial_path(final)
            if tmp.exists():
                shutil.rmtree(tmp)
            export.save_model(tmp, self.config, self.backend, self.ranker, steps, run_steps)
            replace_folder(tmp, final)
        return final
