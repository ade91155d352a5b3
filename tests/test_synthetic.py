"""Synthetic queries (``llmrerank generate-queries``): the prompt, the per-passage seeds, the filters, resume, the
BEIR folder and the consistency filter, on a tiny random model."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest

from conftest import TINY, smollm2_tokenizer
from llmrerank.backends.base import Sampling
from llmrerank.data import load_beir, load_corpus, load_qrels, load_run
from llmrerank.train import synthetic
from llmrerank.train.synthetic import GenerationSettings, build_prompt, clean_query, filter_reason, passage_seed


@pytest.fixture
def labelled(tmp_path):
    """TINY with its judgements as a training split."""
    folder = tmp_path / "data"
    shutil.copytree(TINY, folder)
    shutil.copy(folder / "qrels" / "test.tsv", folder / "qrels" / "train.tsv")
    return folder


def test_the_prompt_is_inpars_few_shot_format():
    prompt = build_prompt([("what is a cat", "A cat is\na small  animal.")], "Dogs bark.")
    assert prompt == (
        "Example 1:\nDocument: A cat is a small animal.\nRelevant Query: what is a cat\n\n"
        "Example 2:\nDocument: Dogs bark.\nRelevant Query:"
    )
    assert build_prompt([], "Dogs bark.") == "Example 1:\nDocument: Dogs bark.\nRelevant Query:"


def test_seeds_depend_on_the_passage_and_the_run_seed_only():
    assert passage_seed(0, "d1") == passage_seed(0, "d1")
    assert len({passage_seed(0, "d1"), passage_seed(0, "d2"), passage_seed(1, "d1")}) == 3
    assert 0 <= passage_seed(7, "x") < 2**63


def test_filters():
    passage = "Honey bees make honey from flower nectar."
    seen: set[str] = set()
    cases = [
        ("honey", "too_short"),
        ("bees make honey", "copied"),  # a run of the passage's words, in order
        ("Honey Bees, make honey!", "copied"),  # case and punctuation do not hide a copy
        ("why do bees store nectar", None),
        ("Why do bees store nectar?", "duplicate"),  # the same words as the one kept above
        ("honey make bees", None),  # the passage's words, not in its order
    ]
    assert [filter_reason(q, passage, 2, seen) for q, _ in cases] == [reason for _, reason in cases]
    assert seen == {"why do bees store nectar", "honey make bees"}


def test_generation_stops_at_any_token_holding_a_line_break():
    tokenizer = smollm2_tokenizer()
    ids = synthetic.newline_ids(tokenizer)
    for text in ("\n", "\n\n", ".\n"):
        assert set(tokenizer.encode(text, add_special_tokens=False)) & ids, text
    assert not set(tokenizer.encode("what is a cat", add_special_tokens=False)) & ids


def test_clean_query_takes_the_first_line():
    assert clean_query(' "how do bees fly"\nExample 3:') == "how do bees fly"
    assert clean_query("\n\n  what is honey  \n") == "what is honey" and clean_query("  \n") == ""


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"examples_split": "test"}, "never a test split"),
        ({"examples_split": None}, "examples > 0 needs examples_split"),
        ({"passages": 0}, "passages must be an integer >= 1"),
        ({"seed": -1}, "seed must be an integer >= 0"),
    ],
)
def test_bad_settings(given, message):
    with pytest.raises(ValueError, match=message):
        GenerationSettings(**{"passages": 3, **given})


def test_examples_and_passages(labelled):
    ds = load_beir(labelled, split="train")
    examples = synthetic.few_shot_examples(ds, 2, seed=0)
    assert len(examples) == 2 and all(ds.qrels[q] for q, _, _ in examples)
    assert examples == synthetic.few_shot_examples(ds, 2, seed=0)
    with pytest.raises(ValueError, match="4 examples asked for, but the split has 3"):
        synthetic.few_shot_examples(ds, 4, seed=0)
    drawn = synthetic.sample_passages(ds.corpus, 5, seed=1, exclude=["d1"])
    assert len(set(drawn)) == 5 and "d1" not in drawn and drawn == synthetic.sample_passages(ds.corpus, 5, 1, ["d1"])
    with pytest.raises(ValueError, match="20 passages asked for, but the corpus has 11"):
        synthetic.sample_passages(ds.corpus, 20, seed=1, exclude=["d1"])


def test_a_larger_sample_begins_with_the_smaller():
    """A run of N passages can grow to M > N with the queries it has (docs/benchmarks.md, "Distillation"): the
    first N of M passages drawn are the N passages drawn, at the DL21 pool's size."""
    from llmrerank.types import Document

    corpus = {f"msmarco_{i:05d}": Document(f"passage {i}") for i in range(5299)}
    small = synthetic.sample_passages(corpus, 200, seed=0, exclude=["msmarco_00007"])
    assert synthetic.sample_passages(corpus, 1000, seed=0, exclude=["msmarco_00007"])[:200] == small


