"""Fine-tuning benchmark (issue 5): the 135M preset fine-tuned on DL21 train, evaluated on DL19 and SciFact.

Variants, one training run each, built in code from one shared base (the settings of
``examples/smollm2-dl21-grouped-ce.toml``: smollm2-135m, max_length 192, groups of 8 from the BM25 top 100, at
most 3 positives a query, 2 groups a micro-batch x 2 accumulated, LoRA r16/alpha32, lr 3e-4, 5 warm-up steps,
dev nDCG@10 on DL21 dev every 10 steps, seed 0):

- ``a``: pointwise, tokens head (s = z_yes - z_no), grouped softmax cross-entropy
- ``b``: pointwise, tokens head, RankNet
- ``c``: pointwise, tokens head, ListNet
- ``d``: pointwise, tokens head, PolyLoss (``poly1``)
- ``e``: query likelihood (mean log-probability of the query), grouped softmax cross-entropy
- ``scifact``: SciFact train instead of DL21 (negatives: unjudged documents of a BM25 top-100 run over the train
  queries, since SciFact qrels list only relevant documents; no dev split), with ``--loss`` and ``--method``
- ``distill``: synthetic queries instead of labels (issue 17; ``benchmarks/distill.py`` runs the chain): the
  folder ``llmrerank generate-queries`` wrote (``--synthetic``; its ``train`` split, the queries the consistency
  filter kept), groups of the source passage and 7 negatives drawn from its BM25 top 20, the loss's targets the
  teacher run's (``--teacher-run``: its scores for ``kl`` and ``margin_mse``, its order for ``ranknet``), or,
  with no teacher, the source passage itself, as InPars trains (``grouped_ce``: the source against its negatives;
  ``nll``: the likelihood of the query after its source, in groups of the source alone); dev nDCG@10 on DL21 dev
  (``dev_data``), or with ``--dev scifact`` on a fixed sample of 50 SciFact *train* queries (a SciFact student's);
  with ``--loss`` and ``--method``
- ``zero-shot``: no training; only the zero-shot likelihood runs (the cached baselines) and their evaluation

Evaluation of the trained folder, loaded with ``Reranker(method, model=folder)``:

- DL19, all 43 queries, top 20 of ``bm25-top100.trec``, at the trained ``max_length`` (192);
- the fixed 100-query SciFact test sample of ``benchmarks/zero_shot.py`` (BM25 top 20 over the whole corpus), at
  ``max_length`` 256 as in the core benchmark: passed explicitly, since the trained folder says 192.

nDCG@10 and Judged@10 of BM25, of the zero-shot likelihood run of the same base model (same top 20 and
``max_length``; cached in ``results/finetune/zero_shot-likelihood-{dataset}.trec`` and shared by the variants)
and of the fine-tuned run, with paired two-sided t-tests of the fine-tuned run against both.

Time bound (``--max-minutes``, training only): the number of steps is planned so that the linear learning-rate
decay ends with the run: a probe trainer scores the dev queries before any training (timed; also the zero-shot
point of the dev curve, recorded) and runs two optimiser steps (timed by a callback, which then stops it: the
first carries the process's one-off warm-up, so the second's time stands for every step of the real run), and
``max_steps`` is the most steps (at most ``--epochs`` epochs) whose estimated time, dev evaluations included,
fits 90% of what is left of the budget; the real run is then a plain ``Trainer.train``, resumable. A guard
callback stops the run cleanly past 1.1 x the budget as a last resort (a callback returning
True: checkpoint, final dev evaluation and ``model/`` as usual) and ``stopped_early`` is recorded. Everything is
in the JSON (``time_bound``), which is rewritten after the plan, after training and after each evaluation.

Files: the training folder ``results/finetune/{variant}/`` (checkpoints, ``log.jsonl``, ``model/``, and the
reranked runs ``dl19.trec``, ``scifact.trec`` with their sidecars), git-ignored; the JSON defaults to
``benchmarks/results/finetune-{variant}.json``. Started again, a run resumes: a finished ``model/`` with the
same settings is reused (its runs resumed; the JSON keeps the training record and command of the invocation
that trained it, ``trained_by``), a killed training resumes from its last checkpoint with the
planned steps; ``--fresh`` starts the variant over.

Usage (from the repository root)::

    python benchmarks/finetune.py --variant zero-shot          # the baselines alone (optional: any variant makes them)
    python benchmarks/finetune.py --variant a                  # ... b, c, d, e
    python benchmarks/finetune.py --variant scifact --loss grouped_ce --method likelihood
    python benchmarks/finetune.py --variant a --max-steps 1 --smoke   # a smoke run, files under results/
    python benchmarks/finetune.py --variant e --max-positives 0 --tag allpos   # departs from BASE: named run

``--max-positives N`` (0: all) and ``--keep-best`` (``model/`` = the best dev evaluation's weights) depart from
the shared base, so such a run needs ``--tag``: its files are ``finetune-{variant}-{tag}.json`` and
``results/finetune/{variant}-{tag}/``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from _common import (
    BM25_B,
    BM25_K1,
    REPO,
    RESULTS,
    Report,
    add_data_option,
    environment,
    header,
    load_dataset,
    p_round,
    peak_rss_mib,
    read_json,
    rel,
    text_table,
)

VARIANTS: dict[str, tuple[str, str, str]] = {
    "a": ("pointwise", "grouped_ce", "pointwise tokens head (z_yes - z_no), grouped softmax cross-entropy"),
    "b": ("pointwise", "ranknet", "pointwise tokens head (z_yes - z_no), RankNet"),
    "c": ("pointwise", "listnet", "pointwise tokens head (z_yes - z_no), ListNet"),
    "d": ("pointwise", "poly1", "pointwise tokens head (z_yes - z_no), PolyLoss (poly1)"),
    "e": ("likelihood", "grouped_ce", "query likelihood (mean log-probability), grouped softmax cross-entropy"),
}
CHOICES = (*VARIANTS, "scifact", "distill", "zero-shot")
# losses that learn from the labels alone (kl and margin_mse distil a teacher run, which this benchmark has not)
LABEL_LOSSES = ("grouped_ce", "ranknet", "listnet", "poly1", "listmle", "lambdaloss", "bce")
# the distillation losses of --variant distill: KL to the teacher's distribution, RankNet on its order, margin MSE
DISTILL_LOSSES = ("kl", "ranknet", "margin_mse")
# and the losses that need no teacher, learning each synthetic query's source passage (its qrels) as InPars does:
# the likelihood of the query after it (nll), or the source picked out of its BM25 negatives (grouped_ce)
SOURCE_LOSSES = ("nll", "grouped_ce")
SYNTHETIC_LOSSES = (*DISTILL_LOSSES, *SOURCE_LOSSES)
DISTILL_TOP_K = 20  # the teacher reranked the synthetic queries' BM25 top 20: negatives come from there

# the shared base: examples/smollm2-dl21-grouped-ce.toml (the ranker's options: base_options)
MAX_LENGTH = 192
BASE: dict[str, Any] = {
    "model": "smollm2-135m",
    "group_size": 8,
    "top_k": 100,
    "max_positives": 3,
    "dev_split": "dev",
    "dev_top_k": 20,
    "eval_every": 10,
    "lora": True,
    "lora_r": 16,
    "lora_alpha": 32,
    "learning_rate": 3e-4,
    "warmup_steps": 5,
    "groups_per_batch": 2,
    "grad_accum": 2,
    "bf16_autocast": "auto",
    # the dev evaluation on the model being trained (under its autocast), as the recorded runs chose their steps
    "eval_dtype": "float32",
    "seed": 0,
    "save_every": 5,
}

DATASETS = ("dl19", "scifact")
TOP_K = 20
SCIFACT_MAX_LENGTH = 256  # as in the core zero-shot benchmark
MEASURES = ("nDCG@10", "Judged@10")
QUERIES_PER_BATCH = 4
SCIFACT_TRAIN_TOP_K = 100
# --dev scifact: the dev curve on this many SciFact *train* queries (a fixed sample; never a test query)
SCIFACT_DEV_QUERIES = 50
DEV_SETS = ("dl21", "scifact")
PROBE_STEPS = 2  # the probe times this many optimiser steps: the first, and one after it
PLAN_SHARE = 0.9  # the planned steps fill this share of the budget left after the probe
GUARD = 1.1  # the guard stops training past this multiple of the budget
SAVE_SECONDS = 10.0  # allowance for writing model/ at the end
LEVEL = 0.05
BM25, ZERO_SHOT, FINETUNED = "bm25", "zero_shot_likelihood", "finetuned"


class _ProbeDone(Exception):
    """Raised by the probe's callback after its timed steps."""


