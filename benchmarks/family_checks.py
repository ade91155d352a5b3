"""``llmrerank check-model`` on a tiny random model of each family's architecture, as docs/models.md shows it.

None of the families' real weights are available offline here, so each family is checked on a tiny random model
of its architecture (2 layers, hidden size 32, seed 0) over SmolLM2's packaged tokenizer, written to a temporary
folder with ``save_pretrained`` and the tokenizer beside it:

- ``qwen3-reranker``: Qwen3; ``bge-reranker-v2-gemma``: Gemma2; ``mxbai-rerank-v2``: Qwen2;
- ``rankllama``: Llama with a RankLLaMA-layout peft adapter (LoRA over a one-label sequence classifier, the
  ``score`` layer saved with it, random non-zero LoRA B and score weights, as ``tests/test_family_rankllama.py``
  builds it);
- ``rankzephyr`` and ``first``: Mistral (RankZephyr and FIRST are Mistral models); ``rankvicuna``: Llama.

Each family's check runs as a subprocess of this interpreter (``python -m llmrerank.cli check-model``), once as
text and once with ``--json``. The outputs show the mechanics: an untrained random model is expected to fail a
family's ``answer_mass`` (it does not answer in the family's format) and to rank poorly. The temporary
folders are written as placeholders (``TINY_QWEN3``, ...) in the printed commands and outputs::

    python benchmarks/family_checks.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from _common import RESULTS, Report, environment, header, markdown_table

PRESET = "smollm2-135m"  # the packaged tokenizer every tiny model uses
SEED = 0
MAX_LENGTH = 256
RANKLLAMA_TARGETS = ["q_proj", "v_proj", "o_proj", "down_proj", "up_proj", "gate_proj"]  # RankLLaMA's LoRA targets
ADAPTER = "TINY_RANKLLAMA_ADAPTER"


@dataclass(frozen=True)
class Family:
    """A family checked on a tiny ``arch`` model (the folder written as ``placeholder``)."""

    name: str
    method: str
    arch: str
    adapter: bool = False

    @property
    def placeholder(self) -> str:
        return f"TINY_{self.arch.upper()}"


FAMILIES = (
    Family("qwen3-reranker", "pointwise", "qwen3"),
    Family("bge-reranker-v2-gemma", "pointwise", "gemma2"),
    Family("mxbai-rerank-v2", "pointwise", "qwen2"),
    Family("rankllama", "pointwise", "llama", adapter=True),
    Family("rankzephyr", "listwise", "mistral"),
    Family("rankvicuna", "listwise", "llama"),
    Family("first", "listwise", "mistral"),
)

ARCHES = {"qwen3": "Qwen3", "gemma2": "Gemma2", "qwen2": "Qwen2", "llama": "Llama", "mistral": "Mistral"}


def tiny_config(arch: str, tokenizer: Any) -> Any:
    """The tests' tiny configuration of ``arch`` for ``tokenizer``'s vocabulary."""
    import transformers

    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if arch in ("qwen3", "gemma2"):
        common["head_dim"] = 8
    if arch == "qwen2":
        common["tie_word_embeddings"] = False
    return getattr(transformers, f"{ARCHES[arch]}Config")(**common)


def save_tiny(arch: str, tokenizer: Any, folder: Path) -> Path:
    """A tiny random causal LM of ``arch`` (seeded), its output layer scaled by 20 as the tests scale it (so that
    token scores differ clearly), written with ``tokenizer`` to ``folder``."""
    import transformers

    torch.manual_seed(SEED)
    model = getattr(transformers, f"{ARCHES[arch]}ForCausalLM")(tiny_config(arch, tokenizer)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_rankllama_adapter(base: Path, folder: Path) -> Path:
    """A RankLLaMA-layout adapter over ``base``: peft LoRA (task_type SEQ_CLS) over a one-label sequence
    classifier, the ``score`` layer saved with it; the LoRA B and score weights random and non-zero (seeded)."""
    import peft
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    config = peft.LoraConfig(task_type=peft.TaskType.SEQ_CLS, r=4, lora_alpha=8, target_modules=RANKLLAMA_TARGETS)
    adapted = peft.get_peft_model(model, config)
    generator = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_B" in name or "score" in name:  # lora_B starts at zero: make the adapter change the model
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    adapted.save_pretrained(folder)
    return folder


def check_argv(family: Family, model: str, adapter: str | None) -> list[str]:
    """``check-model``'s arguments for ``family`` on ``model`` (and ``adapter``)."""
    argv = ["check-model", "--model", model, "--method", family.method, "--family", family.name]
    if adapter is not None:
        argv += ["--adapter", adapter]
    return argv + ["--max-length", str(MAX_LENGTH), "--dtype", "float32"]


