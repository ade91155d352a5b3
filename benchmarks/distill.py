"""Distillation chain (issue 17): synthetic queries, a teacher's rerank, students, their evaluation, the preset.

Stages, each resumable (a stage whose output is complete is not run again) and recorded in one JSON with its
wall time (``benchmarks/results/distill-dl21.json``):

1. ``generate``: ``llmrerank generate-queries`` over the DL21 pool (few-shot examples from DL21 *train*; DL19's
   collection is never read). Started from ``benchmarks/results/synthetic-dl21/`` when that holds the queries of
   the same settings (each passage's query is a function of its seed, so nothing is generated anew; another
   folder with ``--start-from``).
2. ``teacher``: ``llmrerank rerank`` of every generated query's BM25 top 20 with the teacher (``--teacher`` and
   ``--teacher-method``; default the 0.5B likelihood), its run copied from ``--start-from`` when that scored the
   same queries. With ``--fuse-teacher MODEL:METHOD ...`` each of those ranks them too and the teacher's run is
   their fusion (each run min-max normalised per query, averaged).
3. ``filter``: the consistency filter (``generate-queries --teacher-run``): a query is kept when the teacher puts
   its source passage in its top ``--consistency-k``; counts for other k are recorded too.
4. ``students``: ``benchmarks/finetune.py --variant distill`` for each ``--students`` entry (METHOD:LOSS), with no
   test set: training and the DL21 dev curve only.
5. ``select``: the student with the best final DL21 dev nDCG@10, chosen before any test set is scored.
6. ``evaluate``: the chosen student on DL19 (BM25 top 20) and the 100-query SciFact sample (``finetune.py``
   with its datasets), against BM25 and the 135M and 0.5B zero-shot likelihood runs of the core benchmark
   (``benchmarks/results/zero_shot-{dl19,scifact}-*.json``, ``max_length`` 256): paired t-tests on the same
   queries.
7. ``timing``: seconds per query of the teacher (0.5B likelihood, float32 as in its DL19 figure) and the student,
   side by side in this process, on the first ``--timing-queries`` DL19 queries (``--timing-dtype float32 auto``:
   in each dtype in turn; ``auto`` is likelihood's default; ``--timing-compile``: both rankers with the ``compile``
   option).
8. ``ship``: the chosen student's adapter folder copied to ``src/llmrerank/presets/smollm2-135m-distilled``.

Usage (from the repository root)::

    python benchmarks/distill.py                          # every stage
    python benchmarks/distill.py --stages timing          # one stage (the earlier ones must be complete)
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import (
    DATA,
    REPO,
    RESULTS,
    STOPPED,
    Report,
    header,
    load_dataset,
    markdown_table,
    p_round,
    read_json,
    rel,
    rerank_to,
    student_rows,
    zero_shot_per_query,
)

STAGES = ("generate", "teacher", "filter", "students", "select", "evaluate", "timing", "ship")
PRESET = "smollm2-135m-distilled"
SHIPPED = REPO / "src" / "llmrerank" / "presets" / PRESET
# the core zero-shot benchmark's runs (BM25 top 20, max_length 256), per query: the baselines of the evaluation
ZERO_SHOT = {"zero_shot_135m": "smollm2-135m", "zero_shot_0.5b": "qwen2.5-0.5b"}
TOP_K = 20


def run(cmd: list[str]) -> float:
    """Run a command from the repository root, its output passed through; its wall seconds. Failure stops, and
    so does a command stopped at its --max-minutes (``--stage-minutes``), with the same status: run again."""
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    t = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO)
    if done.returncode == STOPPED:
        raise SystemExit(STOPPED)
    done.check_returncode()
    return round(time.perf_counter() - t, 1)


def bound(args: argparse.Namespace) -> list[str]:
    """``--max-minutes`` for a stage's command, from ``--stage-minutes``."""
    return [] if args.stage_minutes is None else ["--max-minutes", f"{args.stage_minutes:g}"]


def llmrerank(*args: str) -> list[str]:
    return [sys.executable, "-m", "llmrerank.cli", *args]


