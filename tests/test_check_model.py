"""Model checks (``llmrerank.check``, ``llmrerank check-model``) on tiny random models: the build checks every
ranker runs, the forward checks with values computed here from the model's own logits, and the command line."""

from __future__ import annotations

import json
import os
import string
import subprocess
import sys

import pytest
import torch

from conftest import family_model, make_model, make_tokenizer, smollm2_tokenizer
from llmrerank.backends.hf import HFBackend
from llmrerank.check import NAMES, PAIRS, Check, ModelCheckError, check_model, failed
from llmrerank.cli import main
from llmrerank.prompts import PromptTemplate, encode
from llmrerank.rankers import LikelihoodRanker, PointwiseRanker
from llmrerank.registry import Reranker


def _chat_prompt(tokenizer, template, query: str, doc: str) -> str:
    user = template.user.replace("{query}", query).replace("{document}", doc)
    messages = [{"role": "system", "content": template.system}] if template.system else []
    messages.append({"role": "user", "content": user})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + template.assistant


def _by_name(checks: list[Check]) -> dict[str, Check]:
    assert [c.name for c in checks] == list(NAMES)
    return {c.name: c for c in checks}


@pytest.fixture(scope="module")
def ranker(qwen_backend):
    return PointwiseRanker(qwen_backend)


@pytest.fixture(scope="module")
def checks(ranker):
    return _by_name(check_model(ranker))


def test_a_plain_tiny_model_passes_the_build_checks_and_warns_on_the_mass(ranker, checks):
    statuses = {name: c.status for name, c in checks.items()}
    assert statuses == {
        "chat_template": "pass",
        "answer_tokens": "pass",
        "suffix": "pass",
        "target_tokens": "skip",
        "prompt_fits": "skip",
        "answer_mass": "warn",  # a random model puts almost nothing on yes/no
        "finite": "pass",
        "batch_invariance": "pass",
        "permutation": "skip",
        "relevant_first": statuses["relevant_first"],
    }
    assert statuses["relevant_first"] in ("pass", "warn") and not failed(list(checks.values()))
    tok = ranker.backend.tokenizer
    assert checks["answer_tokens"].values["ids"] == tok.convert_tokens_to_ids(["yes", "no"])
    assert checks["answer_tokens"].values["tokens"] == ["yes", "no"]
    assert checks["target_tokens"].detail == "only query likelihood scores target tokens"
    assert ranker.build_checks == [checks["chat_template"], checks["suffix"], checks["answer_tokens"]]


def test_the_mass_is_the_softmax_of_the_models_logits(ranker, checks):
    model, tok = ranker.backend.model, ranker.backend.tokenizer
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    expected, instead = [], []
    for query, relevant, unrelated in PAIRS:
        for doc in (relevant, unrelated):
            ids = tok(_chat_prompt(tok, ranker.template, query, doc), add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                p = torch.softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].double(), -1)
            expected.append((p[yes] + p[no]).item())
            p[[yes, no]] = -1
            instead.append(int(p.argmax()))
    mass = checks["answer_mass"]
    assert mass.values["mass"] == pytest.approx(expected, abs=1e-5)
    assert mass.values["min"] == pytest.approx(min(expected), abs=1e-5)
    assert mass.values["instead"]["id"] == max(set(instead), key=instead.count)
    assert f"min {min(expected):.3f}" in mass.detail and "below 0.5" in mass.detail
    # with the threshold under the lowest mass, the same model passes
    low = _by_name(check_model(ranker, min_mass=min(expected) / 2))["answer_mass"]
    assert low.status == "pass" and low.values["mass"] == mass.values["mass"]


def test_finite_relevant_and_batch_values_are_the_rankers_scores(ranker, checks):
    scores = [s for q, rel, unrel in PAIRS for s in ranker.score(q, [rel, unrel])]
    assert checks["finite"].values["scores"][: len(scores)] == pytest.approx(scores, abs=1e-5)
    assert checks["finite"].values["dtype"] == "float32"
    relevant = checks["relevant_first"].values
    assert relevant["relevant"] == pytest.approx(scores[0::2], abs=1e-5)
    assert relevant["wins"] == [a > b for a, b in zip(scores[0::2], scores[1::2])]
    assert checks["batch_invariance"].values["max_difference"] <= 1e-4