def test_each_query_is_its_passages_own_sample_and_a_resume_writes_the_same(labelled, tmp_path, qwen_backend):
    ds = load_beir(labelled, split="train")
    examples = synthetic.few_shot_examples(ds, 1, seed=0)
    settings = GenerationSettings(passages=6, examples=1, max_new_tokens=6, temperature=1.0, top_p=1.0, min_words=1)
    out = tmp_path / "gen"
    generated = synthetic.generate(qwen_backend, ds.corpus, examples, out, settings, batch_size=4, progress=False)
    example_docs = [d for d, doc in ds.corpus.items() if doc.text == examples[0][2]]
    assert list(generated) == synthetic.sample_passages(ds.corpus, 6, 0, example_docs)  # never the example's
    tokenizer = qwen_backend.tokenizer
    shots = [(q, synthetic.cut(tokenizer, p, settings.example_tokens)) for _, q, p in examples]
    stops = sorted(set(qwen_backend.stop_ids()) | synthetic.newline_ids(tokenizer))
    for d, record in list(generated.items())[:2]:  # alone, with its own seed: the same continuation
        prompt = build_prompt(shots, synthetic.cut(tokenizer, ds.corpus[d].text, settings.passage_tokens))
        seq = tokenizer.encode(prompt, add_special_tokens=True)
        alone = qwen_backend.generate([seq], 6, stop_ids=stops, sampling=Sampling(1.0, (passage_seed(0, d),)))
        assert record["raw"] == tokenizer.decode(alone[0], skip_special_tokens=True)
        assert record["seed"] == passage_seed(0, d)
    # a run killed after its first batch (and mid-line): the resume writes the same file
    full = (out / synthetic.GENERATED).read_text()
    lines = full.splitlines(keepends=True)
    (out / synthetic.GENERATED).write_text("".join(lines[:4]) + lines[4][:10])
    again = synthetic.generate(qwen_backend, ds.corpus, examples, out, settings, batch_size=4, progress=False)
    assert again == generated and (out / synthetic.GENERATED).read_text() == full
    with pytest.raises(ValueError, match="generated with other temperature"):
        other = GenerationSettings(passages=6, examples=1, max_new_tokens=6, temperature=0.5, top_p=1.0, min_words=1)
        synthetic.generate(qwen_backend, ds.corpus, examples, out, other, progress=False)
    with pytest.raises(ValueError, match="generated with other dtype"):  # the weights' precision samples too
        other = replace(settings, dtype="bfloat16")
        synthetic.generate(qwen_backend, ds.corpus, examples, out, other, progress=False)


