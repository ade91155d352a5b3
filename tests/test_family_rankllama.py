"""The ``rankllama`` family, held to the castorini/rankllama-v1-7b-lora-passage model card's code.

The card loads a peft LoRA adapter (task_type SEQ_CLS, the ``score`` layer saved with it) onto
``AutoModelForSequenceClassification(num_labels=1)``, merges it, tokenises ``tokenizer(f'query: {query}',
f'document: {title} {passage}</s>')`` and reads ``logits[0][0]``. Here the base is a tiny random Llama, the adapter
is built and saved with peft as RankLLaMA's was (random, non-zero LoRA B and score weights), and the tokenizer is
SmolLM2's packaged one, as it is and with Llama-2's pair template (BOS before each text) put on it, so both a
tokenizer that adds nothing to a pair and one that adds Llama-2's tokens are covered. The card's ``</s>`` is
Llama-2's EOS; the card's code below writes the tokenizer's EOS token there.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import needs, require_preset
from llmrerank.models import ModelLoadError
from llmrerank.prompts.families import RANKLLAMA
from llmrerank.rankers.pointwise import PointwiseOptions, PointwiseRanker
from llmrerank.types import Document

TARGETS = ["q_proj", "v_proj", "o_proj", "down_proj", "up_proj", "gate_proj"]  # RankLLaMA's LoRA targets

DOCS = [
    ("how long do fleas live", "Fleas", "Adult fleas live two to three months on a host, feeding on blood."),
    ("how long do fleas live", "", "Concrete floors cost 2 to 6 dollars per square foot, installed."),
    ("what is the boiling point of water", "Water", "At sea level, pure water boils at 100 degrees Celsius."),
    ("what is the boiling point of water", "", "The Eiffel Tower is 330 metres tall.\nIt was finished in 1889."),
]


def llama_config(vocab_size: int, hidden: int = 32, layers: int = 2):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
    )


def smollm2_tokenizer(llama_pair: bool):
    """SmolLM2's packaged tokenizer; with ``llama_pair``, Llama-2's pair template: BOS before each text."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    from llmrerank.models import resolve

    tokenizer = AutoTokenizer.from_pretrained(resolve("smollm2-135m").folder)
    if llama_pair:
        bos = tokenizer.bos_token
        tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1", special_tokens=[(bos, tokenizer.bos_token_id)]
        )
    return tokenizer


def save_base(folder: Path, vocab_size: int, seed: int = 0, **config) -> Path:
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    LlamaForCausalLM(llama_config(vocab_size, **config)).save_pretrained(folder)
    return folder


def save_adapter(base: Path, folder: Path, seed: int = 1) -> Path:
    """A RankLLaMA-layout adapter: LoRA over a one-label sequence classifier, the score layer saved with it."""
    peft = needs("peft", "RankLLaMA adapters", "llmrerank[train]")
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    config = peft.LoraConfig(task_type=peft.TaskType.SEQ_CLS, r=4, lora_alpha=8, target_modules=TARGETS)
    adapted = peft.get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_B" in name or "score" in name:  # lora_B starts at zero: make the adapter change the model
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    adapted.save_pretrained(folder)
    return folder


def card_scores(adapter: Path, tokenizer, docs) -> tuple[list[list[int]], list[float]]:
    """The model card's code: the adapter merged into the sequence classifier, one pair at a time."""
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForSequenceClassification

    config = PeftConfig.from_pretrained(str(adapter))
    base = AutoModelForSequenceClassification.from_pretrained(config.base_model_name_or_path, num_labels=1)
    model = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload().eval()
    ids, scores = [], []
    for query, title, passage in docs:
        inputs = tokenizer(f"query: {query}", f"document: {title} {passage}{tokenizer.eos_token}", return_tensors="pt")
        with torch.no_grad():
            scores.append(model(**inputs).logits[0][0].item())
        ids.append(inputs["input_ids"][0].tolist())
    return ids, scores


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    require_preset("smollm2-135m")
    root = tmp_path_factory.mktemp("rankllama")
    tokenizer = smollm2_tokenizer(llama_pair=False)
    base = save_base(root / "base", len(tokenizer))
    tokenizer.save_pretrained(base)
    return base, save_adapter(base, root / "adapter")


def ours(base: Path, tokenizer, **options) -> PointwiseRanker:
    from transformers import AutoModelForCausalLM

    from llmrerank.backends.hf import HFBackend

    model = AutoModelForCausalLM.from_pretrained(base).eval()
    return PointwiseRanker(HFBackend(model, tokenizer, batch_size=3, name="tiny-llama"), **options)


