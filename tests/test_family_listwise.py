"""The listwise families ``rankzephyr``, ``rankvicuna`` and ``first``, held to rank_llm's own template files.

rank_llm needs vLLM, so it is never imported: its package is installed without dependencies
(``pip install --no-deps rank-llm==0.25.7``) and this test reads its YAML template files and fills them as its
code does, written out below (``SingleTurnListwiseInferenceHandler.generate_prompt``,
``BaseInferenceHandler._convert_doc_to_prompt_content`` and ``_replace_number``, ``RankListwiseOSLLM.create_prompt``
and ``num_output_tokens``), except for ftfy's ``fix_text``, which leaves the plain ASCII text used here alone.
The prompt is the model's chat template over those messages, tokenised whole with the tokenizer's special tokens
(what rank_llm counts and vLLM feeds the model). Where the template files are not installed the tests skip,
saying so; with ``LLMRERANK_REQUIRE_REFS=1`` (CI) they fail instead.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
from pathlib import Path

import pytest

from conftest import require_preset
from llmrerank.prompts import get_template
from llmrerank.prompts.base import SLOT
from llmrerank.prompts.families import FIRST, RANKVICUNA, RANKZEPHYR
from llmrerank.rankers.listwise import ListwiseOptions, ListwiseRanker
from llmrerank.rankers.pointwise import PointwiseOptions
from llmrerank.types import Document

RANK_LLM = "rank-llm==0.25.7"
ALPH_START_IDX = ord("A") - 1
WORDS = "honey bees make wax combs to store nectar while volcanoes erupt and sourdough bread rises slowly".split()


def rank_llm_template(name: str) -> dict:
    """One of rank_llm's template files, found without importing the package (its import needs vLLM)."""
    spec = importlib.util.find_spec("rank_llm")
    if spec is None or not spec.submodule_search_locations:
        why = f"rank_llm's template files are not installed (pip install --no-deps {RANK_LLM}; never imported)"
        if os.environ.get("LLMRERANK_REQUIRE_REFS"):
            pytest.fail(why + ", and LLMRERANK_REQUIRE_REFS is set")
        pytest.skip(why)
    import yaml

    folder = Path(next(iter(spec.submodule_search_locations))) / "rerank" / "prompt_templates"
    return yaml.safe_load((folder / f"{name}.yaml").read_text(encoding="utf-8"))


def _replace_number(s: str) -> str:
    return re.sub(r"\[(\d+)\]", r"(\1)", s)


def _content(doc: dict, max_length: float) -> str:
    # _convert_doc_to_prompt_content (its ftfy fix_text left out: a no-op on this text)
    content = doc["text"]
    if "title" in doc and doc["title"]:
        content = "Title: " + doc["title"] + " " + "Content: " + content
    content = content.strip()
    content = " ".join(content.split()[: int(max_length)])
    return _replace_number(content)


def rank_llm_messages(template: dict, query: str, docs: list[dict], max_length: float, use_alpha: bool) -> list:
    """SingleTurnListwiseInferenceHandler.generate_prompt for one window (no few-shot examples)."""
    query = _replace_number(query)
    num = len(docs)
    messages = [{"role": "system", "content": m} for m in [template.get("system_message", "")] if m]
    prefix = template["prefix"].format(num=num, query=query)
    suffix = template["suffix"].format(num=num, query=query)
    body = ""
    for rank, doc in enumerate(docs, start=1):
        identifier = chr(ALPH_START_IDX + rank) if use_alpha else str(rank)
        body += template["body"].format(rank=identifier, candidate=_content(doc, max_length), score="0.000")
    messages.append({"role": "user", "content": prefix + body + suffix})
    return messages


def rank_llm_output_tokens(tokenizer, window: int, use_alpha: bool) -> int:
    """RankListwiseOSLLM.num_output_tokens."""
    ids = [f"[{chr(ALPH_START_IDX + i + 1)}]" if use_alpha else f"[{i + 1}]" for i in range(window)]
    return len(tokenizer.encode(" > ".join(ids))) - 1


