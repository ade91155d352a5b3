"""The bge-reranker-v2-gemma family, held to FlagEmbedding's ``FlagLLMReranker`` itself.

FlagEmbedding needs transformers 4, so the reference runs in the peers' virtualenv (``bash
benchmarks/peers/setup.sh``) as a subprocess (``benchmarks/peers/family_reference.py``) on a tiny random Gemma2
model written here, over SmolLM2's packaged tokenizer (its BOS differs from its padding token, so
FlagLLMReranker starts its prompts with it), and once more over a tokenizer that merges newlines (so that
tokenising the pieces apart matters). The rendered ids must equal the reference's and the scores agree within
1e-4. The test skips where the virtualenv is absent, unless ``LLMRERANK_REQUIRE_PEERS`` is set (CI).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import family_model, smollm2_tokenizer
from llmrerank.prompts import PromptRenderer, PromptTooLongError, get_template
from llmrerank.prompts.families import BGE_RERANKER_V2_GEMMA, BGE_RERANKER_V2_GEMMA_PROMPT
from llmrerank.rankers.pointwise import PointwiseOptions, PointwiseRanker
from llmrerank.types import Document

ROOT = Path(__file__).resolve().parents[1]
PEERS_PYTHON = ROOT / "benchmarks" / "peers" / ".venv" / "bin" / "python"
REFERENCE_SCRIPT = ROOT / "benchmarks" / "peers" / "family_reference.py"

LONG_QUERY = "which " + " ".join(f"word{i}" for i in range(60)) + " matters?"
LONG_DOC = " ".join(f"Sentence {i} of a long passage says little." for i in range(40))
PAIRS = [
    ("how long do fleas live", "Adult fleas live two to three months on a host, feeding on blood."),
    ("how long do fleas live", "Concrete floors cost 2 to 6 dollars per square foot, installed.\n"),
    ("what is the boiling point of water?\n", "At sea level, pure water boils at 100 degrees Celsius."),
    ("what is the boiling point of water?", LONG_DOC),
    (LONG_QUERY, LONG_DOC),
]


def run_reference(request: dict) -> list[dict]:
    """Run a reference of benchmarks/peers/family_reference.py in the peers' virtualenv on ``request``: per run,
    its ids, scores and answer ids. Skips where the virtualenv is absent (fails under LLMRERANK_REQUIRE_PEERS)."""
    __tracebackhide__ = True
    if not PEERS_PYTHON.exists():
        reason = f"the peers' virtualenv is absent ({PEERS_PYTHON}): build it with `bash benchmarks/peers/setup.sh`"
        if os.environ.get("LLMRERANK_REQUIRE_PEERS"):
            pytest.fail(reason + " (LLMRERANK_REQUIRE_PEERS is set)")
        pytest.skip(reason)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # llmrerank must not leak into it
    done = subprocess.run(
        [str(PEERS_PYTHON), str(REFERENCE_SCRIPT)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    if done.returncode != 0:
        pytest.fail(f"the reference {request['reference']} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout)["runs"]


def tiny_gemma2(tokenizer, folder: Path):
    """A tiny random Gemma2 model for ``tokenizer``, written with it to ``folder`` (for the reference)."""
    model = family_model(
        "gemma2",
        len(tokenizer),
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)  # so that the "Yes" logits differ clearly
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def gemma2(tmp_path_factory):
    """A tiny random Gemma2 model over SmolLM2's packaged tokenizer, and its folder for the reference."""
    from llmrerank.backends.hf import HFBackend

    tokenizer = smollm2_tokenizer()
    folder = tmp_path_factory.mktemp("tiny-gemma2")
    model = tiny_gemma2(tokenizer, folder)
    return model, tokenizer, folder, HFBackend(model, tokenizer, batch_size=2, name="tiny-gemma2")


CASES = [(None, 512), ("Does passage B answer question A? Say 'Yes' or 'No'.", 512), (None, 40)]


@pytest.fixture(scope="module")
def flag_llm(gemma2):
    """FlagLLMReranker's ids and scores for each case (one subprocess: FlagEmbedding takes seconds to import)."""
    runs = [{"pairs": PAIRS, "max_length": m, "instruction": i, "batch_size": 3} for i, m in CASES]
    return run_reference({"reference": "flag_llm", "model": str(gemma2[2]), "runs": runs})