def test_the_suffix_check_renders_a_long_document_to_max_length(qwen_backend):
    r = PointwiseRanker(qwen_backend, max_length=80)
    suffix = next(c for c in r.build_checks if c.name == "suffix")
    _, tail_text = r.renderer.text_around_document(PAIRS[0][0])
    tail = encode(qwen_backend.tokenizer, tail_text)
    assert suffix.values["prompt_tokens"] == 80 and suffix.values["document_cut"] is True
    assert suffix.values["suffix_tokens"] == len(tail)
    assert suffix.values["suffix"] == qwen_backend.tokenizer.decode(tail)


def test_a_prompt_with_no_room_for_the_document_fails_at_build(qwen_backend):
    with pytest.raises(ModelCheckError, match="leaves no room for the document within max_length=20") as e:
        PointwiseRanker(qwen_backend, max_length=20)
    assert [c.status for c in e.value.checks] == ["pass", "fail"]  # chat template, suffix


def test_answer_words_split_into_several_tokens_fail_at_build(qwen_backend):
    with pytest.raises(ModelCheckError, match="'honey bees' not single known tokens") as e:
        PointwiseRanker(qwen_backend, tokens=("honey bees", "no"))
    assert isinstance(e.value, ValueError)
    answer = e.value.checks[-1]
    assert (answer.name, answer.status, answer.values) == ("answer_tokens", "fail", {"words": ["honey bees", "no"]})
    with pytest.raises(ModelCheckError, match="ids clash"):
        PointwiseRanker(qwen_backend, tokens=("yes", "yes"))


def test_a_chat_prompt_without_a_chat_template_fails_at_build():
    tok = make_tokenizer(chat=False)
    backend = HFBackend(make_model(len(tok)), tok, name="no-chat")
    for method in ("pointwise", "likelihood", "listwise"):
        with pytest.raises(ModelCheckError, match="asks for the model's chat template .* this tokenizer has none"):
            Reranker(method, backend=backend)
    plain = PromptTemplate(name="plain", user="Query: {query}\nDocument: {document}\nRelevant? Answer yes or no.")
    with pytest.raises(ModelCheckError, match="template 'plain' asks for the model's chat template"):
        PointwiseRanker(backend, template=plain)
    ranker = PointwiseRanker(backend, template={**plain.to_dict(), "chat": False})
    said = "template 'plain' asks for no chat template (chat = false)"
    assert ranker.build_checks[0] == Check("chat_template", "pass", said)
    assert not failed(check_model(ranker))


def test_a_text_pair_template_needs_no_chat_template():
    # RankLLaMA's base model (Llama-2-7b) has no chat template, and its text pair is tokenised without one
    tok = make_tokenizer(chat=False)
    backend = HFBackend(make_model(len(tok), "llama"), tok, name="no-chat-llama")
    ranker = PointwiseRanker(backend, family="rankllama")
    said = "template 'rankllama' is a text pair, tokenised as tokenizer(text, text_pair): no chat template"
    assert ranker.build_checks[0] == Check("chat_template", "pass", said)
    assert not ranker.renderer.use_chat
    # the rendered ids are the text pair's, tokenised apart (this tokenizer adds nothing to a pair), then the EOS
    (encoded,) = ranker.encode("the query", ["the document"])
    pair = tok("query: the query", "document:  the document", add_special_tokens=True)["input_ids"]
    assert list(encoded.prompt) == [*pair, tok.eos_token_id]


def test_likelihood_checks_its_target_tokens(qwen_backend):
    checks = _by_name(check_model(LikelihoodRanker(qwen_backend, max_length=96)))
    counts = [len(encode(qwen_backend.tokenizer, q)) for q, _, _ in PAIRS]
    assert checks["target_tokens"].status == "pass" and checks["target_tokens"].values["target_tokens"] == counts
    assert checks["suffix"].values["prompt_tokens"] == 96
    assert checks["answer_mass"].status == "skip" and "query's own tokens" in checks["answer_mass"].detail
    assert checks["finite"].status == checks["batch_invariance"].status == "pass"


