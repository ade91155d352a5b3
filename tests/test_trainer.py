"""The trainer on tiny models: it optimises the inference score, resumes exactly after kill -9, and its
output folder restores what was trained."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY, needs
from llmrerank import Reranker
from llmrerank.train.config import TrainConfig
from llmrerank.train.trainer import Trainer

needs("peft", "LoRA training")

QUERY = "how do honey bees make honey"
DOCS = ["honey bees make honey from flower nectar", "why does a volcano erupt", "the cat sat on the mat"]


def _config(model_dir: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        model=str(model_dir),
        data=str(TINY),
        split="test",
        run=str(TINY / "run.trec"),
        group_size=3,
        top_k=4,
        max_length=96,
        groups_per_batch=1,
        grad_accum=2,
        max_steps=6,
        save_every=2,
        learning_rate=5e-3,
        output_dir=str(out),
        seed=0,
    )
    base.update(kw)
    return TrainConfig.from_dict(base)


def test_training_lowers_the_loss_of_the_inference_score(tiny_model_dir, tmp_path):
    trainer = Trainer(_config(tiny_model_dir, tmp_path / "run", max_steps=8, grad_accum=1, groups_per_batch=5))
    groups = trainer.groups
    with torch.no_grad():
        before = trainer.batch_loss(groups).item()
    # the loss goes through the ranker's own score_encoded: the same numbers inference gives
    items = [e for g in groups[:1] for e in trainer.ranker.encode(g.query, g.docs)]
    train_scores = trainer.ranker.score_encoded(items, grad=True).detach()
    assert train_scores.tolist() == pytest.approx(trainer.ranker.score(groups[0].query, groups[0].docs), abs=1e-5)
    trainer.train(progress=False)
    with torch.no_grad():
        after = trainer.batch_loss(groups).item()
    assert after < before - 0.1
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == list(range(1, 9)) and all(e["loss"] > 0 for e in log)


def test_trained_folder_restores_the_trained_ranker(tiny_model_dir, tmp_path):
    trainer = Trainer(_config(tiny_model_dir, tmp_path / "run", max_steps=3, dev_split="test"))
    result = trainer.train(progress=False)
    assert result.dev and 0.0 <= result.dev[-1]["dev_nDCG@10"] <= 1.0
    meta = json.loads((result.model_dir / "llmrerank.json").read_text())
    assert meta["method"] == "pointwise" and meta["weights"] == "lora" and meta["options"]["normalisation"] == "logit"
    trainer.backend.model.eval()
    expected = trainer.ranker.score(QUERY, DOCS)
    restored = Reranker("pointwise", model=str(result.model_dir), dtype="float32")
    assert restored.normalisation == "logit" and restored.max_length == 96
    assert restored.score(QUERY, DOCS) == pytest.approx(expected, abs=1e-4)
    base = Reranker("pointwise", model=str(tiny_model_dir), normalisation="logit", max_length=96, dtype="float32")
    assert base.score(QUERY, DOCS) != pytest.approx(expected, abs=1e-4)  # training changed the scores
    with pytest.raises(ValueError, match="trained for method 'pointwise'"):
        Reranker("likelihood", model=str(result.model_dir))


def test_lora_wrapping_and_loading_show_no_deprecation_warning_from_peft(tiny_model_dir, tmp_path):
    # peft reads model.is_gradient_checkpointing, which transformers 5 deprecates: a FutureWarning at every
    # training start and every load of a trained folder (the shipped distilled preset too), nothing a user can fix
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = Trainer(_config(tiny_model_dir, tmp_path / "run", max_steps=1)).train(progress=False)
        Reranker("pointwise", model=str(result.model_dir), dtype="float32")
    assert not [str(w.message) for w in caught if "is_gradient_checkpointing" in str(w.message)]


def test_the_adapter_config_names_the_base_model_as_the_record_does(tiny_model_dir, tmp_path, monkeypatch):
    # the base given by a relative path: peft would record that spelling, which means nothing elsewhere
    monkeypatch.chdir(tiny_model_dir.parent)
    config = _config(Path(tiny_model_dir.name), tmp_path / "run", max_steps=1)
    result = Trainer(config).train(progress=False)
    record = json.loads((result.model_dir / "llmrerank.json").read_text())
    adapter = json.loads((result.model_dir / "adapter_config.json").read_text())
    assert record["base_model"] == str(tiny_model_dir.resolve())
    assert adapter["base_model_name_or_path"] == record["base_model"]


def test_dense_head_and_likelihood_training(tiny_model_dir, tmp_path):
    dense = Trainer(_config(tiny_model_dir, tmp_path / "dense", head="dense", max_steps=2, loss="ranknet"))
    result = dense.train(progress=False)
    dense.backend.model.eval()
    assert (result.model_dir / "head.safetensors").is_file()
    restored = Reranker("pointwise", model=str(result.model_dir), dtype="float32")
    assert restored.dense is not None and restored.dense.trained
    assert restored.score(QUERY, DOCS) == pytest.approx(dense.ranker.score(QUERY, DOCS), abs=1e-4)

    ql = Trainer(_config(tiny_model_dir, tmp_path / "ql", method="likelihood", max_steps=2, lora=False))
    result = ql.train(progress=False)
    ql.backend.model.eval()
    restored = Reranker("likelihood", model=str(result.model_dir), dtype="float32")
    assert restored.score(QUERY, DOCS) == pytest.approx(ql.ranker.score(QUERY, DOCS), abs=1e-4)
    # the folder's method is the default, in the API and on the command line
    implied = Reranker(model=str(result.model_dir), dtype="float32")
    assert implied.method == "likelihood" and implied.score(QUERY, DOCS) == restored.score(QUERY, DOCS)
    from llmrerank.cli import main

    out = tmp_path / "ql.trec"
    assert main(["rerank", "--data", str(TINY), "--model", str(result.model_dir), "--out", str(out), "--quiet"]) == 0
    assert json.loads(out.with_name("ql.trec.json").read_text())["ranker"]["method"] == "likelihood"
    with pytest.raises(TypeError, match="name a method .*only a trained model .a folder written by llmrerank train"):
        Reranker(model=str(tiny_model_dir))


SCRIPT = """
import os, signal, sys
from llmrerank.train.config import TrainConfig
from llmrerank.train.trainer import Trainer
config = TrainConfig.from_dict({config!r})
kill_at = int(sys.argv[1])
def killer(trainer, step):
    if step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