def test_a_run_grows_to_more_passages_keeping_the_queries_it_has(labelled, tmp_path, qwen_backend):
    ds = load_beir(labelled, split="train")
    examples = synthetic.few_shot_examples(ds, 1, seed=0)
    small = GenerationSettings(passages=4, examples=1, max_new_tokens=4, temperature=1.0, top_p=1.0, min_words=1)
    large = replace(small, passages=6)
    out = tmp_path / "grow"
    synthetic.generate(qwen_backend, ds.corpus, examples, out, small, batch_size=4, progress=False)
    had = (out / synthetic.GENERATED).read_text()
    grown = synthetic.generate(qwen_backend, ds.corpus, examples, out, large, batch_size=4, progress=False)
    assert (out / synthetic.GENERATED).read_text().startswith(had)  # the first four kept, two added
    assert len(grown) == 6 and json.loads((out / synthetic.SETTINGS).read_text())["settings"]["passages"] == 6
    fresh = synthetic.generate(qwen_backend, ds.corpus, examples, tmp_path / "fresh", large, progress=False)
    assert grown == fresh  # what a run of six from the start writes
    with pytest.raises(ValueError, match="holds queries of 6 passages: a run grows but does not shrink; ask for 6"):
        synthetic.generate(qwen_backend, ds.corpus, examples, out, small, progress=False)
    # a folder holding a passage that the larger sample leaves out cannot grow to it
    example_docs = [d for d, doc in ds.corpus.items() if doc.text == examples[0][2]]
    eight = synthetic.sample_passages(ds.corpus, 8, 0, example_docs)
    stray = next(d for d in ds.corpus if d not in eight)
    with open(out / synthetic.GENERATED, "a", encoding="utf-8") as f:
        f.write(json.dumps({"passage_id": stray, "seed": 0, "query": "q", "raw": "q"}) + "\n")
    with pytest.raises(ValueError, match=f"the sample of 8 leaves out 1 of them \\(e.g. {stray}\\)"):
        synthetic.generate(qwen_backend, ds.corpus, examples, out, replace(small, passages=8), progress=False)
    assert json.loads((out / synthetic.SETTINGS).read_text())["settings"]["passages"] == 6  # refused: unchanged
    other = next(e for seed in range(1, 20) if (e := synthetic.few_shot_examples(ds, 1, seed=seed)) != examples)
    with pytest.raises(ValueError, match="generated with other passages, examples; use another --out"):
        synthetic.generate(qwen_backend, ds.corpus, other, out, replace(small, passages=8), progress=False)


def test_the_folder_its_filters_and_the_consistency_filter(labelled, tmp_path):
    corpus = load_corpus(labelled / "corpus.jsonl")
    generated = {
        "d1": {"query": "how is honey made by bees"},
        "d2": {"query": "bumblebees"},  # too short
        "d3": {"query": "Wasps are predators"},  # copied
        "d5": {"query": "how is honey made by bees"},  # duplicate
        "d6": {"query": "what makes a volcano erupt"},
    }
    settings = GenerationSettings(passages=5, candidates=4, min_words=2)
    out = tmp_path / "gen"
    out.mkdir()
    report = synthetic.write_dataset(out, labelled / "corpus.jsonl", corpus, generated, settings, progress=False)
    assert report["counts"] == {"generated": 5, "too_short": 1, "copied": 1, "duplicate": 1, "kept": 2}
    ds = load_beir(out, split="generated")
    assert ds.queries == {"gen-d1": "how is honey made by bees", "gen-d6": "what makes a volcano erupt"}
    assert ds.qrels == {"gen-d1": {"d1": 1}, "gen-d6": {"d6": 1}} and len(ds.corpus) == len(corpus)
    run = load_run(out / synthetic.RUN)
    assert set(run) == set(ds.queries) and all(len(items) == 4 for items in run.values())
    # a teacher that ranks d1 second and d6 fifth: with k = 2 only gen-d1 stays
    teacher = {"gen-d1": [("d4", 9.0), ("d1", 8.0), ("d2", 1.0)], "gen-d6": [(f"d{i}", 10.0 - i) for i in range(1, 8)]}
    report = synthetic.consistency_filter(out, teacher, 2)
    assert report["consistency"] == {"k": 2, "checked": 2, "kept": 1, "dropped": 1, "not_in_teacher_run": 0}
    assert load_qrels(out / "qrels" / "train.tsv") == {"gen-d1": {"d1": 1}}
    assert json.loads((out / synthetic.REPORT).read_text())["consistency"]["kept"] == 1
    # a query the teacher did not rank is dropped and counted; a teacher run of none of them is refused
    report = synthetic.consistency_filter(out, {"gen-d1": teacher["gen-d1"]}, 2)
    assert report["consistency"] == {"k": 2, "checked": 2, "kept": 1, "dropped": 1, "not_in_teacher_run": 1}
    with pytest.raises(ValueError, match="ranks none of the generated queries"):
        synthetic.consistency_filter(out, {"other": teacher["gen-d1"]}, 2)
    # an output folder with a corpus of its own is never overwritten
    other = tmp_path / "other"
    shutil.copytree(labelled, other)
    with pytest.raises(ValueError, match="holds a corpus.jsonl of its own"):
        synthetic.write_dataset(other, labelled / "corpus.jsonl", corpus, generated, settings, progress=False)
    assert not (other / "corpus.jsonl").is_symlink() and (other / "corpus.jsonl").stat().st_size > 0