@pytest.mark.model
@pytest.mark.parametrize(("case", "instruction", "max_length"), [(n, *c) for n, c in enumerate(CASES)])
def test_bge_reranker_v2_gemma_renders_and_scores_as_flag_llm_reranker(gemma2, flag_llm, case, instruction, max_length):
    model, tokenizer, folder, backend = gemma2
    want = flag_llm[case]
    options = {"instruction": instruction} if instruction else {}
    ranker = PointwiseRanker(backend, family="bge-reranker-v2-gemma", max_length=max_length, **options)
    got_ids = [list(e.prompt) for q, d in PAIRS for e in ranker.encode(q, [d])]
    assert got_ids == want["ids"]  # token for token, the BOS, the pieces and every cut included
    assert got_ids[0][0] == tokenizer.bos_token_id
    if max_length == 40:
        query_line = tokenizer("A: " + LONG_QUERY, add_special_tokens=False)["input_ids"]
        assert got_ids[-1][1:31] == query_line[:30]  # the query cut to 3/4 of max_length, as the reference cuts it
        assert all(ranker.encode(q, [d])[0].truncated for q, d in PAIRS[3:])
    assert ranker.yes_id == want["yes_id"] == tokenizer("Yes", add_special_tokens=False)["input_ids"][0]
    got = [s for q, d in PAIRS for s in ranker.score(q, [d])]
    assert max(abs(a - b) for a, b in zip(got, want["scores"])) <= 1e-4
    # the relevance the server answers is FlagLLMReranker's normalize=True: the sigmoid of the raw logit
    ranking = ranker.rank(PAIRS[0][0], [PAIRS[0][1]])
    assert abs(ranker.relevance(ranking)[0] - 1 / (1 + math.exp(-want["scores"][0]))) <= 1e-4


def test_the_family_sets_flag_llm_rerankers_options():
    options = PointwiseOptions.build({"family": "bge-reranker-v2-gemma"})
    assert options.template == BGE_RERANKER_V2_GEMMA and options.tokens == ("Yes", "No")
    assert (options.answer_ids, options.normalisation, options.head) == ("encoded", "yes_logit", "tokens")
    assert PointwiseOptions.build(options.to_dict()) == options
    assert get_template("bge-reranker-v2-gemma", "prompt") == BGE_RERANKER_V2_GEMMA
    with pytest.raises(ValueError, match="family 'bge-reranker-v2-gemma' fixes normalisation"):
        PointwiseOptions.build({"family": "bge-reranker-v2-gemma", "normalisation": "pair_softmax"})


def newline_merging_tokenizer(text: str):
    """A character BPE tokenizer with one merge, "\n\n", and no pre-tokenizer, as sentencepiece tokenizers such
    as Gemma's merge newlines across what would be piece boundaries."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(text) | {"\n"})
    vocab = {c: i for i, c in enumerate(["<pad>", "<bos>", "<unk>", *chars, "\n\n"])}
    core = Tokenizer(models.BPE(vocab, merges=[("\n", "\n")], unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<bos>", unk_token="<unk>")


def test_the_prompt_is_tokenised_in_pieces():
    """The text is FlagLLMReranker's; the pieces are tokenised apart, so a query ending in a newline keeps its
    own newline token before the separator's, where the whole text would merge the two."""
    query, doc = "what is it?\n", "It is a cat.\n"
    tokenizer = newline_merging_tokenizer("A: B" + query + doc + BGE_RERANKER_V2_GEMMA_PROMPT)
    renderer = PromptRenderer(BGE_RERANKER_V2_GEMMA, tokenizer, max_length=512)
    head, tail = renderer.text_around_document(query)
    assert (head, tail) == ("A: what is it?\n\nB: ", "\n" + BGE_RERANKER_V2_GEMMA_PROMPT)
    parts = renderer.parts(query)
    assert parts.label == "B: "

    def ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    want = [tokenizer.bos_token_id, *ids("A: " + query), *ids("\n"), *ids("B: " + doc), *ids("\n")]
    want += ids(BGE_RERANKER_V2_GEMMA_PROMPT)
    got = renderer.render(query, Document(doc), parts)
    assert got == want
    whole = [tokenizer.bos_token_id, *ids(head + doc + tail)]
    assert got != whole and len(whole) == len(got) - 2  # the whole text would merge two newline pairs