class SkewedBackend(HFBackend):
    """A backend whose logits shift with the number of rows asked for at once: not batch-invariant."""

    def last_logits(self, sequences, grad=False, columns=None):
        return super().last_logits(sequences, grad, columns) + 1e-3 * len(sequences)


def test_a_score_that_changes_with_the_batch_fails_in_float32(qwen_backend):
    skewed = SkewedBackend(qwen_backend.model, qwen_backend.tokenizer, batch_size=4, name="skewed")
    checks = _by_name(check_model(PointwiseRanker(skewed, normalisation="yes_logit")))
    batch = checks["batch_invariance"]
    n = 2 * len(PAIRS) + 1  # the pairs and a long document, in one call, then one at a time
    assert batch.status == "fail" and batch.values["max_difference"] == pytest.approx(1e-3 * (n - 1), abs=1e-6)
    assert "above 0.0001 in float32" in batch.detail


class NaNBackend(HFBackend):
    """A backend whose logits are NaN, as an overflow in float16 gives."""

    def last_logits(self, sequences, grad=False, columns=None):
        return super().last_logits(sequences, grad, columns) * float("nan")


def test_nan_scores_fail_and_stay_json(qwen_backend):
    broken = NaNBackend(qwen_backend.model, qwen_backend.tokenizer, batch_size=4, name="nan")
    checks = _by_name(check_model(PointwiseRanker(broken)))
    assert checks["finite"].status == "fail" and checks["finite"].detail == "7 of 7 scores are NaN or inf in float32"
    assert checks["finite"].values["scores"] == ["nan"] * 7 and json.dumps(checks["finite"].to_dict(), allow_nan=False)
    assert checks["answer_mass"].status == "fail" and "not finite" in checks["answer_mass"].detail
    assert checks["batch_invariance"].status == checks["relevant_first"].status == "skip"


def test_an_untrained_dense_head_fails_to_score(qwen_backend):
    checks = _by_name(check_model(PointwiseRanker(qwen_backend, head="dense")))
    assert checks["finite"].status == "fail" and "untrained" in checks["finite"].detail
    assert checks["answer_tokens"].status == "skip" and "dense head" in checks["answer_tokens"].detail


def test_list_methods_get_a_permutation_check():
    tok = make_tokenizer(extra=["[", "]", ">", *(str(i) for i in range(1, 21)), *string.ascii_uppercase])
    backend = HFBackend(make_model(len(tok)), tok, batch_size=4, name="tiny-lists")
    for method, options in [("pairwise", {}), ("setwise", {}), ("listwise", {"decoding": "first"})]:
        ranker = Reranker(method, backend=backend, max_length=256, **options)
        checks = _by_name(check_model(ranker))
        assert checks["permutation"].status == "pass", method
        orders = checks["permutation"].values["orders"]
        assert all(sorted(o) == list(range(len(PAIRS) + 1)) for o in orders)
        assert checks["relevant_first"].values["wins"] == [o.index(len(PAIRS)) < o.index(0) for o in orders]
        assert checks["prompt_fits"].status == checks["finite"].status == "pass"
        assert checks["batch_invariance"].status == checks["suffix"].status == "skip"
        # the labels (identifiers for FIRST) the ranker reads: a build check with the ids it found
        labels = checks["answer_tokens"]
        assert labels.status == "pass" and labels in ranker.build_checks, method
        assert labels.values["ids"] == ranker.label_token_ids and labels.values["words"] == ranker.labels
        assert labels.values["tokens"] == tok.convert_ids_to_tokens(ranker.label_token_ids)
        assert checks["answer_mass"].status == "skip"
    tight = Reranker("setwise", backend=backend, max_length=60)
    assert _by_name(check_model(tight))["prompt_fits"].status == "fail"


def test_bad_arguments_to_check_model(ranker):
    with pytest.raises(ValueError, match="min_mass must be from 0 to 1"):
        check_model(ranker, min_mass=1.5)
    with pytest.raises(ValueError, match="triples of str"):
        check_model(ranker, pairs=[("q", "d")])