def test_the_command_with_a_teacher(labelled, tmp_path, tiny_model_dir, capsys):
    from llmrerank.cli import main

    out = tmp_path / "gen"
    args = ["generate-queries", "--data", str(labelled), "--model", str(tiny_model_dir), "--passages", "4"]
    args += ["--examples", "1", "--max-new-tokens", "5", "--min-words", "1", "--out", str(out), "--quiet"]
    teacher = ["--teacher-model", str(tiny_model_dir), "--teacher-top-k", "3", "--consistency-k", "2"]
    assert main([*args, *teacher]) == 0
    err = capsys.readouterr().err
    assert "generated 4 queries: kept" in err and "consistency (source in the teacher's top 2)" in err
    report = json.loads((out / synthetic.REPORT).read_text())
    teacher_run = load_run(out / "teacher-likelihood.trec")
    kept = load_qrels(out / "qrels" / "train.tsv")
    for qid, source in ((q, next(iter(j))) for q, j in load_qrels(out / "qrels" / "generated.tsv").items()):
        in_top = source in [d for d, _ in teacher_run[qid][:2]]
        assert (qid in kept) == in_top  # the filter, checked against the teacher's run file
    assert report["consistency"]["kept"] == len(kept)
    # the teacher ran in its method's dtype (likelihood: auto), as llmrerank rerank would
    side = json.loads((out / "teacher-likelihood.trec.json").read_text())
    assert side["backend"]["dtype"] == "auto"
    # run again: nothing is generated or reranked anew, the same folder results
    before = (out / synthetic.GENERATED).read_text()
    assert main([*args, *teacher]) == 0 and (out / synthetic.GENERATED).read_text() == before
    # a teacher in another dtype cannot continue that teacher run (where auto is bfloat16); --teacher-dtype is kept
    from llmrerank.backends.hf import native_bf16

    if native_bf16("cpu"):
        assert main([*args, *teacher, "--teacher-dtype", "float32"]) != 0
        assert "it ran in bfloat16: the dtype option bfloat16 continues it" in capsys.readouterr().err
    assert main([*args, "--examples-split", "test"]) == 2
    assert "never a test split" in capsys.readouterr().err
    # grown to 6 passages against the teacher run of the first 4: the new queries are named as dropped, not lost quietly
    grown = [a if a != "4" else "6" for a in args]
    assert main([*grown, "--teacher-run", str(out / "teacher-likelihood.trec"), "--consistency-k", "2"]) == 0
    missing = json.loads((out / synthetic.REPORT).read_text())["consistency"]["not_in_teacher_run"]
    assert missing > 0 and f"({missing} not in the teacher run, dropped: rerank them" in capsys.readouterr().err


def test_max_minutes_stops_generation_and_the_teacher_and_the_same_command_goes_on(
    labelled, tmp_path, tiny_model_dir, capsys
):
    """--max-minutes stops after a batch, with status 3 and the command to run again; run again (bounded each
    time) it goes on, stage after stage, to the folder an unbounded run writes."""
    from llmrerank.cli import main

    def command(out):
        args = ["generate-queries", "--data", str(labelled), "--model", str(tiny_model_dir), "--passages", "4"]
        args += ["--examples", "1", "--max-new-tokens", "5", "--min-words", "1", "--out", str(out), "--quiet"]
        return [*args, "--teacher-model", str(tiny_model_dir), "--teacher-top-k", "3", "--batch-size", "2"]

    assert main(command(tmp_path / "whole")) == 0
    capsys.readouterr()
    bounded = [*command(tmp_path / "gen"), "--max-minutes", "1e-9"]
    assert main(bounded) == 3
    err = capsys.readouterr().err
    assert "stopped at --max-minutes 1e-09: 2 of 4 passages have their query; go on with: llmrerank" in err
    assert len(synthetic.read_generated(tmp_path / "gen" / synthetic.GENERATED)) == 2
    said = []
    for _ in range(10):  # generation's second batch, then the teacher a query at a time
        status = main(bounded)
        said.append(capsys.readouterr().err)
        if status != 3:
            break
    assert status == 0 and any("the teacher's run is not finished" in e for e in said)
    for name in (synthetic.GENERATED, "teacher-likelihood.trec", "qrels/train.tsv"):
        assert (tmp_path / "gen" / name).read_text() == (tmp_path / "whole" / name).read_text()