# --- small helpers ------------------------------------------------------------------------------------------


def now() -> float:
    return time.perf_counter()


def json_round(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    """As the dict reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(cfg_dict))


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- the training configuration ------------------------------------------------------------------------------


def scifact_train_run(data: Path, work: Path) -> Path:
    """BM25 top 100 of every SciFact train query (bm25s, k1 0.9, b 0.4), cached as a TREC run."""
    path = work / f"scifact-train-bm25-top{SCIFACT_TRAIN_TOP_K}.trec"
    if path.is_file():
        return path
    from llmrerank.data import load_beir, write_run
    from llmrerank.retrieve import bm25_search

    beir = load_beir(data / "scifact", split="train")
    print(f"scifact train: BM25 top {SCIFACT_TRAIN_TOP_K} of {len(beir.queries)} queries", file=sys.stderr)
    run = bm25_search(beir.corpus, beir.queries, top_k=SCIFACT_TRAIN_TOP_K, k1=BM25_K1, b=BM25_B, show_progress=False)
    tmp = path.with_name(path.name + ".tmp")
    write_run(tmp, run, tag="bm25")
    tmp.replace(path)
    return path


def scifact_dev_run(data: Path, work: Path) -> Path:
    """The BM25 top 100 of ``SCIFACT_DEV_QUERIES`` SciFact train queries, drawn with a fixed seed from
    ``scifact_train_run``: the dev curve of a SciFact student (``--dev scifact``), cached as a TREC run."""
    import random

    from llmrerank.data import load_run, write_run

    path = work / f"scifact-train-dev{SCIFACT_DEV_QUERIES}-bm25-top{SCIFACT_TRAIN_TOP_K}.trec"
    if path.is_file():
        return path
    full = load_run(scifact_train_run(data, work))
    chosen = sorted(random.Random(0).sample(sorted(full), SCIFACT_DEV_QUERIES))
    tmp = path.with_name(path.name + ".tmp")
    write_run(tmp, {q: full[q] for q in chosen}, tag="bm25")
    tmp.replace(path)
    return path


def dev_settings(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Where a distilled student's dev curve comes from: DL21 dev, or SciFact train queries (``--dev``)."""
    if args.dev == "scifact":
        run = scifact_dev_run(args.data, work)
        return {"dev_data": str(args.data / "scifact"), "dev_split": "train", "dev_run": str(run)}
    return {"dev_data": str(args.data / "dl21"), "dev_run": str(args.data / "dl21" / "bm25-top100.trec")}


def build_config(args: argparse.Namespace, work: Path) -> Any:
    from llmrerank.train.config import TrainConfig

    settings = {**BASE, "model": args.model, "epochs": args.epochs, "max_steps": args.max_steps}
    if args.max_positives is not None:
        settings["max_positives"] = args.max_positives or None  # 0: every positive of a query
    if args.keep_best:
        settings["keep_best"] = True
    if args.learning_rate is not None:
        settings["learning_rate"] = args.learning_rate
    if args.lora_r is not None:
        settings.update(lora_r=args.lora_r, lora_alpha=2 * args.lora_r)
    if args.full:
        settings["lora"] = False
    if args.group_size is not None:
        settings["group_size"] = args.group_size
    if args.eval_every is not None:
        settings["eval_every"] = args.eval_every
    if args.loss_options:
        settings["loss_options"] = dict(args.loss_options)
    if args.variant == "scifact":
        method, loss = args.method, args.loss
        settings.update(
            data=str(args.data / "scifact"),
            split="train",
            run=str(scifact_train_run(args.data, work)),
            unjudged=True,  # SciFact qrels list only relevant documents: every negative is unjudged
            dev_split=None,  # SciFact has no dev split (test is for evaluation only)
            eval_every=0,
        )
    elif args.variant == "distill":
        method, loss = args.method, args.loss
        settings.update(
            data=str(args.synthetic),
            split="train",
            run=str(args.synthetic / "bm25.trec"),
            top_k=DISTILL_TOP_K,
            unjudged=True,  # a synthetic query's one judged document is its source passage
            max_positives=1,
            **dev_settings(args, work),
        )
        if loss not in SOURCE_LOSSES:  # those learn the source passage (the qrels), no teacher
            settings.update(
                teacher_run=str(args.teacher_run),
                teacher_mode="order" if loss == "ranknet" else "scores",
                target="teacher",
            )
    else:
        method, loss, _ = VARIANTS[args.variant]
        settings.update(data=str(args.data / "dl21"), split="train", run=str(args.data / "dl21" / "bm25-top100.trec"))
    if args.smoke:
        settings.update(dev_split=None, eval_every=0)
    options = {**base_options(method), **({"max_length": args.max_length} if args.max_length else {})}
    settings.update(method=method, options=options, loss=loss, output_dir=str(work / args.name))
    return TrainConfig(**settings)


def base_options(method: str) -> dict[str, Any]:
    """The ranker's options of the shared base for ``method``: the yes/no logit for pointwise."""
    pointwise = {"head": "tokens", "normalisation": "logit"} if method == "pointwise" else {}
    return {**pointwise, "max_length": MAX_LENGTH}


def load_training(cfg: Any) -> tuple[list[Any], dict[str, int], Any]:
    """The training groups and the dev set, as the trainer builds them from ``cfg``, and the groups' counts."""
    from dataclasses import asdict

    from llmrerank.train.groups import load_dev, load_groups

    groups, stats = load_groups(cfg)
    print(f"training groups: {stats}", file=sys.stderr)
    return groups, asdict(stats), load_dev(cfg)


def dev_queries(dev: Any) -> list[str]:
    return [q for q in dev.run if q in dev.queries] if dev is not None else []


# --- the time bound ------------------------------------------------------------------------------------------


def probe(cfg: Any, groups: list[Any], dev: Any) -> dict[str, Any]:
    """On a throw-away trainer: the dev evaluation before any training (LoRA's B matrices start at zero, so this
    is the base model: the zero-shot point of the dev curve), timed, then two timed optimiser steps: the first
    carries the process's one-off warm-up (the real run, started after it, does not repeat it), so the second's
    time stands for every step."""
    from llmrerank.train.trainer import Trainer

    folder = Path(cfg.output_dir) / "probe"
    shutil.rmtree(folder, ignore_errors=True)
    marks: list[float] = []

    def stop_after_two_steps(trainer: Any, step: int) -> None:
        marks.append(now())
        if len(marks) == PROBE_STEPS:
            raise _ProbeDone

    print(
        f"probe: dev evaluation before training, then {PROBE_STEPS} timed optimiser steps", file=sys.stderr, flush=True
    )
    t = now()
    trainer = Trainer(
        replace(cfg, output_dir=str(folder), max_steps=None), groups=groups, dev=dev, callbacks=[stop_after_two_steps]
    )
    load_s = now() - t
    dev_s, before = 0.0, None
    if dev is not None:
        t = now()
        before = trainer.evaluate_dev()["nDCG@10"]
        dev_s = now() - t
    t = now()
    try:
        trainer.train(resume=False, progress=False)
    except _ProbeDone:
        pass
    first_s = marks[0] - t
    step_s = marks[1] - marks[0] if len(marks) > 1 else first_s  # a one-step run has no second step
    del trainer
    free_memory()
    shutil.rmtree(folder, ignore_errors=True)
    out = {
        "load_seconds": round(load_s, 1),
        "first_step_seconds": round(first_s, 1),
        "step_seconds": round(step_s, 1),
        "dev_queries": len(dev_queries(dev)),
        "dev_eval_seconds": round(dev_s, 1),
        "dev_nDCG@10_before_training": before,
    }
    print(f"probe: {out}", file=sys.stderr, flush=True)
    return out


def estimated_seconds(steps: int, step_s: float, dev_s: float, eval_every: int, has_dev: bool) -> float:
    """Steps, plus the dev evaluations the trainer runs (every ``eval_every`` steps before the last, and at the end)."""
    evals = 0
    if has_dev:
        evals = 1 + ((steps - 1) // eval_every if eval_every else 0)
    return steps * step_s + evals * dev_s


def plan_steps(most: int, step_s: float, dev_s: float, eval_every: int, has_dev: bool, available: float) -> int:
    """The most steps (1 to ``most``) whose estimated time fits ``available`` seconds; at least 1."""
    best = 1
    for n in range(1, most + 1):
        if estimated_seconds(n, step_s, dev_s, eval_every, has_dev) > available:
            break
        best = n
    return best


class Guard:
    """A callback: times the first step of this invocation; returns True (stop) past the hard limit."""

    def __init__(self, t0: float, limit_s: float):
        self.t0 = t0
        self.limit_s = limit_s
        self.started: float | None = None
        self.first_step_s: float | None = None
        self.stopped_at: int | None = None

    def __call__(self, trainer: Any, step: int) -> bool:
        t = now()
        if self.first_step_s is None and self.started is not None:
            self.first_step_s = t - self.started
        if step < trainer.total_steps and t - self.t0 > self.limit_s:
            self.stopped_at = step
            return True  # the trainer stops cleanly: checkpoint, final dev evaluation, trained folder
        return False


# --- training ------------------------------------------------------------------------------------------------


def read_log(folder: Path) -> dict[str, Any]:
    """The loss curve and the dev nDCG@10 points of the trainer's ``log.jsonl``."""
    curve, dev = [], []
    path = folder / "log.jsonl"
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                e = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "loss" in e:
                curve.append({k: e[k] for k in ("step", "loss", "lr", "seconds") if k in e})
            if "dev_nDCG@10" in e:
                dev.append({"step": e["step"], "nDCG@10": e["dev_nDCG@10"], "final": bool(e.get("final", False))})
    return {"loss_curve": curve, "dev": dev}


def train(args: argparse.Namespace, cfg: Any, bench: Bench) -> tuple[Any, Path, bool]:
    """Train (or reuse) the variant's model; returns the final config, the model folder, and whether it is new."""
    from llmrerank.train.trainer import Trainer

    out_dir = Path(cfg.output_dir)
    model_dir = out_dir / "model"
    info: dict[str, Any] = {"output_dir": rel(str(out_dir)), "model_dir": rel(str(model_dir))}
    bench.result["training"] = info
    bench.result["time_bound"] = bound = {
        "max_minutes": args.max_minutes,
        "budget_seconds": round(args.max_minutes * 60, 1),
        "guard_seconds": round(args.max_minutes * 60 * GUARD, 1),
        "mechanism": (
            "max_steps planned from a probe's second timed step (its first carries warm-up) so the run fits "
            f"{PLAN_SHARE:.0%} of the budget left, so the learning-rate decay ends with the run; a guard callback "
            f"returns True (stop) past {GUARD} x the budget, and the trainer then ends as usual: checkpoint, final "
            "dev evaluation, model/"
        ),
    }
    if args.fresh and out_dir.exists():
        shutil.rmtree(out_dir)
    saved = read_json(out_dir / "config.json")
    current = json_round(cfg.to_dict())
    ignore = {"output_dir"} | ({"max_steps"} if args.max_steps is None else set())
    same = saved is not None and all(saved.get(k) == v for k, v in current.items() if k not in ignore)
    has_checkpoints = (out_dir / "checkpoints").is_dir() and any((out_dir / "checkpoints").glob("step-*"))
    if saved is not None and not same and (has_checkpoints or (model_dir / "llmrerank.json").is_file()):
        differ = sorted(k for k in current if k not in ignore and saved.get(k) != current[k])
        raise SystemExit(f"{out_dir} holds a run with other {', '.join(differ)}; add --fresh to start over")

    if same and (model_dir / "llmrerank.json").is_file():
        cfg = replace(cfg, max_steps=saved.get("max_steps"))
        meta = read_json(model_dir / "llmrerank.json") or {}
        bench.result["config"] = json_round(cfg.to_dict())
        earlier = bench.previous
        if earlier.get("config") == bench.result["config"] and "seconds" in earlier.get("training", {}):
            # the JSON of the invocation that trained this folder (or of one that reused it, which kept it):
            # keep its training record, how it was bounded, and which invocation trained
            info.update(earlier["training"])
            bound.update(earlier.get("time_bound", {}))
            bench.result["trained_by"] = earlier.get("trained_by") or {
                "command": earlier.get("command"),
                "started": earlier.get("started"),
                "how": earlier.get("time_bound", {}).get("how"),
            }
        info.update(reused=True, steps=meta.get("trained_with", {}).get("steps"), **read_log(out_dir))
        bound["how"] = "reused: model/ of an earlier run with these settings (trained_by)"
        bench.write()
        print(f"reusing the trained model in {model_dir}", file=sys.stderr, flush=True)
        return cfg, model_dir, False

    groups, stats, dev = load_training(cfg)
    epoch_steps = math.ceil(len(groups) / (cfg.groups_per_batch * cfg.grad_accum))
    most = cfg.epochs * epoch_steps  # what --epochs allows
    info.update(groups=stats, dev_queries=len(dev_queries(dev)), epoch_steps=epoch_steps, epochs_steps=most)
    if dev is None:
        info["dev_note"] = "no dev evaluation: " + ("--smoke" if args.smoke else "SciFact has no dev split")
    budget = args.max_minutes * 60
    t0 = now()
    if args.max_steps is not None:
        bound["how"] = "max_steps given (--max-steps)"
    elif same and has_checkpoints and saved.get("max_steps"):
        cfg = replace(cfg, max_steps=saved["max_steps"])
        bound["how"] = "resumed: max_steps planned by the earlier, interrupted run (its config.json)"
    else:
        measured = probe(cfg, groups, dev)
        info["dev_nDCG@10_before_training"] = measured["dev_nDCG@10_before_training"]
        left = budget - (now() - t0) - measured["load_seconds"] - SAVE_SECONDS
        available = PLAN_SHARE * left
        step_s, dev_s = measured["step_seconds"], measured["dev_eval_seconds"]
        steps = plan_steps(most, step_s, dev_s, cfg.eval_every, dev is not None, available)
        cfg = replace(cfg, max_steps=steps)
        est = estimated_seconds(steps, step_s, dev_s, cfg.eval_every, dev is not None)
        bound.update(
            how="probe",
            probe=measured,
            probe_seconds=round(now() - t0, 1),
            available_seconds=round(available, 1),
            planned_steps=steps,
            estimated_seconds=round(est, 1),
            limited_by="epochs" if steps == most else "time",
        )
        if estimated_seconds(1, step_s, dev_s, cfg.eval_every, dev is not None) > available:
            bound["warning"] = "even one step does not fit the budget by the estimate; training one step anyway"
    bench.result["config"] = json_round(cfg.to_dict())
    bench.result["status"] = "training"
    bench.write()

    guard = Guard(t0, budget * GUARD)
    trainer = Trainer(cfg, groups=groups, dev=dev, callbacks=[guard])
    info["planned_steps"] = trainer.total_steps
    guard.started = now()
    # resume only checkpoints of these settings; otherwise start clean (no stale log lines)
    result = trainer.train(resume=same and has_checkpoints)
    steps, resumed_from = result.steps, result.resumed_from
    info["stopped_early"] = guard.stopped_at is not None
    if info["stopped_early"]:
        print(f"time guard: stopped after step {steps} of {trainer.total_steps}", file=sys.stderr, flush=True)
    info.update(
        reused=False,
        steps=steps,
        resumed_from=resumed_from,
        seconds=round(now() - t0, 1),
        first_step_seconds=None if guard.first_step_s is None else round(guard.first_step_s, 1),
        peak_rss_mib=peak_rss_mib(),
        **read_log(out_dir),
    )
    info["groups_seen"] = steps * trainer.groups_per_step
    del trainer, groups, dev
    free_memory()
    bench.write()
    return cfg, model_dir, True


# --- evaluation ----------------------------------------------------------------------------------------------


def rerank(ranker: Any, data: Any, out: Path, resume: bool, tag: str, sidecar: dict[str, Any]) -> Any:
    from llmrerank.pipeline import rerank_run

    return rerank_run(
        ranker,
        data.queries,
        data.corpus,
        data.run,
        out,
        top_k=TOP_K,
        resume=resume,
        tag=tag,
        queries_per_batch=QUERIES_PER_BATCH,
        sidecar=sidecar,
    )


def report_dict(report: Any, cached: bool) -> dict[str, Any]:
    return {
        "queries_scored": report.queries,
        "queries_cached": report.queries_skipped_resume,
        "documents": report.documents,
        "seconds": round(report.seconds, 1),
        "docs_per_second": round(report.docs_per_second, 3),
        "truncated": int(sum(q.get("truncated", 0) for q in report.per_query.values())),
        "cached": cached,
    }


def score_runs(qrels: dict[str, dict[str, int]], runs: dict[str, Any]) -> dict[str, Any]:
    """nDCG@10 and Judged@10 of each run; the fine-tuned run tested against BM25 and against zero-shot."""
    from llmrerank.evaluate import evaluate_runs

    ev = evaluate_runs(qrels, runs, measures=list(MEASURES))
    against = {BM25: ev}
    if ZERO_SHOT in runs and FINETUNED in runs:
        against[ZERO_SHOT] = evaluate_runs(
            qrels, {ZERO_SHOT: runs[ZERO_SHOT], FINETUNED: runs[FINETUNED]}, list(MEASURES)
        )
    table = {}
    for name in ev.run_names:
        row: dict[str, Any] = {m: round(ev.aggregate[name][m], 4) for m in MEASURES}
        for base, e in against.items():
            if name == base or name not in e.run_names or (base == ZERO_SHOT and name != FINETUNED):
                continue
            ours, theirs = e.per_query[name]["nDCG@10"], e.per_query[base]["nDCG@10"]
            row[f"delta_vs_{base}"] = round(e.aggregate[name]["nDCG@10"] - e.aggregate[base]["nDCG@10"], 4)
            row[f"p_vs_{base}"] = p_round(e.p_values[name]["nDCG@10"], 4)
            row[f"wins_vs_{base}"] = sum(ours[q] > theirs[q] for q in e.query_ids)
            row[f"losses_vs_{base}"] = sum(ours[q] < theirs[q] for q in e.query_ids)
            row[f"significant_win_vs_{base}"] = e.significant(name, "nDCG@10", LEVEL) and row[f"delta_vs_{base}"] > 0
        table[name] = row
    per_query = {name: [round(ev.per_query[name]["nDCG@10"][q], 4) for q in ev.query_ids] for name in ev.run_names}
    return {"runs": table, "query_ids": ev.query_ids, "rel": ev.rel, "per_query_nDCG@10": per_query}


class ZeroShot:
    """The base model's zero-shot likelihood ranker, loaded once and shared by the datasets."""

    def __init__(self, model: str):
        self.model = model
        self.backend: Any = None

    def ranker(self, max_length: int) -> Any:
        from llmrerank import Reranker

        if self.backend is None:
            # float32, as every evaluation here (the trainer's dev evaluation included: eval_dtype)
            r = Reranker("likelihood", model=self.model, max_length=max_length, dtype="float32")
            self.backend = r.backend
            return r
        return Reranker("likelihood", backend=self.backend, max_length=max_length)


def evaluate_dataset(
    args: argparse.Namespace,
    bench: Bench,
    name: str,
    cfg: Any,
    model_dir: Path | None,
    new_model: bool,
    zero_shot: ZeroShot,
    work: Path,
) -> None:
    from llmrerank import Reranker
    from llmrerank.data import load_run

    data = load_dataset(name, args.data, TOP_K, args.eval_queries)
    trained_length = cfg.options["max_length"]
    max_length = SCIFACT_MAX_LENGTH if name == "scifact" else trained_length
    entry: dict[str, Any] = {
        "n_queries": len(data.queries),
        "top_k": TOP_K,
        "max_length": max_length,
        "first_stage": data.first_stage,
        "files": {},
        "rerank": {},
    }
    if name == "dl19":
        entry["max_length_note"] = (
            f"the trained max_length ({trained_length}), for the fine-tuned and the zero-shot run alike; the core "
            "zero-shot table used 256, so its DL19 likelihood number differs a little (more passages are cut at 192)"
        )
    else:
        entry["max_length_note"] = (
            f"{SCIFACT_MAX_LENGTH} as in the core zero-shot benchmark, passed explicitly: the model was trained "
            f"at {trained_length} and its folder restores {trained_length} by default"
        )
    bench.result["datasets"][name] = entry
    runs: dict[str, Any] = {BM25: data.run}
    sidecar = {"dataset": name, "first_stage": f"bm25 top {TOP_K}", "n_queries": len(data.queries)}

    def done(run_name: str, out: Path, report: Any, cached: bool) -> None:
        runs[run_name] = load_run(out)
        entry["files"][run_name] = rel(str(out))
        entry["rerank"][run_name] = report_dict(report, cached)
        entry.update(score_runs(data.qrels, runs))
        bench.write()

    entry.update(score_runs(data.qrels, runs))
    bench.write()

    if model_dir is not None:
        print(f"{name}: fine-tuned {cfg.method}, max_length {max_length}", file=sys.stderr, flush=True)
        ranker = Reranker(cfg.method, model=str(model_dir), max_length=max_length, dtype="float32")
        out = Path(cfg.output_dir) / f"{name}.trec"
        report = rerank(ranker, data, out, not new_model, f"ft-{args.name}", {**sidecar, "variant": args.name})
        del ranker
        free_memory()
        done(FINETUNED, out, report, cached=report.queries == 0)

    if args.no_zero_shot:
        return
    print(f"{name}: zero-shot likelihood, max_length {max_length}", file=sys.stderr, flush=True)
    ranker = zero_shot.ranker(max_length)
    out = work / f"zero_shot-likelihood-{name}.trec"
    try:
        report = rerank(ranker, data, out, True, "zero-shot-likelihood", sidecar)
    except ValueError as e:  # a cache made with other settings: make it again
        print(f"{out}: {e}; recomputing", file=sys.stderr, flush=True)
        report = rerank(ranker, data, out, False, "zero-shot-likelihood", sidecar)
    done(ZERO_SHOT, out, report, cached=report.queries == 0)


# --- the JSON and the table ----------------------------------------------------------------------------------


class Bench(Report):
    def __init__(self, args: argparse.Namespace):
        # what an earlier invocation wrote there: a run that reuses its trained folder keeps its training record
        self.previous = read_json(Path(args.out)) or {}
        if args.variant in VARIANTS:
            description = VARIANTS[args.variant][2] + ", DL21 train"
        elif args.variant == "scifact":
            description = f"{args.method}, {args.loss}, SciFact train (BM25 top-100 unjudged negatives)"
        elif args.variant == "distill":
            target = "the source passages" if args.loss in SOURCE_LOSSES else "the teacher"
            description = f"{args.method}, {args.loss} on {target}, synthetic queries ({rel(str(args.synthetic))})"
        else:
            description = "no training: BM25 and the zero-shot likelihood baselines"
        if args.departs:
            description += f" ({', '.join(args.departs)})"
        issue = 17 if args.variant == "distill" else 5
        first = {"issue": issue, "variant": args.variant, "name": args.name, "description": description}
        result = {
            **header("finetune", "starting", **first),
            "smoke": args.smoke,
            "model": args.model,
            "environment": environment(),
            "evaluation": {
                "top_k": TOP_K,
                "measures": list(MEASURES),
                "significance": f"paired two-sided t-test on per-query nDCG@10, p < {LEVEL}",
                "max_length": {"dl19": args.max_length or MAX_LENGTH, "scifact": SCIFACT_MAX_LENGTH},
                "zero_shot": "likelihood ranker of the base model, same top 20 and max_length as the fine-tuned run",
            },
            "datasets": {},
        }
        super().__init__(args.out, result)


def table(result: dict[str, Any]) -> str:
    def cell(v: Any, fmt: str) -> str:
        return "" if v is None else format(v, fmt)

    header = ["dataset", "run", "nDCG@10", "Δ BM25", "p BM25", "Δ zero-shot", "p zero-shot", "judged@10"]
    rows = [header]

    def mark(row: dict[str, Any], base: str) -> str:
        return "†" if row.get(f"significant_win_vs_{base}") else ""

    for ds, entry in result["datasets"].items():
        for name, r in entry.get("runs", {}).items():
            rows.append(
                [
                    f"{ds} ({entry['n_queries']})",
                    name,
                    f"{r['nDCG@10']:.4f}",
                    cell(r.get(f"delta_vs_{BM25}"), "+.4f") + mark(r, BM25),
                    cell(r.get(f"p_vs_{BM25}"), ".3g"),
                    cell(r.get(f"delta_vs_{ZERO_SHOT}"), "+.4f") + mark(r, ZERO_SHOT),
                    cell(r.get(f"p_vs_{ZERO_SHOT}"), ".3g"),
                    f"{r['Judged@10']:.3f}",
                ]
            )
    lines = text_table(rows, left=2)
    tr = result.get("training", {})
    title = f"finetune {result['variant']}: {result['description']}"
    if tr:
        title += f"; {tr.get('steps')} steps" + (" (reused)" if tr.get("reused") else f", {tr.get('seconds')} s")
        title += ", stopped early by the time guard" if tr.get("stopped_early") else ""
    foot = f"† a significant win (p < {LEVEL}, paired t-test on nDCG@10) over that baseline"
    return "\n".join([title, *lines, foot])


# --- main ----------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=CHOICES, required=True)
    parser.add_argument(
        "--loss", choices=sorted({*LABEL_LOSSES, *SYNTHETIC_LOSSES}), default=None, help="of --variant scifact, distill"
    )
    parser.add_argument(
        "--method", choices=("pointwise", "likelihood"), default=None, help="of --variant scifact, distill"
    )
    parser.add_argument("--synthetic", type=Path, default=None, help="--variant distill: generate-queries' folder")
    parser.add_argument("--teacher-run", type=Path, default=None, help="--variant distill: the teacher's run")
    parser.add_argument("--max-minutes", type=float, default=50.0, help="training time budget (default 50)")
    parser.add_argument("--max-steps", type=int, default=None, help="optimiser steps (default: planned)")
    parser.add_argument("--epochs", type=int, default=1, help="at most this many epochs (default 1)")
    add_data_option(parser, "dl19/, dl21/, scifact/")
    parser.add_argument("--model", default=BASE["model"], help="the base model (default smollm2-135m)")
    parser.add_argument("--out", default=None, help="JSON (default benchmarks/results/finetune-{variant}[-{tag}].json)")
    parser.add_argument("--work", type=Path, default=None, help="training folders and runs (default results/finetune)")
    parser.add_argument(
        "--datasets",
        nargs="*",
        choices=DATASETS,
        default=list(DATASETS),
        help="evaluate on these (default both; none: train and the dev curve only)",
    )
    parser.add_argument(
        "--no-zero-shot",
        action="store_true",
        help="score only BM25 and the trained run (the caller compares with zero-shot runs of its own)",
    )
    parser.add_argument("--eval-queries", type=int, default=None, help="only the first N queries of each dataset")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default torch's; --smoke: 1)")
    parser.add_argument("--fresh", action="store_true", help="start the variant over (drop its checkpoints and model)")
    parser.add_argument(
        "--max-positives", type=int, default=None, help="positives a query at most (default 3 as in BASE; 0: all)"
    )
    parser.add_argument("--keep-best", action="store_true", help="model/ holds the best dev evaluation's weights")
    parser.add_argument("--learning-rate", type=float, default=None, help="of the adapter (default 3e-4 as in BASE)")
    parser.add_argument("--lora-r", type=int, default=None, help="the adapter's rank (default 16; alpha is 2r)")
    parser.add_argument(
        "--full", action="store_true", help="full fine-tuning: every weight trained, no LoRA adapter (so no --lora-r)"
    )
    parser.add_argument("--eval-every", type=int, default=None, help="steps between dev evaluations (default 10)")
    parser.add_argument(
        "--dev",
        choices=DEV_SETS,
        default=None,
        help=f"--variant distill: the dev curve's queries: DL21 dev (default) or {SCIFACT_DEV_QUERIES} SciFact train "
        "queries (a SciFact student's)",
    )
    parser.add_argument(
        "--max-length", type=int, default=None, help=f"tokens a prompt in training (default {MAX_LENGTH} as in BASE)"
    )
    parser.add_argument(
        "--group-size",
        type=int,
        default=None,
        help="documents a group (default 8 as in BASE; --loss nll: 1, its only size)",
    )
    parser.add_argument(
        "--loss-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a numeric option of the loss (e.g. sigma=5 for ranknet, temperature=0.5 for kl); repeatable",
    )
    parser.add_argument(
        "--tag", default=None, help="a name for a run that departs from its variant's settings: files get -TAG"
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a smoke run: 2 queries per dataset, no dev evaluation, --fresh, files under results/",
    )
    args = parser.parse_args(argv)
    if args.variant == "scifact":
        if args.loss is None or args.loss not in LABEL_LOSSES:
            parser.error(f"--variant scifact needs --loss, one of {', '.join(LABEL_LOSSES)}")
        args.method = args.method or "pointwise"
    elif args.variant == "distill":
        if args.loss not in SYNTHETIC_LOSSES:
            parser.error(f"--variant distill needs --loss, one of {', '.join(SYNTHETIC_LOSSES)}")
        if args.synthetic is None or (args.teacher_run is None and args.loss not in SOURCE_LOSSES):
            parser.error(
                f"--variant distill needs --synthetic, and --teacher-run for every loss but "
                f"{' and '.join(SOURCE_LOSSES)}"
            )
        if args.teacher_run is not None and args.loss in SOURCE_LOSSES:
            parser.error(f"--loss {args.loss} learns the source passages, not a teacher: leave out --teacher-run")
        args.method = args.method or "likelihood"
        args.synthetic = args.synthetic.resolve()
        args.teacher_run = args.teacher_run.resolve() if args.teacher_run else None
    elif args.loss is not None or args.method is not None:
        parser.error("--loss and --method are for --variant scifact and distill; variants a-e fix their own")
    if args.variant != "distill" and (args.synthetic is not None or args.teacher_run is not None or args.dev):
        parser.error("--synthetic, --teacher-run and --dev are for --variant distill")
    if args.max_minutes <= 0:
        parser.error("--max-minutes must be positive")
    if args.max_positives is not None and args.max_positives < 0:
        parser.error("--max-positives must be 0 (all) or more")
    if args.keep_best and args.variant in ("scifact", "zero-shot"):
        parser.error("--keep-best needs a dev split: DL21 and distill variants only")
    if args.eval_every is not None and (args.variant in ("scifact", "zero-shot") or args.smoke):
        parser.error("--eval-every needs a dev evaluation: not with --variant scifact or zero-shot, nor --smoke")
    # what TrainConfig would refuse once the record is started, refused now (its rules, its lists)
    from llmrerank.train.config import LOG_PROBABILITY_LOSSES, POSITIVE_ONLY_LOSSES

    if args.loss in POSITIVE_ONLY_LOSSES:
        if args.group_size not in (None, 1):
            parser.error(f"--loss {args.loss} reads the positive alone: --group-size 1 (its default)")
        args.group_size = 1
        if args.method not in LOG_PROBABILITY_LOSSES[args.loss]:
            parser.error(f"--loss {args.loss} needs --method {' or '.join(LOG_PROBABILITY_LOSSES[args.loss])}")
    elif args.group_size is not None and args.group_size < 2:
        parser.error(f"--group-size must be at least 2 for {args.loss or 'the variant'}'s loss (1: --loss nll only)")
    if args.tag is not None and not args.tag.replace("-", "").isalnum():
        parser.error("--tag: letters, digits and - only")
    args.departs = []  # from the shared settings, in words
    if args.max_positives is not None:
        args.departs.append("every positive" if args.max_positives == 0 else f"at most {args.max_positives} positives")
    if args.keep_best:
        args.departs.append("model/ = the best dev evaluation")
    if args.learning_rate is not None:
        if args.learning_rate <= 0:
            parser.error("--learning-rate must be positive")
        args.departs.append(f"learning rate {args.learning_rate:g}")
    if args.lora_r is not None:
        if args.lora_r <= 0:
            parser.error("--lora-r must be positive")
        args.departs.append(f"LoRA r{args.lora_r}/alpha{2 * args.lora_r}")
    if args.full:
        if args.lora_r is not None:
            parser.error("--full trains every weight: --lora-r has no adapter to size")
        args.departs.append("full fine-tuning")
    if args.group_size is not None and args.loss not in POSITIVE_ONLY_LOSSES:  # theirs is 1, not a departure
        args.departs.append(f"groups of {args.group_size}")
    if args.dev == "scifact":
        args.departs.append(f"dev: {SCIFACT_DEV_QUERIES} SciFact train queries")
    args.dev = args.dev or "dl21"
    if args.max_length is not None:
        if args.max_length < 32:
            parser.error("--max-length must be at least 32")
        args.departs.append(f"max_length {args.max_length}")
    if args.eval_every is not None:
        if args.eval_every < 0:
            parser.error("--eval-every must be 0 or more")
        args.departs.append(f"dev every {args.eval_every} steps" if args.eval_every else "dev only at the end")
    args.loss_options = {}
    for item in args.loss_option:
        key, eq, value = item.partition("=")
        try:
            if not eq or not key.strip():
                raise ValueError(item)
            args.loss_options[key.strip()] = float(value)
        except ValueError:
            parser.error(f"--loss-option {item!r}: KEY=NUMBER, e.g. sigma=5")
    if args.loss_options:
        args.departs.append("loss options " + ", ".join(f"{k}={v:g}" for k, v in args.loss_options.items()))
    training = (
        args.learning_rate,
        args.lora_r,
        args.loss_options or None,
        args.group_size,
        args.eval_every,
        args.full or None,
        args.max_length,
    )
    if args.variant == "zero-shot" and any(v is not None for v in training):
        parser.error(
            "--learning-rate, --lora-r, --loss-option, --group-size, --eval-every, --full and --max-length set "
            "training: --variant "
            "zero-shot trains nothing"
        )
    if args.loss_options:  # refused now, not after the record is started (TrainConfig checks them the same way)
        from llmrerank.train.config import _check_loss

        try:
            _check_loss(args.loss or VARIANTS[args.variant][1], args.loss_options)
        except (ValueError, TypeError) as e:
            parser.error(f"--loss-option: {e}")
    if args.departs and args.tag is None:
        parser.error(
            "--max-positives, --keep-best, --learning-rate, --lora-r, --full, --group-size, --eval-every, --dev, "
            "--max-length and --loss-option depart from the variant's settings: name the run with --tag"
        )
    base = args.variant + (f"-{args.method}-{args.loss}".replace("_", "-") if args.variant == "distill" else "")
    args.name = base + (f"-{args.tag}" if args.tag else "")
    args.data = args.data.resolve()
    if args.smoke:
        args.eval_queries = args.eval_queries or 2
        args.fresh = True
        if args.threads is None:
            args.threads = 1
    if args.work is None:
        args.work = REPO / "results" / ("finetune-smoke" if args.smoke else "finetune")
    args.work = args.work.resolve()
    if args.out is None:
        folder = REPO / "results" if args.smoke else RESULTS
        args.out = str(folder / f"finetune{'-smoke' if args.smoke else ''}-{args.name}.json")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    bench = Bench(args)
    bench.result["environment"]["torch_threads"] = torch.get_num_threads()
    bench.write()
    try:
        cfg, model_dir, new_model = None, None, False
        if args.variant == "zero-shot":
            from llmrerank.train.config import TrainConfig

            output_dir = str(args.work / args.variant)
            cfg = TrainConfig(**BASE, model=args.model, options=base_options("pointwise"), output_dir=output_dir)
        else:
            cfg = build_config(args, args.work)
            bench.result["config"] = json_round(cfg.to_dict())
            bench.write()
            cfg, model_dir, new_model = train(args, cfg, bench)
        bench.result["status"] = "evaluating"
        bench.write()
        zero_shot = ZeroShot(args.model)
        for name in args.datasets:
            evaluate_dataset(args, bench, name, cfg, model_dir, new_model, zero_shot, args.work)
    except BaseException as e:
        bench.result["status"] = "failed"
        bench.result["error"] = f"{type(e).__name__}: {e}"
        bench.write()
        raise
    return bench.finish(table(bench.result))


if __name__ == "__main__":
    main()