# --- a family -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen3_backend():
    """A tiny random Qwen3 over SmolLM2's packaged tokenizer (as tests/test_families.py builds it)."""
    tokenizer = smollm2_tokenizer()
    model = family_model("qwen3", len(tokenizer), max_position_embeddings=2048)
    return HFBackend(model, tokenizer, batch_size=3, name="tiny-qwen3")


def test_a_family_whose_model_does_not_answer_in_its_format_fails(qwen3_backend):
    ranker = PointwiseRanker(qwen3_backend, family="qwen3-reranker", max_length=128)
    checks = _by_name(check_model(ranker))
    assert checks["answer_mass"].status == "fail" and "family 'qwen3-reranker'" in checks["answer_mass"].detail
    assert checks["chat_template"].detail == "template 'qwen3-reranker' is verbatim: written as is, no chat template"
    tok = qwen3_backend.tokenizer
    assert checks["answer_tokens"].values["ids"] == tok.convert_tokens_to_ids(["yes", "no"])
    assert checks["suffix"].values["suffix"].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert failed(list(checks.values()))
    # the same model without the family only warns
    plain = _by_name(check_model(PointwiseRanker(qwen3_backend, max_length=128)))["answer_mass"]
    assert plain.status == "warn"


# --- the command line ---------------------------------------------------------------------------------------


def test_check_model_prints_one_line_a_check_and_exits_zero_with_warnings(tiny_model_dir, capsys):
    assert main(["check-model", "--model", str(tiny_model_dir), "--max-length", "96", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"check-model: {tiny_model_dir}, method pointwise"
    assert [line.split()[1] for line in out[1:-1]] == list(NAMES)
    assert out[2].startswith("pass  answer_tokens ") and out[6].startswith("warn  answer_mass ")
    assert out[-1].endswith("0 fail, 3 skip")


def test_check_model_json(tiny_model_dir, capsys):
    assert main(["check-model", "--model", str(tiny_model_dir), "--method", "likelihood", "--json"]) == 0
    checks = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in checks] == list(NAMES)
    assert all(set(c) == {"name", "status", "detail", "values"} for c in checks)
    by_name = {c["name"]: c for c in checks}
    assert by_name["suffix"]["values"]["max_length"] == 512 and by_name["answer_tokens"]["status"] == "skip"


def test_a_failed_build_check_is_reported_with_the_rest(tiny_model_dir, capsys):
    argv = ["check-model", "--model", str(tiny_model_dir), "--tokens", "honey bees,no", "--json"]
    assert main(argv) == 1
    by_name = {c["name"]: c for c in json.loads(capsys.readouterr().out)}
    assert by_name["answer_tokens"]["status"] == "fail"
    assert by_name["chat_template"]["status"] == by_name["suffix"]["status"] == "pass"
    assert by_name["answer_mass"] == {
        "name": "answer_mass",
        "status": "skip",
        "detail": "not run: the ranker could not be built",
        "values": {},
    }


@pytest.mark.parametrize(("method", "flags"), [("setwise", []), ("listwise", ["--decoding", "first"])])
def test_labels_a_list_method_cannot_read_are_a_failed_check_not_a_usage_error(tiny_model_dir, capsys, method, flags):
    # the tiny model's word-level vocabulary has no "A"/"B" or "[1]" tokens: the labels are unknown tokens
    argv = ["check-model", "--model", str(tiny_model_dir), "--method", method, *flags, "--json"]
    assert main(argv) == 1
    by_name = {c["name"]: c for c in json.loads(capsys.readouterr().out)}
    assert by_name["answer_tokens"]["status"] == "fail"
    assert "single, distinct token" in by_name["answer_tokens"]["detail"]
    assert by_name["permutation"]["detail"] == "not run: the ranker could not be built"


def test_the_exit_status_in_a_fresh_process(tiny_model_dir, capsys):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    argv = [sys.executable, "-m", "llmrerank.cli", "check-model", "--model", str(tiny_model_dir)]
    argv += ["--tokens", "honey bees,no"]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 1, done.stderr
    assert "fail  answer_tokens" in done.stdout and "'honey bees' not single known tokens" in done.stdout
    with pytest.raises(SystemExit) as bad:  # bad input is exit status 2, as in every subcommand
        main(["check-model", "--model", str(tiny_model_dir), "--method", "nope"])
    assert bad.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err