def parse_member(spec: str) -> tuple[str, str]:
    """``MODEL:METHOD`` of ``--fuse-teacher`` as (model, method)."""
    model, sep, method = spec.rpartition(":")
    if not sep or not model or not method:
        raise SystemExit(f"--fuse-teacher: expected MODEL:METHOD such as qwen2.5-1.5b:pointwise, got {spec!r}")
    return model, method


def members(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The teacher's rankers as (model, method): ``--teacher`` with ``--teacher-method``, then each
    ``--fuse-teacher``."""
    return [(args.teacher, args.teacher_method), *(parse_member(spec) for spec in args.fuse_teacher)]


def member_path(args: argparse.Namespace, model: str, method: str) -> Path:
    return args.synthetic / f"teacher-{method}-{model}.trec"


def teacher_path(args: argparse.Namespace) -> Path:
    """The run the filter and the students read: the one teacher's, or its members' fused run."""
    rankers = members(args)
    if len(rankers) == 1:
        return member_path(args, *rankers[0])
    return args.synthetic / ("teacher-fused-" + "+".join(f"{method}-{model}" for model, method in rankers) + ".trec")


def generate_args(args: argparse.Namespace) -> list[str]:
    return [
        "generate-queries",
        "--data",
        str(args.data / "dl21"),
        "--examples-split",
        "train",
        "--passages",
        str(args.passages),
        "--model",
        args.generator,
        "--out",
        str(args.synthetic),
        "--batch-size",
        "8",
    ]


def stage_generate(args: argparse.Namespace, bench: Report) -> None:
    seed = args.start_from
    if not (args.synthetic / "generated.jsonl").is_file() and (seed / "generated.jsonl").is_file():
        settings = (read_json(seed / "generate.json") or {}).get("settings", {})
        wanted = {"passages": args.passages, "model": args.generator}
        differ = {k: settings.get(k) for k, v in wanted.items() if settings.get(k) != v}
        if differ:
            raise SystemExit(
                f"{rel(str(seed))} holds queries of other settings ({differ}): give --start-from a folder of "
                f"these ({wanted}), or an empty one"
            )
        args.synthetic.mkdir(parents=True, exist_ok=True)
        for name in ("generated.jsonl", "generate.json"):
            shutil.copy(seed / name, args.synthetic / name)
        bench.result["stages"]["generate"] = {"started_from": rel(str(seed))}
    seconds = run(llmrerank(*generate_args(args), *bound(args)))
    report = read_json(args.synthetic / "report.json") or {}
    bench.result["stages"].setdefault("generate", {}).update(seconds=seconds, counts=report.get("counts"))


def seed_member(args: argparse.Namespace, model: str, method: str) -> bool:
    """Copy ``--start-from``'s run of this teacher when it scored these very queries (the same generated.jsonl,
    so the same queries and BM25 candidates) in the same dtype; a large run is stored gzip-compressed."""
    ours = member_path(args, model, method)
    theirs = args.start_from / ours.name
    packed, sidecar = (theirs.with_name(theirs.name + ext) for ext in (".gz", ".json"))
    same = [args.start_from / "generated.jsonl", args.synthetic / "generated.jsonl"]
    if ours.is_file() or not (theirs.is_file() or packed.is_file()) or not all(p.is_file() for p in same):
        return False
    if same[0].read_bytes() != same[1].read_bytes():
        return False
    if (read_json(sidecar) or {}).get("backend", {}).get("dtype") != args.teacher_dtype:
        return False
    source, unpack = (theirs, open) if theirs.is_file() else (packed, gzip.open)
    with unpack(source, "rb") as src, open(ours, "wb") as dst:
        shutil.copyfileobj(src, dst)
    shutil.copy(sidecar, ours.with_name(ours.name + ".json"))
    return True


def rerank_member(args: argparse.Namespace, model: str, method: str) -> dict[str, Any]:
    """One teacher's ``llmrerank rerank`` of every generated query's BM25 top 20 (resumed when cut short)."""
    from llmrerank.data import load_run

    out = member_path(args, model, method)
    options = [
        "--data",
        str(args.synthetic),
        "--split",
        "generated",
        "--run",
        str(args.synthetic / "bm25.trec"),
        "--top-k",
        str(TOP_K),
        "--model",
        model,
        "--method",
        method,
        "--dtype",
        args.teacher_dtype,
        "--quiet",
    ]
    seeded = seed_member(args, model, method)
    sidecar = rerank_to(out, [*options, *bound(args)])
    report = sidecar.get("report", {})
    last = report.get("queries")  # the queries the last invocation scored (a resumed run scored the rest before)
    return {
        "run": rel(str(out)),
        "command": "llmrerank rerank " + " ".join([*options, "--out", str(out)]),
        "copied_from": rel(str(args.start_from)) if seeded else None,
        "split": sidecar.get("split"),  # "train" holds every generated query until the filter rewrites it
        "queries": len(load_run(out)),
        "last_invocation": {"queries": last, "seconds": round(report.get("seconds", 0.0), 1)},
        "seconds_per_query": round(report["seconds"] / last, 2) if last else None,
        "dtype": sidecar.get("backend", {}).get("dtype"),
    }


def fuse_members(args: argparse.Namespace) -> dict[str, Any]:
    """The members' runs fused into the teacher's (``llmrerank.fusion.fuse_runs`` over the first member's top 20:
    each member's scores min-max normalised per query, averaged)."""
    from llmrerank.data import load_run, write_run
    from llmrerank.fusion import fuse_runs

    try:
        fused = fuse_runs([load_run(member_path(args, *m)) for m in members(args)], top_k=TOP_K)
    except ValueError as e:
        raise SystemExit(f"the teachers' runs cannot be fused ({e}): rerun the teacher stage") from None
    out = teacher_path(args)
    write_run(out, fused, tag="fused")
    how = f"mean of the members' per-query min-max normalised scores over the first member's top {TOP_K}"
    sidecar = {"status": "complete", "members": [f"{model}:{method}" for model, method in members(args)], "how": how}
    out.with_name(out.name + ".json").write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
    return {"run": rel(str(out)), "queries": len(fused), "how": how}


def stage_teacher(args: argparse.Namespace, bench: Report) -> None:
    entries = {f"{model}:{method}": rerank_member(args, model, method) for model, method in members(args)}
    if len(entries) == 1:
        bench.result["stages"]["teacher"] = next(iter(entries.values()))
        return
    bench.result["stages"]["teacher"] = {"members": entries, "fused": fuse_members(args)}


def stage_filter(args: argparse.Namespace, bench: Report) -> None:
    from llmrerank.data import load_run
    from llmrerank.train.synthetic import generated_sources

    teacher = load_run(teacher_path(args))
    sources = generated_sources(args.synthetic)
    ranks = {}
    for q, src in sources.items():
        order = [d for d, _ in sorted(teacher.get(q, []), key=lambda item: -item[1])[:TOP_K]]
        ranks[q] = order.index(src) + 1 if src in order else None
    kept_at = {k: sum(r is not None and r <= k for r in ranks.values()) for k in (1, 3, 5, 10, TOP_K)}
    seconds = run(
        llmrerank(
            *generate_args(args), "--teacher-run", str(teacher_path(args)), "--consistency-k", str(args.consistency_k)
        )
    )
    report = read_json(args.synthetic / "report.json") or {}
    bench.result["stages"]["filter"] = {
        "consistency_k": args.consistency_k,
        "seconds": seconds,
        "report": report.get("consistency"),
        "kept_if_k": kept_at,
        "source_in_teacher_top20": sum(r is not None for r in ranks.values()),
        "queries": len(sources),
    }


def parse_student(spec: str) -> tuple[str, str, float | None]:
    """``METHOD:LOSS`` or ``METHOD:LOSS@MINUTES`` (a training budget of its own instead of --max-minutes)."""
    head, _, minutes = spec.partition("@")
    method, _, loss = head.partition(":")
    return method, loss, float(minutes) if minutes else None


def student_tag(args: argparse.Namespace, spec: str) -> str | None:
    """finetune.py's --tag of a student: the run's --tag and the student's own budget, if any."""
    minutes = parse_student(spec)[2]
    parts = [args.tag, f"{minutes:g}min" if minutes is not None else None]
    return "-".join(p for p in parts if p) or None


def student_name(args: argparse.Namespace, spec: str) -> str:
    method, loss, _ = parse_student(spec)
    tag = student_tag(args, spec)
    return f"distill-{method}-{loss}".replace("_", "-") + (f"-{tag}" if tag else "")


def student_json(args: argparse.Namespace, spec: str) -> Path:
    return RESULTS / f"finetune-{student_name(args, spec)}.json"


def finetune_args(args: argparse.Namespace, spec: str, datasets: list[str]) -> list[str]:
    method, loss, minutes = parse_student(spec)
    tag = ["--tag", student_tag(args, spec)] if student_tag(args, spec) else []
    return [
        sys.executable,
        "benchmarks/finetune.py",
        "--variant",
        "distill",
        "--method",
        method,
        "--loss",
        loss,
        "--synthetic",
        str(args.synthetic),
        "--teacher-run",
        str(teacher_path(args)),
        "--epochs",
        str(args.epochs),
        "--max-minutes",
        str(minutes if minutes is not None else args.max_minutes),
        *tag,
        "--no-zero-shot",  # the zero-shot baselines are the core benchmark's runs (max_length 256)
        "--datasets",
        *datasets,
    ]


def final_dev(result: dict[str, Any]) -> float | None:
    dev = result.get("training", {}).get("dev", [])
    return dev[-1]["nDCG@10"] if dev else None


def stage_students(args: argparse.Namespace, bench: Report) -> None:
    entry = bench.result["stages"]["students"] = {"runs": {}}
    for spec in args.students:
        result = read_json(student_json(args, spec)) or {}
        config, minutes = result.get("config", {}), parse_student(spec)[2] or args.max_minutes
        made = {
            "data": config.get("data"),
            "teacher_run": config.get("teacher_run"),
            "epochs": config.get("epochs"),
            "max_minutes": result.get("time_bound", {}).get("max_minutes"),
        }
        wanted = {"data": str(args.synthetic), "teacher_run": str(teacher_path(args)), "epochs": args.epochs}
        wanted["max_minutes"] = minutes
        if result.get("status") == "complete" and made != wanted:
            raise SystemExit(
                f"{rel(str(student_json(args, spec)))} is a student of other settings ({made}, not {wanted}): "
                "name this run's students with --tag"
            )
        if result.get("status") != "complete":
            run(finetune_args(args, spec, []))
            result = read_json(student_json(args, spec)) or {}
        tr = result.get("training", {})
        entry["runs"][spec] = {
            "json": rel(str(student_json(args, spec))),
            "steps": tr.get("steps"),
            "groups": tr.get("groups", {}).get("groups"),
            "seconds": tr.get("seconds"),
            "dev_before": tr.get("dev_nDCG@10_before_training"),
            "dev_curve": tr.get("dev"),
            "dev_final": final_dev(result),
            "model_dir": tr.get("model_dir"),
        }
        bench.write()


def stage_select(args: argparse.Namespace, bench: Report) -> None:
    students = bench.result["stages"]["students"]["runs"]
    scored = {s: v["dev_final"] for s, v in students.items() if v.get("dev_final") is not None}
    if not scored:
        raise SystemExit("no student has a dev score: run the students stage first")
    best = max(scored, key=lambda s: (scored[s], -list(scored).index(s)))  # the first listed among equals
    bench.result["stages"]["select"] = {
        "by": "final DL21 dev nDCG@10 (11 queries, BM25 top 20)",
        "dev": scored,
        "chosen": best,
    }


def stage_evaluate(args: argparse.Namespace, bench: Report) -> None:
    chosen = bench.result["stages"]["select"]["chosen"]
    result = read_json(student_json(args, chosen)) or {}
    if set(result.get("datasets", {})) != {"dl19", "scifact"} or result.get("status") != "complete":
        run(finetune_args(args, chosen, ["dl19", "scifact"]))
        result = read_json(student_json(args, chosen)) or {}
    table = {}
    for name, entry in result["datasets"].items():
        qids = entry["query_ids"]
        per = {run_name: dict(zip(qids, values)) for run_name, values in entry["per_query_nDCG@10"].items()}
        for run_name, model in ZERO_SHOT.items():
            per[run_name] = zero_shot_per_query(name, model)
        rows = student_rows(per, qids, "finetuned")
        table[name] = {"queries": len(qids), "rerank": entry.get("rerank", {}), "runs": rows}
    bench.result["stages"]["evaluate"] = {
        "student": chosen,
        "datasets": table,
        "json": rel(str(student_json(args, chosen))),
        "datasets_files": {name: entry["files"]["finetuned"] for name, entry in result["datasets"].items()},
    }


def stage_timing(args: argparse.Namespace, bench: Report) -> None:
    """Seconds per query of the teacher and the student, side by side, in each of ``--timing-dtype`` in turn (the
    entry ``timing``; an earlier run's entry moves to ``timing-history``)."""
    from llmrerank import Reranker
    from llmrerank.pipeline import rerank

    chosen = bench.result["stages"]["select"]["chosen"]
    student = args.timing_student or str(REPO / bench.result["stages"]["students"]["runs"][chosen]["model_dir"])
    if args.timing_student is None and not Path(student).is_dir():
        raise SystemExit(f"the chosen student's folder {student} is gone: give --timing-student (the shipped preset "
                         "smollm2-135m-distilled holds its adapter)")
    data = load_dataset("dl19", args.data, TOP_K, args.timing_queries)
    first = " (the fused teacher's first member)" if args.fuse_teacher else ""
    compiled = ", compile" if args.timing_compile else ""
    makers = {
        dtype: (
            (f"teacher: {args.teacher} {args.teacher_method}, {dtype}{compiled}{first}",
             lambda d=dtype: Reranker(args.teacher_method, model=args.teacher, max_length=256, dtype=d,
                                      compile=args.timing_compile)),
            (f"student: {chosen}, {dtype}{compiled}",
             lambda d=dtype: Reranker(model=student, dtype=d, compile=args.timing_compile)),
        )
        for dtype in args.timing_dtype
    }  # fmt: skip
    rows: dict[str, dict[str, dict[str, Any]]] = {dtype: {} for dtype in makers}
    for dtype, pair in makers.items():  # one dtype after the other, the teacher then the student, in this process
        for name, make in pair:
            ranker = make()
            ranker.rank(
                data.queries[next(iter(data.queries))], [data.corpus[d] for d, _ in data.run[next(iter(data.run))][:2]]
            )
            t = time.perf_counter()
            for _ in rerank(ranker, data.queries, data.corpus, data.run, top_k=TOP_K, queries_per_batch=4):
                pass
            seconds = time.perf_counter() - t
            rows[dtype][name] = {
                "queries": len(data.queries),
                "seconds": round(seconds, 1),
                "seconds_per_query": round(seconds / len(data.queries), 2),
                "resolved_dtype": ranker.backend.dtype,
            }
            print(f"timing: {name}: {rows[dtype][name]}", file=sys.stderr, flush=True)
            del ranker
    stages = bench.result["stages"]
    if "timing" in stages:  # an earlier timing run is kept, not replaced
        stages["timing-history"] = [*stages.get("timing-history", []), stages.pop("timing")]
    dtypes = {}
    for dtype, runs in rows.items():
        teacher_s, student_s = (r["seconds_per_query"] for r in runs.values())
        dtypes[dtype] = {"runs": runs, "student_cost_share": round(student_s / teacher_s, 3)}
    stages["timing"] = {
        "dataset": "dl19",
        "top_k": TOP_K,
        "student": rel(student) if Path(student).is_dir() else student,
        "compile": args.timing_compile,
        "dtypes": dtypes,
    }


def stage_ship(args: argparse.Namespace, bench: Report) -> None:
    """Copy the chosen student's adapter into the package, its weights stored in float16 (half the file; they
    load into the float32 model as float32 again), then rerank DL19 with the preset loaded by name and compare it
    with the student's own run: what a user gets is what was measured, or the difference is recorded."""
    from safetensors.torch import load_file, save_file

    from llmrerank import Reranker, trained
    from llmrerank.data import load_run
    from llmrerank.evaluate import evaluate_runs, paired_p
    from llmrerank.pipeline import rerank_run
    from llmrerank.train.export import name_base_model

    chosen = bench.result["stages"]["select"]["chosen"]
    model_dir = REPO / bench.result["stages"]["students"]["runs"][chosen]["model_dir"]
    if trained.locate(PRESET).resolve() != SHIPPED.resolve():
        raise SystemExit(
            f"llmrerank is not installed from this checkout (pip install -e .): {PRESET} would load from "
            f"{trained.locate(PRESET)}, not {SHIPPED}"
        )
    SHIPPED.mkdir(parents=True, exist_ok=True)
    for stale in SHIPPED.glob("*"):
        if stale.name != "README.md":  # the licence note is written by hand
            stale.unlink()
    for name in ("llmrerank.json", "adapter_config.json"):
        shutil.copy(model_dir / name, SHIPPED / name)
    name_base_model(SHIPPED)  # a student trained before trained folders named it so records this machine's cache
    weights = load_file(str(model_dir / "adapter_model.safetensors"))
    save_file({k: v.half().contiguous() for k, v in weights.items()}, str(SHIPPED / "adapter_model.safetensors"))
    files = {p.name: p.stat().st_size for p in sorted(SHIPPED.iterdir())}
    entry = {"from": rel(str(model_dir)), "to": rel(str(SHIPPED)), "weights_dtype": "float16", "bytes": files}
    bench.result["stages"]["ship"] = entry
    bench.write()
    data = load_dataset("dl19", args.data, TOP_K)
    out = args.synthetic.parent / f"dl19-{PRESET}.trec"
    shipped = Reranker(model=PRESET, dtype="float32")  # as the student was evaluated
    report = rerank_run(shipped, data.queries, data.corpus, data.run, out, top_k=TOP_K, tag=PRESET)
    student_run = load_run(REPO / bench.result["stages"]["evaluate"]["datasets_files"]["dl19"])
    shipped_run = load_run(out)
    diffs = [abs(s - dict(student_run[q])[d]) for q in data.queries for d, s in shipped_run[q][:TOP_K]]
    ev = evaluate_runs(data.qrels, {"student": student_run, "shipped": shipped_run}, measures=["nDCG@10"])
    a = [ev.per_query["shipped"]["nDCG@10"][q] for q in ev.query_ids]
    b = [ev.per_query["student"]["nDCG@10"][q] for q in ev.query_ids]
    entry["dl19_check"] = {
        "run": rel(str(out)),
        "seconds_per_query": round(report.seconds / max(report.queries, 1), 2),
        "max_abs_score_difference": float(f"{max(diffs):.3g}"),
        "nDCG@10_shipped": round(ev.aggregate["shipped"]["nDCG@10"], 4),
        "nDCG@10_student": round(ev.aggregate["student"]["nDCG@10"], 4),
        "p": p_round(paired_p(a, b), 3),
    }


def summary(result: dict[str, Any]) -> str:
    lines = []
    ev = result["stages"].get("evaluate")
    if ev:
        rows = [["dataset", "run", "nDCG@10", "student − run", "p", "wins/losses"]]
        for name, entry in ev["datasets"].items():
            for run_name, r in entry["runs"].items():
                diff = "" if "p" not in r else f"{r['student_minus_this']:+.4f}"
                wl = "" if "p" not in r else f"{r['wins']}/{r['losses']}"
                rows.append(
                    [f"{name} ({entry['queries']})", run_name, f"{r['nDCG@10']:.4f}", diff, str(r.get("p", "")), wl]
                )
        lines += markdown_table(rows)
    for stage, entry in result["stages"].items():
        if stage != "evaluate":
            lines.append(f"{stage}: {json.dumps(entry)[:300]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--data", type=Path, default=DATA, help="dl19/, dl21/, scifact/ (default ../shared/data)")
    parser.add_argument(
        "--synthetic", type=Path, default=REPO / "runs" / "dl21-synthetic", help="generate-queries' folder"
    )
    parser.add_argument("--passages", type=int, default=200)
    parser.add_argument(
        "--start-from",
        type=Path,
        default=RESULTS / "synthetic-dl21",
        help="queries generated earlier (generated.jsonl, generate.json of the same settings; a teacher run) that "
        "an empty --synthetic folder starts from (default benchmarks/results/synthetic-dl21: 200 passages)",
    )
    parser.add_argument("--generator", default="qwen2.5-0.5b")
    parser.add_argument("--teacher", default="qwen2.5-0.5b")
    parser.add_argument("--teacher-method", default="likelihood")
    parser.add_argument("--teacher-dtype", default="bfloat16", help="of the teacher's rerank (default bfloat16)")
    parser.add_argument(
        "--fuse-teacher",
        nargs="+",
        default=[],
        metavar="MODEL:METHOD",
        help="more rankers whose runs are fused with the teacher's (each min-max normalised per query, averaged)",
    )
    parser.add_argument("--consistency-k", type=int, default=3)
    parser.add_argument(
        "--students",
        nargs="+",
        default=["likelihood:kl", "likelihood:ranknet", "likelihood:margin_mse", "pointwise:kl"],
        help="METHOD:LOSS[@MINUTES] of each student (default: likelihood with kl, ranknet, margin_mse; pointwise "
        "with kl; @MINUTES: a training budget of its own)",
    )
    parser.add_argument("--epochs", type=int, default=2, help="at most this many epochs a student (default 2)")
    parser.add_argument("--max-minutes", type=float, default=12.0, help="training budget a student (default 12)")
    parser.add_argument(
        "--stage-minutes",
        type=float,
        default=None,
        help="bound the generate and teacher stages (their commands' --max-minutes): one stopped there ends this "
        "run with status 3, and the same command goes on (default: no bound)",
    )
    parser.add_argument("--timing-queries", type=int, default=8)
    parser.add_argument("--timing-dtype", nargs="+", default=["float32"], choices=("float32", "bfloat16", "auto"),
                        help="of both rankers in the timing stage, each in turn (default float32, as recorded)")
    parser.add_argument("--timing-compile", action="store_true",
                        help="both rankers of the timing stage with the compile option (fused feed-forward and norms)")
    parser.add_argument("--timing-student", default=None,
                        help="the student the timing stage runs (default the chosen student's folder)")
    parser.add_argument(
        "--tag", default=None, help="names the students of another run of the chain (their files get -TAG)"
    )
    parser.add_argument("--out", type=Path, default=None, help="the JSON (default results/distill-dl21[-TAG].json)")
    args = parser.parse_args(argv)
    if args.stage_minutes is not None and not args.stage_minutes > 0:
        parser.error(f"--stage-minutes must be a positive number of minutes, got {args.stage_minutes:g}")
    members(args)  # a --fuse-teacher that is not MODEL:METHOD is refused before any stage runs
    if args.out is None:
        args.out = RESULTS / f"distill-dl21{'-' + args.tag if args.tag else ''}.json"
    args.data, args.synthetic = args.data.resolve(), args.synthetic.resolve()
    previous = read_json(args.out) or {}
    bench = Report(args.out, {**header("distill", issue=17), "stages": previous.get("stages", {})})
    # each stage's entry is its last run's; the commands that ran them, oldest first
    bench.result["invocations"] = [*previous.get("invocations", []), bench.result["command"]]
    bench.result["settings"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "out"}
    stages = {name: globals()[f"stage_{name}"] for name in STAGES}
    for name in STAGES:
        if name in args.stages:
            print(f"== stage {name}", file=sys.stderr, flush=True)
            t = time.perf_counter()
            stages[name](args, bench)
            bench.result["stages"].setdefault(name, {})["stage_wall_seconds"] = round(time.perf_counter() - t, 1)
            bench.write()
    return bench.finish(summary(bench.result))


if __name__ == "__main__":
    main()