def run_check(argv: list[str], places: dict[str, str]) -> tuple[int, str, float]:
    """Run ``llmrerank <argv>`` in a subprocess: its exit status, its output with each folder of ``places``
    written as its placeholder, and the seconds it took."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "llmrerank.cli", *argv], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    out = done.stdout
    if done.returncode not in (0, 1):  # 2 or a crash: bad input or a bug, not a check's verdict
        out += done.stderr
    for path, placeholder in sorted(places.items(), key=lambda kv: -len(kv[0])):
        out = out.replace(path, placeholder)
    return done.returncode, out.rstrip("\n"), seconds


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "family_checks.json")
    parser.add_argument("--families", nargs="+", choices=[f.name for f in FAMILIES], help="only these families")
    args = parser.parse_args(argv)
    from transformers import AutoTokenizer

    from llmrerank.models import resolve

    families = [f for f in FAMILIES if not args.families or f.name in args.families]
    report = Report(
        args.out,
        {
            **header("family_checks", tokenizer=PRESET, max_length=MAX_LENGTH, dtype="float32", seed=SEED),
            "environment": environment(),
            "note": "tiny random models (2 layers, hidden size 32): the checks show the mechanics, not a real "
            "model's behaviour; no family's real weights are available offline here",
            "families": [],
        },
    )
    tokenizer = AutoTokenizer.from_pretrained(resolve(PRESET).folder)
    rows = [["family", "model", "pass", "warn", "fail", "skip", "exit"]]
    with tempfile.TemporaryDirectory(prefix="family-checks-") as tmp:
        root = Path(tmp)
        folders: dict[str, Path] = {}
        places: dict[str, str] = {}
        for family in families:
            if family.arch not in folders:
                folders[family.arch] = save_tiny(family.arch, tokenizer, root / family.placeholder)
                places[str(folders[family.arch])] = family.placeholder
            adapter = None
            if family.adapter:
                adapter = save_rankllama_adapter(folders[family.arch], root / ADAPTER)
                places[str(adapter)] = ADAPTER
            check = check_argv(family, str(folders[family.arch]), None if adapter is None else str(adapter))
            shown = check_argv(family, family.placeholder, None if adapter is None else ADAPTER)
            command = "llmrerank " + " ".join(shown)
            status, text, seconds = run_check(check, places)
            json_status, json_text, _ = run_check([*check, "--json"], places)
            print(f"$ {command}\n{text}\n(exit status {status})\n", flush=True)
            checks = json.loads(json_text) if json_status in (0, 1) else None
            model = ARCHES[family.arch] + (" + RankLLaMA-layout adapter" if family.adapter else "")
            report.result["families"].append(
                {
                    "family": family.name,
                    "method": family.method,
                    "model": model,
                    "command": command,
                    "exit_status": status,
                    "json_exit_status": json_status,
                    "seconds": round(seconds, 1),
                    "output": text,
                    "checks": checks if checks is not None else json_text,
                }
            )
            report.write()
            counts = Counter(c["status"] for c in checks or [])
            rows.append([family.name, model, *(str(counts[s]) for s in ("pass", "warn", "fail", "skip")), str(status)])
    return report.finish("\n".join(markdown_table(rows)))


if __name__ == "__main__":
    main()