@pytest.mark.model
@pytest.mark.parametrize("llama_pair", [False, True], ids=["smollm2-pair", "llama2-pair"])
def test_rankllama_renders_and_scores_as_its_model_card(folders, llama_pair):
    base, adapter = folders
    tokenizer = smollm2_tokenizer(llama_pair)
    want_ids, want = card_scores(adapter, tokenizer, DOCS)
    if llama_pair:
        assert all(ids.count(tokenizer.bos_token_id) == 2 for ids in want_ids)  # the pair's BOS tokens
    ranker = ours(base, tokenizer, family="rankllama", adapter=str(adapter))
    docs = [Document(id=str(i), text=p, title=t) for i, (_, t, p) in enumerate(DOCS)]
    got_ids = [list(ranker.encode(q, [d])[0].prompt) for (q, _, _), d in zip(DOCS, docs)]
    assert got_ids == want_ids  # token for token, the empty title's double space included
    got = [s for (q, _, _), d in zip(DOCS, docs) for s in ranker.score(q, [d])]
    assert max(abs(a - b) for a, b in zip(got, want)) <= 1e-4
    assert len(set(round(s, 3) for s in want)) == len(want)  # the scores tell the documents apart
    # batched as the ranker batches them (left padding, several documents), the same scores
    batched = ranker.score(DOCS[0][0], docs[:2]) + ranker.score(DOCS[2][0], docs[2:])
    assert max(abs(a - b) for a, b in zip(batched, want)) <= 1e-4


@pytest.mark.model
def test_the_public_factory_loads_the_base_and_the_adapter(folders, tmp_path):
    from llmrerank import Reranker

    base, adapter = folders
    tokenizer = smollm2_tokenizer(llama_pair=False)
    _, want = card_scores(adapter, tokenizer, DOCS[:2])
    ranker = Reranker("pointwise", model=str(base), family="rankllama", adapter=str(adapter))
    docs = [Document(id=str(i), text=p, title=t) for i, (_, t, p) in enumerate(DOCS[:2])]
    assert max(abs(a - b) for a, b in zip(ranker.score(DOCS[0][0], docs), want)) <= 1e-4
    config = ranker.config()
    assert config["options"]["adapter"] == str(adapter) and config["options"]["family"] == "rankllama"
    # a second ranker on the same backend finds the adapter merged already, and refuses another one
    again = PointwiseRanker(ranker.backend, family="rankllama", adapter=str(adapter))
    assert again.score(DOCS[0][0], docs) == pytest.approx(want, abs=1e-4)
    other = save_adapter(base, tmp_path / "other", seed=2)
    with pytest.raises(ValueError, match="already has the adapter .* merged in"):
        PointwiseRanker(ranker.backend, family="rankllama", adapter=str(other))


def test_the_rankllama_template_is_the_cards_text_pair(tokenizer):
    from llmrerank.prompts import PromptRenderer

    renderer = PromptRenderer(RANKLLAMA, tokenizer, max_length=64)
    assert renderer.text_around_document("cat") == ("query: catdocument: ", "") and not renderer.use_chat
    assert RANKLLAMA.document_text(Document(id="d", text="a b")) == " a b"  # the card's f"{title} {passage}"
    assert RANKLLAMA.document_text(Document(id="d", text="a b", title="t")) == "t a b"
    options = PointwiseOptions.build({"family": "rankllama"})
    assert options.template == RANKLLAMA and options.head == "dense"
    assert PointwiseOptions.build(options.to_dict()) == options


def test_a_text_pair_template_is_checked():
    from llmrerank.prompts import PromptTemplate

    with pytest.raises(ValueError, match="appears once, in text_pair"):
        PromptTemplate(name="t", user="query: {query} {document}", text_pair="document: {document}")
    with pytest.raises(ValueError, match="no system, assistant or target"):
        PromptTemplate(name="t", user="query: {query}", text_pair="document: {document}", assistant="Score:")


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"family": "rankllama", "head": "tokens"}, "family 'rankllama' fixes head"),
        ({"adapter": "/x"}, "adapter"),  # the tokens head reads no adapter
    ],
)
def test_options_that_disagree_are_refused(given, message):
    with pytest.raises(ValueError, match=message):
        PointwiseOptions.build(given)


def _without_score(adapter: Path, folder: Path) -> Path:
    from safetensors.torch import load_file, save_file

    folder.mkdir()
    (folder / "adapter_config.json").write_text((adapter / "adapter_config.json").read_text())
    state = load_file(str(adapter / "adapter_model.safetensors"))
    save_file({k: v for k, v in state.items() if "score" not in k}, str(folder / "adapter_model.safetensors"))
    return folder


def _causal_lm_adapter(adapter: Path, folder: Path) -> Path:
    import shutil

    shutil.copytree(adapter, folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "task_type": "CAUSAL_LM"}))
    return folder