def test_no_bos_where_the_tokenizer_pads_with_it():
    tokenizer = newline_merging_tokenizer("A: Bxy")
    tokenizer.pad_token = tokenizer.bos_token
    renderer = PromptRenderer(BGE_RERANKER_V2_GEMMA, tokenizer, max_length=512)
    assert renderer.parts("x").head[0] != tokenizer.bos_token_id and renderer.bos_ids() == []


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"query_share": 0}, "query_share must be a number in (0, 1] or null, got 0"),
        ({"query_share": 1.5}, "query_share must be a number in (0, 1] or null, got 1.5"),
        ({"query_share": True}, "query_share must be a number in (0, 1] or null, got True"),
        ({"budget": "whole"}, "budget must be one of prompt, pair, pair_and_tail, got 'whole'"),
        ({"bos": "yes"}, "field 'bos' must be bool, got str"),
        ({"user": "A: {query}\nB: {document}", "budget": "pair"}, "need {query} in a piece of its own"),
        ({"user": "A: {query}\nB: {document}", "query_share": 0.5}, "need {query} in a piece of its own"),
        ({"assistant": "{break}Answer:"}, "{break} may only appear in the user message"),
    ],
)
def test_the_length_fields_are_checked(fields, message):
    given = {"user": "A: {query}{break}\nB: {document}", "verbatim": True, **fields}
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("{", r"\{").replace(".", r"\.")):
        get_template(given, "prompt")


def test_an_instruction_format_needs_its_placeholder():
    template = get_template(
        {"user": "{instruction}{query}\n{document}", "extra": {"instruction": "", "instruction_format": "x"}}
    )
    with pytest.raises(ValueError, match=r"extra.instruction_format must be a text with \{instruction\}"):
        PromptRenderer(template, newline_merging_tokenizer("x"), max_length=64)


def test_a_template_file_can_use_the_family_features(tmp_path):
    """What the family uses is open to any template file (a rebuilt FlagLLMReranker prompt, here)."""
    path = tmp_path / "flag.toml"
    path.write_text(
        'user = "A: {query}{break}\\n{break}B: {document}{break}\\n{break}Answer Yes or No."\n'
        "verbatim = true\nbos = true\nquery_share = 0.75\nbudget = \"pair_and_tail\"\n"
    )
    template = get_template(str(path), "prompt")
    assert (template.bos, template.query_share, template.budget) == (True, 0.75, "pair_and_tail")
    tokenizer = newline_merging_tokenizer("A: Bxyz.\nAnswer Yes or No")
    renderer = PromptRenderer(template, tokenizer, max_length=8)
    parts = renderer.parts("xyzxyzxyz")  # "A: " and the query: 12 characters, cut to 6
    assert list(parts.head) == [tokenizer.bos_token_id, *tokenizer("A: xyz", add_special_tokens=False)["input_ids"]] + [
        tokenizer.convert_tokens_to_ids("\n")
    ]
    # "B: " and the document are cut to max_length (8), which the pair (BOS, query, "\n": 8, then "B: " and the
    # document) within max_length plus the tail ("\n" and the instruction: 18 characters) does not cut further
    assert len(parts.tail) == 18 and len(parts.label_ids) == 3 and renderer.document_budget(parts) == 5
    ids, cut = renderer.document_ids(Document("xyz" * 10), parts)
    assert ids == tokenizer("B: xyzxy", add_special_tokens=False)["input_ids"] and cut
    # without the tail's allowance ("pair"), the pair alone is within max_length: 20 - 14 leaves "B: " and 3
    pair = PromptRenderer(replace(template, budget="pair"), tokenizer, max_length=20)
    assert pair.document_budget(pair.parts("xyzxyzxyz")) == 3
    with pytest.raises(PromptTooLongError, match="leaves no room for the document within max_length=8"):
        PromptRenderer(replace(template, budget="pair"), tokenizer, max_length=8).parts("xyzxyzxyz")


def test_the_pieces_are_tokenised_as_flag_llm_reranker_tokenises_them(tmp_path):
    """FlagLLMReranker itself on a tokenizer that merges newlines: a query and a passage ending in one."""
    from llmrerank.backends.hf import HFBackend

    pairs = [("what is it?\n", "It is a cat.\n"), ("is it a cat?", "A cat sat.\n\n"), ("cat\n\n", "it is.")]
    text = "".join(q + d for q, d in pairs) + "A: B" + BGE_RERANKER_V2_GEMMA_PROMPT + "Yes"
    tokenizer = newline_merging_tokenizer(text)
    tokenizer.eos_token = "<pad>"
    model = tiny_gemma2(tokenizer, tmp_path)
    want = run_reference(
        {"reference": "flag_llm", "model": str(tmp_path), "runs": [{"pairs": pairs, "max_length": 512}]}
    )[0]
    ranker = PointwiseRanker(HFBackend(model, tokenizer, name="tiny"), family="bge-reranker-v2-gemma")
    assert [list(ranker.encode(q, [d])[0].prompt) for q, d in pairs] == want["ids"]
    got = [s for q, d in pairs for s in ranker.score(q, [d])]
    assert max(abs(a - b) for a, b in zip(got, want["scores"])) <= 1e-4