Trainer(config, callbacks=[killer]).train(progress=False)
"""


def test_resume_after_kill_9_matches_an_uninterrupted_run(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    straight = Trainer(_config(tiny_model_dir, tmp_path / "straight"))
    straight.train(progress=False)

    config = _config(tiny_model_dir, tmp_path / "killed").to_dict()
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(config=config))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    killed = subprocess.run([sys.executable, str(script), "3"], env=env, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    checkpoints = sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir())
    assert checkpoints == ["step-00000002"]  # step 3 ran but was never saved
    resumed = subprocess.run([sys.executable, str(script), "0"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr and "step 2 of 6" in resumed.stderr

    a = load_file(str(tmp_path / "straight" / "checkpoints" / "step-00000006" / "trainable.safetensors"))
    b = load_file(str(tmp_path / "killed" / "checkpoints" / "step-00000006" / "trainable.safetensors"))
    assert set(a) == set(b) and len(a) > 0
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=0)
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in a.items() if "lora_B" in k)  # it did learn
    log = [json.loads(line) for line in (tmp_path / "killed" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2, 3, 4, 5, 6]  # the lost step 3 is logged once, from the rerun


def test_config_files(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('model = "smollm2-135m"\nloss = "listnet"\nmax_steps = 10\n[loss_options]\ntemperature = 2.0\n')
    c = TrainConfig.load(toml, output_dir="elsewhere", max_steps=None)
    assert (c.loss, c.max_steps, c.output_dir, c.loss_options) == ("listnet", 10, "elsewhere", {"temperature": 2.0})
    needs("yaml", "YAML configs")
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("model: smollm2-135m\nhead: dense\n")
    assert TrainConfig.load(yaml_file).options["head"] == "dense"
    bad = tmp_path / "bad.toml"
    bad.write_text("learning_rat = 1e-4\n")
    with pytest.raises(ValueError, match="unknown config key.*learning_rat"):
        TrainConfig.load(bad)
    with pytest.raises(ValueError, match="group_size"):
        TrainConfig(group_size=1)
    with pytest.raises(ValueError, match="method"):
        TrainConfig(method="listwise")


def test_resume_refuses_another_config_and_no_resume_starts_over(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    Trainer(_config(tiny_model_dir, out, max_steps=2)).train(progress=False)
    with pytest.raises(ValueError, match="other learning_rate"):
        Trainer(_config(tiny_model_dir, out, max_steps=2, learning_rate=1e-3)).train(progress=False)
    other = Trainer(_config(tiny_model_dir, out, max_steps=1, learning_rate=1e-3, save_every=1))
    result = other.train(resume=False, progress=False)
    assert result.resumed_from == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000001"]  # the old ones are gone
    assert json.loads((out / "config.json").read_text())["learning_rate"] == 1e-3


def test_a_callback_can_stop_training_cleanly(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    trainer = Trainer(_config(tiny_model_dir, out, save_every=5), callbacks=[lambda trainer, step: step == 2])
    result = trainer.train(progress=False)
    assert result.steps == 2 and trainer.total_steps == 6
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002"]
    assert json.loads((result.model_dir / "llmrerank.json").read_text())["trained_with"]["steps"] == 2
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [1, 2]


def _checkpointing(model) -> bool:
    # transformers 5 renamed the flag; 4.x has only the old name
    if hasattr(model, "is_activation_checkpointing"):
        return bool(model.is_activation_checkpointing)
    return bool(model.is_gradient_checkpointing)


@pytest.mark.parametrize("lora", [True, False])
def test_gradient_checkpointing_recomputes_the_same_loss_and_gradients(tiny_model_dir, tmp_path, lora):
    def loss_and_grads(checkpointing: bool):
        cfg = _config(tiny_model_dir, tmp_path / str(checkpointing), lora=lora, gradient_checkpointing=checkpointing)
        trainer = Trainer(cfg)
        base = trainer.backend.model.get_base_model() if lora else trainer.backend.model
        trainer.backend.model.train()
        loss = trainer.batch_loss(trainer.groups[:2])
        loss.backward()
        named = {n: p.grad.clone() for n, p in trainer.backend.model.named_parameters() if p.grad is not None}
        return _checkpointing(base), loss.item(), named

    on, loss_on, grads_on = loss_and_grads(True)
    off, loss_off, grads_off = loss_and_grads(False)
    assert on and not off
    assert loss_on == pytest.approx(loss_off, abs=1e-6)
    assert grads_on.keys() == grads_off.keys() and len(grads_on) > 0
    for name, grad in grads_on.items():
        torch.testing.assert_close(grad, grads_off[name], atol=1e-6, rtol=1e-5, msg=name)


def test_set_checkpointing_switches_both_ways(tiny_model_dir, tmp_path):
    from llmrerank.backends.hf import set_checkpointing

    trainer = Trainer(_config(tiny_model_dir, tmp_path / "run"))
    base = trainer.backend.model.get_base_model()
    set_checkpointing(trainer.backend.model, True)
    assert _checkpointing(base)
    set_checkpointing(trainer.backend.model, False)
    assert not _checkpointing(base)


def test_bf16_autocast_setting():
    from llmrerank.train.setup import bf16_enabled, native_bf16

    assert TrainConfig(bf16_autocast="auto").bf16_autocast == "auto"
    with pytest.raises(ValueError, match='bf16_autocast must be true, false or "auto"'):
        TrainConfig(bf16_autocast="yes")
    assert bf16_enabled(True, "cpu") is True and bf16_enabled(False, "cpu") is False
    assert bf16_enabled("auto", "cpu") == native_bf16("cpu")
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():  # Linux: the CPU's own flags say whether it has bfloat16 instructions
        flags = set(cpuinfo.read_text().split())
        assert native_bf16("cpu") == bool({"avx512_bf16", "amx_bf16"} & flags)


def test_bf16_autocast_changes_the_arithmetic_not_the_result(tiny_model_dir, tmp_path):
    losses = {}
    for setting in (False, True):
        trainer = Trainer(_config(tiny_model_dir, tmp_path / str(setting), bf16_autocast=setting))
        with torch.no_grad():
            losses[setting] = trainer.batch_loss(trainer.groups[:3]).item()
    assert losses[True] != losses[False]  # bfloat16 matmuls round differently
    assert losses[True] == pytest.approx(losses[False], rel=0.05)


def test_keep_best_writes_the_weights_of_the_best_dev_evaluation(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "run"
    config = _config(
        tiny_model_dir,
        out,
        dev_split="test",
        eval_every=1,
        save_every=1,
        keep_checkpoints=10,
        max_steps=6,
        learning_rate=3e-2,
        keep_best=True,
    )
    trainer = Trainer(config)
    result = trainer.train(progress=False)
    dev = [
        (e["step"], e["dev_nDCG@10"])
        for e in map(json.loads, (out / "log.jsonl").read_text().splitlines())
        if "dev_nDCG@10" in e
    ]
    assert [s for s, _ in dev] == [1, 2, 3, 4, 5, 6]  # every step; the last is the final evaluation
    best_step, best = max(dev, key=lambda sv: (sv[1], -sv[0]))  # the earliest of the best
    assert result.best == {"step": best_step, "nDCG@10": best}
    assert best_step < 6, "the tiny run's dev nDCG@10 should peak before its end for this test to bite"
    # the trainer now holds the best step's weights, and model/ was written from them
    saved = load_file(str(out / "checkpoints" / f"step-{best_step:08d}" / "trainable.safetensors"))
    for name, value in trainer.trainable_state().items():
        torch.testing.assert_close(value, saved[name], atol=0, rtol=0)
    meta = json.loads((result.model_dir / "llmrerank.json").read_text())["trained_with"]
    assert (meta["steps"], meta["run_steps"], meta["selected_by"]) == (best_step, 6, "best dev nDCG@10")
    trainer.backend.model.eval()
    restored = Reranker("pointwise", model=str(result.model_dir), dtype="float32")
    assert restored.score(QUERY, DOCS) == pytest.approx(trainer.ranker.score(QUERY, DOCS), abs=1e-4)

    with pytest.raises(ValueError, match="keep_best.*dev_split"):
        Trainer(_config(tiny_model_dir, tmp_path / "nodev", keep_best=True))


def test_keep_best_survives_kill_9(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    settings = dict(dev_split="test", eval_every=1, save_every=2, learning_rate=3e-2, keep_best=True)
    straight = Trainer(_config(tiny_model_dir, tmp_path / "straight", **settings)).train(progress=False)
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(config=_config(tiny_model_dir, tmp_path / "killed", **settings).to_dict()))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), *sys.path])}
    killed = subprocess.run([sys.executable, str(script), "3"], env=env, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr  # after step 3; the last checkpoint is step 2
    assert (tmp_path / "killed" / "best" / "best.json").is_file()
    resumed = subprocess.run([sys.executable, str(script), "0"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0 and "step 2 of 6" in resumed.stderr, resumed.stderr
    a = json.loads((straight.model_dir / "llmrerank.json").read_text())["trained_with"]
    b = json.loads((tmp_path / "killed" / "model" / "llmrerank.json").read_text())["trained_with"]
    assert a == b and a["steps"] < 6
    wa = load_file(str(straight.model_dir / "adapter_model.safetensors"))
    wb = load_file(str(tmp_path / "killed" / "model" / "adapter_model.safetensors"))
    assert set(wa) == set(wb)
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], atol=1e-5, rtol=0)


def test_a_family_trains_and_is_recorded_in_the_folder_and_the_run_sidecar(tiny_model_dir, tmp_path):
    """A model family is an option: the trained folder records it, restoring the folder restores it (and its
    score, not the training default's), and a run on the folder records it in its sidecar."""
    from llmrerank.cli import main

    family = {"family": "qwen3-reranker", "instruction": "judge the passage"}
    trainer = Trainer(_config(tiny_model_dir, tmp_path / "run", max_steps=2, options=family))
    assert trainer.ranker.options.normalisation == "pair_softmax"  # the family's, not TRAIN_DEFAULTS' logit
    result = trainer.train(progress=False)
    meta = json.loads((result.model_dir / "llmrerank.json").read_text())
    assert meta["options"]["family"] == "qwen3-reranker" and meta["options"]["instruction"] == "judge the passage"
    trainer.backend.model.eval()
    restored = Reranker("pointwise", model=str(result.model_dir), dtype="float32")
    assert (restored.options.family, restored.options.instruction) == ("qwen3-reranker", "judge the passage")
    assert restored.score(QUERY, DOCS) == pytest.approx(trainer.ranker.score(QUERY, DOCS), abs=1e-4)
    out = tmp_path / "out.trec"
    args = ["rerank", "--data", str(TINY), "--model", str(result.model_dir), "--method", "pointwise"]
    assert main([*args, "--top-k", "3", "--out", str(out), "--quiet"]) == 0
    ranker = json.loads(out.with_name("out.trec.json").read_text())["ranker"]
    assert (ranker["family"], ranker["normalisation"]) == ("qwen3-reranker", "pair_softmax")


def test_ranknet_on_the_teachers_order(tiny_model_dir, tmp_path):
    """target = "teacher" with teacher_mode = "order": the loss's targets are minus the teacher's ranks."""
    from llmrerank.data import load_beir, load_run
    from llmrerank.train.losses import ranknet

    # a teacher that orders every candidate and judged document of a query in reverse
    qrels = load_beir(TINY, split="test").qrels
    lines = []
    for qid, items in load_run(TINY / "run.trec").items():
        docs = [d for d, _ in items] + [d for d in qrels.get(qid, {}) if d not in dict(items)]
        lines += [f"{qid} Q0 {d} {r} {-r} teacher" for r, d in enumerate(reversed(docs), start=1)]
    teacher = tmp_path / "teacher.trec"
    teacher.write_text("\n".join(lines) + "\n")
    cfg = _config(
        tiny_model_dir,
        tmp_path / "run",
        loss="ranknet",
        target="teacher",
        teacher_run=str(teacher),
        teacher_mode="order",
        max_steps=2,
    )
    trainer = Trainer(cfg)
    groups = trainer.groups[:2]
    assert all(g.teacher is not None for g in groups)
    assert [list(g.teacher) for g in groups] != [list(g.labels) for g in groups]  # not the qrels' labels
    items = [e for g in groups for e in trainer.ranker.encode(g.query, g.docs)]
    with torch.no_grad():
        scores = trainer.ranker.score_encoded(items).view(len(groups), -1)
        want = ranknet(scores, torch.tensor([g.teacher for g in groups]))
        assert trainer.batch_loss(groups).item() == pytest.approx(want.item(), abs=1e-5)
    ranks = {}
    for line in teacher.read_text().splitlines():
        qid, _, doc, rank, *_ = line.split()
        ranks[(qid, doc)] = int(rank)
    for g in groups:  # minus each document's rank in the teacher run
        assert list(g.teacher) == [-float(ranks[(g.qid, d)]) for d in g.doc_ids]
    result = trainer.train(progress=False)
    assert json.loads((result.model_dir / "llmrerank.json").read_text())["trained_with"]["loss"] == "ranknet"


@pytest.mark.parametrize("loss", ["kl", "margin_mse"])
def test_kl_and_margin_mse_learn_the_teachers_scores(tiny_model_dir, tmp_path, loss):
    """target = "teacher" with its scores (the default mode): each group's targets are the teacher run's own
    scores of its documents, the loss is the named distillation loss of the inference scores against them, and
    training moves the student towards them."""
    from llmrerank.data import load_beir, load_run
    from llmrerank.train import losses

    qrels = load_beir(TINY, split="test").qrels
    lines, given = [], {}
    for qid, items in load_run(TINY / "run.trec").items():
        docs = [d for d, _ in items] + [d for d in qrels.get(qid, {}) if d not in dict(items)]
        for r, d in enumerate(sorted(docs), start=1):  # an order of its own: by document id, scores 3.0, 2.5, ...
            given[(qid, d)] = 3.5 - 0.5 * r
            lines.append(f"{qid} Q0 {d} {r} {given[(qid, d)]} teacher")
    teacher = tmp_path / "teacher.trec"
    teacher.write_text("\n".join(lines) + "\n")
    cfg = _config(tiny_model_dir, tmp_path / "run", loss=loss, target="teacher", teacher_run=str(teacher),
                  max_steps=6, grad_accum=1, groups_per_batch=2, learning_rate=1e-2)
    trainer = Trainer(cfg)
    groups = trainer.groups[:2]
    for g in groups:
        assert list(g.teacher) == [given[(g.qid, d)] for d in g.doc_ids]  # the run's scores, as written
    items = [e for g in groups for e in trainer.ranker.encode(g.query, g.docs)]
    with torch.no_grad():
        scores = trainer.ranker.score_encoded(items).view(len(groups), -1)
        want = getattr(losses, loss)(scores, torch.tensor([g.teacher for g in groups]))
        before = trainer.batch_loss(groups).item()
    assert before == pytest.approx(want.item(), abs=1e-5)
    result = trainer.train(progress=False)
    with torch.no_grad():
        assert trainer.batch_loss(groups).item() < before
    assert json.loads((result.model_dir / "llmrerank.json").read_text())["trained_with"]["loss"] == loss


@pytest.mark.parametrize(
    ("given", "error", "message"),
    [
        ({"loss": "kl", "target": "labels"}, ValueError, "loss kl distils a teacher: target must be 'teacher'"),
        ({"target": "oracle"}, ValueError, "target must be"),
        ({"loss": "bce", "target": "teacher"}, ValueError, "loss bce needs graded labels, not a teacher's scores"),
        ({"loss": "grouped_ce", "target": "teacher"}, ValueError, "loss grouped_ce needs graded labels"),
        ({"loss": "lambdaloss", "target": "teacher"}, ValueError, "loss lambdaloss needs graded labels"),
        (
            {"loss": "nll", "method": "likelihood", "group_size": 1, "target": "teacher"},
            ValueError,
            "loss nll learns the positive itself .the qrels., not a teacher's scores: leave target out",
        ),
    ],
)
def test_bad_targets_are_refused(tmp_path, given, error, message):
    with pytest.raises(error, match=message):
        TrainConfig.from_dict({"output_dir": str(tmp_path), **given})


def test_a_teacher_target_needs_a_teacher_run(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="learns from a teacher here: set teacher_run"):
        Trainer(_config(tiny_model_dir, tmp_path / "run", loss="ranknet", target="teacher"))


def test_the_dev_evaluation_runs_in_the_methods_default_dtype(tiny_model_dir, tmp_path):
    from llmrerank.backends.hf import native_bf16

    native = "bfloat16" if native_bf16("cpu") else "float32"
    dev = dict(dev_split="test", max_steps=2)
    # likelihood's default is auto (bfloat16 where the CPU computes it natively), as Reranker() loads it;
    # pointwise stays float32; the config's eval_dtype wins
    assert Trainer(_config(tiny_model_dir, tmp_path / "a", method="likelihood", **dev)).eval_dtype == native
    assert Trainer(_config(tiny_model_dir, tmp_path / "b", **dev)).eval_dtype == "float32"
    pinned = _config(tiny_model_dir, tmp_path / "c", method="likelihood", eval_dtype="float32", **dev)
    assert Trainer(pinned).eval_dtype == "float32"
    with pytest.raises(ValueError, match="eval_dtype"):
        _config(tiny_model_dir, tmp_path / "d", eval_dtype="int8")
    # bfloat16 asked for on any CPU: the evaluation scores a bfloat16 copy with the adapters merged, and the
    # training model is left as it was
    trainer = Trainer(_config(tiny_model_dir, tmp_path / "run", method="likelihood", eval_dtype="bfloat16", **dev))
    result = trainer.train(progress=False)
    training = trainer.ranker.backend
    with trainer._evaluation_backend():
        evaluator = trainer.ranker.backend
        assert evaluator is not training and evaluator.dtype == "bfloat16" and not evaluator.has_lora
        # its weights in bfloat16, its buffers (the rotary frequencies) kept in float32 as a bfloat16 load keeps them
        assert {p.dtype for p in evaluator.model.parameters()} == {torch.bfloat16}
        assert {b.dtype for b in evaluator.model.buffers() if b.is_floating_point()} == {torch.float32}
        in_bf16 = trainer.ranker.score(QUERY, DOCS)
    assert trainer.ranker.backend is training and training.dtype == "float32" and training.has_lora
    in_fp32 = trainer.ranker.score(QUERY, DOCS)
    assert in_bf16 != in_fp32 and in_bf16 == pytest.approx(in_fp32, abs=0.1)
    # exactly what the trained folder gives when loaded in bfloat16 (base cast, float32 adapters merged into it)
    restored = Reranker("likelihood", model=str(result.model_dir), dtype="bfloat16").score(QUERY, DOCS)
    assert in_bf16 == pytest.approx(restored, abs=1e-6)
    assert len(result.dev) == 1 and 0 <= result.dev[0]["dev_nDCG@10"] <= 1


def test_nll_is_the_language_modelling_loss_of_the_query_after_its_positive(tiny_model_dir, tmp_path):
    """loss nll with group_size 1: each group is the positive alone, and the loss is what transformers' own causal-LM
    loss gives for the query's tokens after the positive's prompt (labels -100 on the prompt), averaged over groups;
    training lowers it."""
    cfg = _config(
        tiny_model_dir, tmp_path / "nll", method="likelihood", loss="nll", group_size=1, lora=False, max_steps=6
    )
    trainer = Trainer(cfg)
    groups = trainer.groups
    assert groups and all(len(g.docs) == 1 for g in groups)
    model = trainer.backend.model
    model.eval()
    expected = []
    for g in groups:
        (item,) = trainer.ranker.encode(g.query, g.docs)
        ids = torch.tensor([[*item.prompt, *item.target]])
        labels = ids.clone()
        labels[0, : len(item.prompt)] = -100
        with torch.no_grad():
            expected.append(model(input_ids=ids, labels=labels).loss.item())
    with torch.no_grad():
        before = trainer.batch_loss(groups).item()
    assert before == pytest.approx(sum(expected) / len(expected), abs=1e-5)
    trainer.train(progress=False)
    with torch.no_grad():
        assert trainer.batch_loss(groups).item() < before - 0.1