@pytest.mark.model
@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no score", "the adapter has no score layer"),
        ("causal", "task_type 'CAUSAL_LM'"),
        ("wider base", "its score layer reads 32 hidden units, the model has 48"),
        ("deeper base", "LoRA weight\\(s\\) the model expects are not in the file"),
        ("missing", "adapter folder not found"),
    ],
)
def test_an_adapter_that_does_not_fit_is_a_clear_error(folders, tmp_path, case, message):
    base, adapter = folders
    tokenizer = smollm2_tokenizer(llama_pair=False)
    if case == "no score":
        adapter = _without_score(adapter, tmp_path / "a")
    elif case == "causal":
        adapter = _causal_lm_adapter(adapter, tmp_path / "a")
    elif case == "wider base":
        base = save_base(tmp_path / "b", len(tokenizer), hidden=48)
    elif case == "deeper base":
        base = save_base(tmp_path / "b", len(tokenizer), layers=3)
    elif case == "missing":
        adapter = tmp_path / "nowhere"
    error = FileNotFoundError if case == "missing" else ModelLoadError
    with pytest.raises(error, match=message):
        ours(base, tokenizer, family="rankllama", adapter=str(adapter))


@pytest.mark.model
@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_a_model_trained_from_the_adapter_reloads_as_trained(folders, tmp_path, monkeypatch, lora):
    """Fine-tuning RankLLaMA on one's own data: the published adapter is merged before the trained LoRA wraps the
    model, the head starts from its score layer, and the trained folder restores the trained scores (under LoRA:
    the base, the trained LoRA and the adapter's, merged in any order, as the sums commute; full weights: the
    adapter is inside them and is not merged twice)."""
    needs("peft", "training")
    from conftest import TINY
    from llmrerank import Reranker
    from llmrerank.train.config import TrainConfig
    from llmrerank.train.trainer import Trainer

    base, adapter = folders
    monkeypatch.chdir(adapter.parent)  # the adapter given by a relative path: the record makes it absolute
    options = {"family": "rankllama", "adapter": adapter.name, "max_length": 96}
    config = TrainConfig.from_dict(
        dict(
            model=str(base), data=str(TINY), split="test", run=str(TINY / "run.trec"), group_size=3, top_k=4,
            groups_per_batch=1, grad_accum=1, max_steps=2, save_every=2, learning_rate=5e-3, lora=lora,
            output_dir=str(tmp_path / "run"), seed=0, method="pointwise", options=options, loss="ranknet",
        )
    )  # fmt: skip
    trainer = Trainer(config)
    result = trainer.train(progress=False)
    trainer.backend.model.eval()
    docs = [Document(id=str(i), text=p, title=t) for i, (_, t, p) in enumerate(DOCS[:2])]
    trained = trainer.ranker.score(DOCS[0][0], docs)
    untrained = ours(base, smollm2_tokenizer(llama_pair=False), **options).score(DOCS[0][0], docs)
    assert max(abs(a - b) for a, b in zip(trained, untrained)) > 1e-2  # training moved the scores
    record = json.loads((result.model_dir / "llmrerank.json").read_text())
    if lora:
        assert record["options"]["adapter"] == str(adapter.resolve())
    else:
        assert "adapter" not in record["options"]
    monkeypatch.chdir(tmp_path)
    restored = Reranker(model=str(result.model_dir), dtype="float32")
    assert restored.options.head_weights is not None
    assert restored.score(DOCS[0][0], docs) == pytest.approx(trained, abs=1e-4)


@pytest.mark.model
def test_served_rankers_with_and_without_an_adapter_do_not_share_merged_weights(folders):
    """The adapter's LoRA is merged into its backend's weights: a served ranker without it (or with another) on
    the same model gets its own copy, so its scores are the plain model's."""
    from llmrerank.serve.service import load_rankers

    base, adapter = folders
    spelled = str(adapter.parent / ".." / adapter.parent.name / adapter.name)  # the same folder, another path
    rankers = load_rankers(
        [
            {"name": "rankllama", "method": "pointwise", "model": str(base),
             "options": {"family": "rankllama", "adapter": str(adapter)}},
            {"name": "ql", "method": "likelihood", "model": str(base), "options": {"max_length": 96},
             "backend": {"dtype": "float32"}},
            {"name": "rankllama-again", "method": "pointwise", "model": str(base),
             "options": {"family": "rankllama", "adapter": spelled}},
        ]
    )  # fmt: skip
    assert rankers["ql"].backend is not rankers["rankllama"].backend
    assert rankers["rankllama-again"].backend is rankers["rankllama"].backend  # the same adapter, however spelled
    docs = [Document(id=str(i), text=p, title=t) for i, (_, t, p) in enumerate(DOCS[:2])]
    plain = ours(base, smollm2_tokenizer(llama_pair=False))
    from llmrerank.rankers import LikelihoodRanker

    want = LikelihoodRanker(plain.backend, max_length=96).score(DOCS[0][0], docs)
    assert rankers["ql"].score(DOCS[0][0], docs) == pytest.approx(want, abs=1e-4)
    _, card = card_scores(adapter, smollm2_tokenizer(llama_pair=False), DOCS[:2])
    assert rankers["rankllama"].score(DOCS[0][0], docs) == pytest.approx(card, abs=1e-4)