def rank_llm_prompt(tokenizer, template: dict, query: str, docs: list[dict], use_alpha: bool, context: int):
    """RankListwiseOSLLM.create_prompt: the word budget lowered until the prompt leaves the answer's tokens."""
    window = len(docs)
    max_length = 300 * (20 / window)
    reserve = rank_llm_output_tokens(tokenizer, window, use_alpha)
    while True:
        messages = rank_llm_messages(template, query, docs, max_length, use_alpha)
        prompt = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
        )
        num_tokens = len(tokenizer.encode(prompt))
        if num_tokens <= context - reserve:
            return messages, prompt, max_length, reserve
        max_length -= max(1, (num_tokens - context + reserve) // (window * 4))


def smollm2_tokenizer(bos: bool):
    """SmolLM2's packaged tokenizer (a chat template, no BOS); with ``bos``, one that puts a BOS token before a
    text, as Llama's and Mistral's do (so the special tokens rank_llm's tokenisation adds are covered)."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    from llmrerank.models import resolve

    require_preset("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(resolve("smollm2-135m").folder)
    if bos:
        tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
            single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 0)]
        )
    return tokenizer


_BACKENDS: dict[int, object] = {}


def tiny_backend(tokenizer):
    """A tiny random Llama over ``tokenizer`` (rendering needs only its tokenizer; ranking runs it)."""
    from conftest import make_model
    from llmrerank.backends.hf import HFBackend

    if len(tokenizer) not in _BACKENDS:
        _BACKENDS[len(tokenizer)] = make_model(len(tokenizer), "llama")
    return HFBackend(_BACKENDS[len(tokenizer)], tokenizer, batch_size=4, name="tiny-llama")


def words(n: int, start: int = 0) -> str:
    return " ".join(WORDS[(start + i) % len(WORDS)] for i in range(n))


def window(case: str) -> tuple[str, list[dict], int]:
    """(query, passages, context size) of a test window."""
    if case == "short":  # titles, identifiers in the text, runs of whitespace and line breaks, braces
        docs = [
            {"title": "Bees", "text": "  Honey bees make honey\n\nfrom nectar [3] and store it in wax combs.  "},
            {"title": "", "text": "Volcanoes erupt when {pressure} builds up.\tSee [12] for more."},
            {"title": "Bread", "text": "Sourdough bread rises because of wild yeast."},
            {"title": "", "text": "The Eiffel Tower is 330 metres tall."},
            {"title": "", "text": "Cats sleep for most of the day."},
        ]
        return "how do bees make honey [2] {x}", docs, 4096
    if case == "over the word budget":  # 20 passages: 300 words each at most, the context not reached
        docs = [{"title": "", "text": words(320 if i == 3 else 12, i)} for i in range(20)]
        return "why do volcanoes erupt", docs, 4096
    docs = [{"title": f"T{i}", "text": words(700, i)} for i in range(4)]  # the context lowers the budget
    return "why does bread rise", docs, 1024


FAMILY_CASES = [
    ("rankzephyr", "rank_zephyr_template", False),
    ("rankvicuna", "rank_zephyr_template", False),
    ("first", "rank_zephyr_alpha_template", True),
]


@pytest.mark.model
@pytest.mark.parametrize("bos", [False, True], ids=["no-bos", "bos"])
@pytest.mark.parametrize("case", ["short", "over the word budget", "context"])
@pytest.mark.parametrize(("family", "file", "use_alpha"), FAMILY_CASES, ids=[c[0] for c in FAMILY_CASES])
def test_a_window_renders_as_rank_llm_fills_its_template(family, file, use_alpha, case, bos):
    tokenizer = smollm2_tokenizer(bos)
    template = rank_llm_template(file)
    query, docs, context = window(case)
    messages, prompt, max_length, reserve = rank_llm_prompt(tokenizer, template, query, docs, use_alpha, context)
    ranker = ListwiseRanker(tiny_backend(tokenizer), family=family, max_length=context, window_size=20)
    labels = ranker.labels[: len(docs)]
    documents = [Document(id=str(i), text=d["text"], title=d["title"]) for i, d in enumerate(docs)]
    rendered = ranker.renderer.render(query, documents, labels, reserve)
    assert list(rendered.ids) == tokenizer.encode(prompt)  # token for token, special tokens included
    assert rendered.passage_budget == int(max_length)
    assert rendered.truncated == sum(len(d["text"].split()) + 2 * bool(d["title"]) > int(max_length) for d in docs)
    if case != "short":
        assert rendered.truncated > 0
    # the messages are rank_llm's, each passage as rank_llm shows it
    shown = iter(_content(d, max_length) for d in docs)
    ours = [
        {**m, "content": re.sub(re.escape(SLOT), lambda _: next(shown), m["content"])}
        for m in ranker.renderer.messages(query, labels)
    ]
    assert ours == messages
    if family == "first" and case != "context":
        # FIRST reads the identifier after "[", the token rank_llm's model writes first (with the prompt at the
        # edge of the context, the opener's token can lower the word budget one step more than rank_llm's)
        with_opener = ranker.renderer.render(query, documents, labels, reserve, ranker.opener)
        assert ranker.opener == "[" and list(with_opener.ids) == tokenizer.encode(prompt + "[")


@pytest.mark.model
@pytest.mark.parametrize("family", ["rankzephyr", "first"])
def test_a_family_ranks_a_list_end_to_end(family):
    tokenizer = smollm2_tokenizer(bos=False)
    ranker = ListwiseRanker(tiny_backend(tokenizer), family=family, window_size=4, step=2)
    query, docs, _ = window("short")
    ranking = ranker.rank(query, [Document(id=str(i), text=d["text"], title=d["title"]) for i, d in enumerate(docs)])
    assert sorted(ranking.ids) == [str(i) for i in range(5)] and ranking.metadata["llm_calls"] == 2
    assert ranker.describe()["family"] == family


def test_the_family_templates_are_rank_llms_files_word_for_word():
    """The template fields against the YAML files: prefix (less its final line break, the separator's), body,
    suffix and system message."""
    for ours, file in (
        (RANKZEPHYR, "rank_zephyr_template"),
        (RANKVICUNA, "rank_zephyr_template"),
        (FIRST, "rank_zephyr_alpha_template"),
    ):
        theirs = rank_llm_template(file)
        assert theirs["method"] == "singleturn_listwise"
        assert ours.system == theirs["system_message"]
        assert ours.intro + ours.separator == theirs["prefix"]
        assert ours.passage.replace("{id}", "{rank}").replace("{passage}", "{candidate}") + "\n" == theirs["body"]
        assert ours.outro == theirs["suffix"]
        assert ours.title_format == "Title: {title} Content: {text}" and ours.fill_rule == "rank_llm"
    assert importlib.metadata.version("rank-llm") == "0.25.7"


def test_a_family_sets_and_fixes_its_options():
    options = ListwiseOptions.build({"family": "first"})
    assert (options.template, options.identifiers, options.decoding) == (FIRST, "letters", "first")
    assert ListwiseOptions.build(options.to_dict()) == options
    zephyr = ListwiseOptions.build({"family": "rankzephyr", "window_size": 10, "step": 5})
    assert (zephyr.template, zephyr.identifiers, zephyr.decoding) == (RANKZEPHYR, "numbers", "generate")
    assert get_template("rankzephyr", "listwise") == RANKZEPHYR
    assert get_template("rankzephyr-paraphrase", "listwise").fill_rule == "tokens"  # the default, renamed
    with pytest.raises(ValueError, match="family 'first' fixes decoding"):
        ListwiseOptions.build({"family": "first", "decoding": "generate"})
    with pytest.raises(ValueError, match="family 'rankzephyr' fixes template"):
        ListwiseOptions.build({"family": "rankzephyr", "template": "rankgpt"})
    with pytest.raises(ValueError, match="unknown family 'rankzephyr' of method 'pointwise'"):
        PointwiseOptions.build({"family": "rankzephyr"})
    with pytest.raises(ValueError, match="unknown family 'rankllama' of method 'listwise'"):
        ListwiseOptions.build({"family": "rankllama"})


def test_a_window_too_long_for_its_fixed_text_is_refused(tokenizer):
    from llmrerank.prompts import ListwiseRenderer, PromptTooLongError

    renderer = ListwiseRenderer(RANKZEPHYR, tokenizer, max_length=40)
    docs = [Document(id="a", text="honey bees"), Document(id="b", text="volcano")]
    with pytest.raises(PromptTooLongError, match="no room for the passages within max_length=40"):
        renderer.render("how do bees make honey", docs, ["1", "2"])
