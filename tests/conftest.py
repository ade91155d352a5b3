"""Tiny random causal LMs built from a config, with a word-level tokenizer: fast, offline, exact."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import pytest
import torch

from llmrerank.extras import MissingExtraError, require

FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "tiny"

SPECIALS = ["<pad>", "<eos>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
WORDS = (
    "yes no true false query document passage relevant judge search answer reply with or is the to of a "
    "and does please write question based on this you are relevance : ? . , \n how do honey bees make why "
    "volcano erupt sourdough bread rise flower nectar store it in wax combs cat sat mat title "
    "Query Document Passage Does Is Reply Answer Please True You"
).split(" ")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def make_tokenizer(chat: bool = True, extra: Sequence[str] = ()):
    """A word-level tokenizer over WORDS (plus ``extra``), with a small chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(dict.fromkeys(SPECIALS + [w for w in WORDS if w.strip()] + list(extra)))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
        additional_special_tokens=SPECIALS[3:],
    )
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    return tok


# the tiny models' layer sizes: 2 layers of width 32, 4 attention heads of 8, 2 key/value heads
TINY_SIZES = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
)


def make_model(vocab_size: int, arch: str = "qwen2", seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    common = dict(
        vocab_size=vocab_size,
        **TINY_SIZES,
        max_position_embeddings=1024,
        pad_token_id=0,
        eos_token_id=1,
    )
    if arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        model = LlamaForCausalLM(LlamaConfig(**common))
    # Random init is small: scale the output layer so token scores differ clearly.
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    return model.eval()


def smollm2_tokenizer():
    """SmolLM2's packaged BPE tokenizer: a real tokenizer for the model families' parity tests (skips, or fails
    under LLMRERANK_REQUIRE_MODELS, without the preset)."""
    require_preset("smollm2-135m")
    from transformers import AutoTokenizer

    from llmrerank.models import resolve

    return AutoTokenizer.from_pretrained(resolve("smollm2-135m").folder)


FAMILY_ARCHS = {"qwen3": "Qwen3", "qwen2": "Qwen2", "gemma2": "Gemma2"}


def family_model(arch: str, vocab_size: int, seed: int = 0, **config: object):
    """A tiny random causal LM of a model family's architecture (``FAMILY_ARCHS``) at ``TINY_SIZES``; ``config``
    adds to its config."""
    import transformers

    name = FAMILY_ARCHS[arch]
    torch.manual_seed(seed)
    settings = dict(vocab_size=vocab_size, **TINY_SIZES, head_dim=8, **config)
    model_class = getattr(transformers, f"{name}ForCausalLM")
    return model_class(getattr(transformers, f"{name}Config")(**settings)).eval()


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session", params=["qwen2", "llama"])
def backend(request, tokenizer):
    from llmrerank.backends.hf import HFBackend

    return HFBackend(make_model(len(tokenizer), request.param), tokenizer, batch_size=4, name=f"tiny-{request.param}")


@pytest.fixture(scope="session")
def qwen_backend(tokenizer):
    from llmrerank.backends.hf import HFBackend

    return HFBackend(make_model(len(tokenizer)), tokenizer, batch_size=4, name="tiny-qwen2")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """The tiny model saved as a Hugging Face folder, for the CLI.

    Llama, not Qwen2: transformers 5 rebuilds a saved tokenizer as Qwen2Tokenizer (byte-level BPE) from a
    qwen2 config, which would not read our word-level vocabulary back.
    """
    folder = tmp_path_factory.mktemp("tiny-model")
    make_model(len(tokenizer), "llama").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


BEIR_WORDS = (
    "how do honey bees make why volcano erupt sourdough bread rise flower nectar store wax combs cat mat"
).split()


def make_beir(root: Path, n_queries: int, n_docs: int, spare: int = 20, texts: dict[int, str] | None = None) -> Path:
    """A BEIR folder (corpus, queries, qrels, ``run.trec``) of ``n_queries`` queries with ``n_docs`` BM25-style
    candidates each, drawn from ``n_docs + spare`` documents of a few words; ``texts`` replaces some queries'
    text by position. For runs long enough to interrupt, or to spread over workers."""
    (root / "qrels").mkdir(parents=True)
    n = len(BEIR_WORDS)
    corpus = [
        json.dumps({"_id": f"d{i}", "text": " ".join(BEIR_WORDS[(i * 7 + j) % n] for j in range(4 + i % 9))})
        for i in range(n_docs + spare)
    ]
    queries, qrels, run = [], ["query-id\tcorpus-id\tscore"], []
    for i in range(n_queries):
        text = (texts or {}).get(i) or " ".join(BEIR_WORDS[(i + j) % n] for j in range(3 + i % 3))
        queries.append(json.dumps({"_id": f"q{i}", "text": text}))
        qrels.append(f"q{i}\td{i % n_docs}\t1")
        run += [f"q{i} Q0 d{(i + r) % (n_docs + spare)} {r + 1} {100 - r} bm25" for r in range(n_docs)]
    for name, lines in (
        ("corpus.jsonl", corpus),
        ("queries.jsonl", queries),
        ("qrels/test.tsv", qrels),
        ("run.trec", run),
    ):
        (root / name).write_text("\n".join(lines) + "\n")
    return root


def require_preset(name: str) -> None:
    """Skip a real-model test when its package is absent, unless CI demands the models."""
    __tracebackhide__ = True  # a skip names the test, not this line
    from llmrerank.models import PRESETS, ModelNotInstalledError, preset_files

    try:
        preset_files(PRESETS[name])
    except ModelNotInstalledError as e:
        if os.environ.get("LLMRERANK_REQUIRE_MODELS"):
            raise
        pytest.skip(str(e))


def needs(module: str, feature: str, install: str | None = None) -> ModuleType:
    """Import the optional ``module`` for the tests of ``feature``, or skip them, saying what installs it.

    Called at a test module's top it skips the whole module. The reason is the library's own message for a
    missing extra (``LoRA training needs peft: pip install "llmrerank[train]"``), or names ``install`` for a
    test-only reference implementation that no extra provides.
    """
    __tracebackhide__ = True  # a skip names the test that needs the module, not this line
    try:
        return require(module, feature)
    except MissingExtraError as e:
        reason = str(e) if install is None else f"{feature} needs {module}: {install}"
        pytest.skip(reason, allow_module_level=True)
