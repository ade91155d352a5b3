"""The CLI end to end on the tiny fixture with a tiny model saved as a Hugging Face folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from conftest import TINY, needs
from llmrerank.cli import main
from llmrerank.data import load_run


def test_retrieve_rerank_evaluate(tmp_path, tiny_model_dir, capsys):
    bm25 = tmp_path / "bm25.trec"
    assert main(["retrieve", "--data", str(TINY), "--top-k", "5", "--out", str(bm25)]) == 0
    run = load_run(bm25)
    assert len(run) == 3 and all(len(v) == 5 for v in run.values())

    out = tmp_path / "ql.trec"
    args = ["rerank", "--data", str(TINY), "--run", str(bm25), "--top-k", "3", "--method", "likelihood"]
    args += ["--model", str(tiny_model_dir), "--max-length", "128", "--batch-size", "2", "--out", str(out)]
    assert main([*args, "--quiet"]) == 0
    reranked = load_run(out)
    for qid, items in run.items():
        assert {d for d, _ in reranked[qid][:3]} == {d for d, _ in items[:3]}
        assert [d for d, _ in reranked[qid][3:]] == [d for d, _ in items[3:]]
    assert "docs/s" in capsys.readouterr().err
    meta = json.loads((tmp_path / "ql.trec.json").read_text())
    assert meta["ranker"]["max_length"] == 128 and meta["input_run"] == str(bm25)
    # no --dtype: likelihood's own default, and what it became on this machine
    from llmrerank.backends.hf import native_bf16

    assert meta["backend"]["dtype"] == "auto"
    assert meta["backend"]["resolved_dtype"] == ("bfloat16" if native_bf16("cpu") else "float32")

    assert main(["evaluate", "--data", str(TINY), "--json", str(bm25), str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["runs"] == ["bm25.trec", "ql.trec"] and result["baseline"] == "bm25.trec"
    assert result["num_queries"] == 3 and 0.0 <= result["aggregate"]["ql.trec"]["nDCG@10"] <= 1.0
    assert result["p_values"]["bm25.trec"]["nDCG@10"] is None
    assert main(["evaluate", "--data", str(TINY), "--metrics", "nDCG@10", "P@2", "--", str(bm25)]) == 0
    table = capsys.readouterr().out
    assert "nDCG@10" in table and "P" in table

    needs("matplotlib", "evaluate --plot")  # the checks above have passed by now
    png = tmp_path / "per-query.png"
    assert main(["evaluate", "--data", str(TINY), "--per-query", "--plot", str(png), str(bm25), str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    per_query = lines[lines.index("") + 1 :]
    assert per_query[0].split() == ["query", "bm25.trec", "ql.trec", "Δ", "ql.trec"]
    rows = {line.split()[0]: line.split()[1:] for line in per_query[2:]}
    assert set(rows) == {"q1", "q2", "q3"}
    for bm, ql, delta in rows.values():
        assert float(delta) == pytest.approx(float(ql) - float(bm), abs=2e-4)
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"


def test_pointwise_options_and_errors(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "pw.trec"
    base = ["rerank", "--data", str(TINY), "--run", str(TINY / "run.trec"), "--model", str(tiny_model_dir)]
    assert main([*base, "--normalisation", "yes_logit", "--tokens", "true_false", "--out", str(out), "--quiet"]) == 0
    meta = json.loads((tmp_path / "pw.trec.json").read_text())
    assert meta["ranker"]["normalisation"] == "yes_logit" and meta["ranker"]["tokens"] == ["true", "false"]
    assert meta["backend"]["dtype"] == meta["backend"]["resolved_dtype"] == "float32"  # the yes/no score's default

    capsys.readouterr()
    assert main([*base, "--reduction", "sum", "--out", str(out)]) == 2
    assert "--reduction does not apply to --method pointwise" in capsys.readouterr().err
    assert main(["rerank", "--data", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "nope" in capsys.readouterr().err
    assert main([*base, "--model", "no-such-model", "--out", str(out)]) == 2
    assert "never downloaded" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--method", "listwize", "--out", str(out)])


def test_resume_flag(tmp_path, tiny_model_dir):
    out = tmp_path / "r.trec"
    base = ["rerank", "--data", str(TINY), "--model", str(tiny_model_dir), "--out", str(out), "--quiet"]
    base += ["--run", str(TINY / "run.trec"), "--method", "likelihood"]
    assert main(base) == 0
    first = out.read_text()
    assert main([*base, "--resume"]) == 0
    assert out.read_text() == first
    meta = json.loads((tmp_path / "r.trec.json").read_text())
    assert meta["report"]["queries_skipped_resume"] == 3 and meta["report"]["queries"] == 0
    assert set(meta["report"]["per_query"]) == {"q1", "q2", "q3"}  # the kept queries' accounting survives


def test_max_minutes_stops_with_status_3_and_says_how_to_go_on(tmp_path, tiny_model_dir, capsys):
    out, whole = tmp_path / "r.trec", tmp_path / "whole.trec"
    base = ["rerank", "--data", str(TINY), "--model", str(tiny_model_dir), "--quiet", "--run", str(TINY / "run.trec")]
    base += ["--method", "likelihood", "--queries-per-batch", "1"]
    assert main([*base, "--out", str(whole)]) == 0
    capsys.readouterr()
    assert main([*base, "--out", str(out), "--max-minutes", "1e-9"]) == 3
    err = capsys.readouterr().err
    assert "stopped at --max-minutes 1e-09 (1 queries, " in err and "go on with: llmrerank rerank" in err
    assert "stopped at the time bound with 2 queries left" in err
    assert err.rstrip().endswith("--resume") and not out.exists()
    assert main([*base, "--out", str(out), "--max-minutes", "1e-9", "--resume"]) == 3  # one query a call
    assert main([*base, "--out", str(out), "--max-minutes", "60", "--resume"]) == 0
    assert out.read_text() == whole.read_text()
    with pytest.raises(SystemExit):
        main([*base, "--out", str(out), "--max-minutes", "0"])


def test_console_script_runs():
    exe = shutil.which("llmrerank")
    cmd = [exe] if exe else [sys.executable, "-m", "llmrerank.cli"]
    result = subprocess.run([*cmd, "--help"], capture_output=True, text=True, check=True)
    for sub in ("retrieve", "rerank", "evaluate", "demo"):
        assert sub in result.stdout


def test_train_command_writes_a_model_the_rerank_command_loads(tmp_path, tiny_model_dir, capsys):
    needs("peft", "LoRA training")
    config = tmp_path / "train.toml"
    config.write_text(
        f'model = "{tiny_model_dir}"\ndata = "{TINY}"\nsplit = "test"\nrun = "{TINY / "run.trec"}"\n'
        "group_size = 3\ntop_k = 4\nmax_length = 96\ngroups_per_batch = 1\ngrad_accum = 2\nmax_steps = 4\n"
        'learning_rate = 3e-2\ndev_split = "test"\neval_every = 1\nkeep_best = true\n'
    )
    assert main(["train", "--config", str(config), "--output-dir", str(tmp_path / "run"), "--quiet"]) == 0
    out = capsys.readouterr().out.splitlines()
    dev = [json.loads(line) for line in out if line.startswith("{")]
    assert [e["step"] for e in dev] == [1, 2, 3, 4]
    best = max(dev, key=lambda e: (e["dev_nDCG@10"], -e["step"]))
    assert f"keep_best: the weights of step {best['step']} (dev nDCG@10 {best['dev_nDCG@10']:.4f})" in out
    model = tmp_path / "run" / "model"
    assert out[-1] == f"trained model: {model} (use --model {model} --method pointwise)"
    reranked = tmp_path / "ft.trec"
    args = ["rerank", "--data", str(TINY), "--run", str(TINY / "run.trec"), "--top-k", "3", "--model", str(model)]
    assert main([*args, "--method", "pointwise", "--out", str(reranked), "--quiet"]) == 0
    assert len(load_run(reranked)) == 3
