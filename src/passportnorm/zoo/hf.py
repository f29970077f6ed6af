"""Hugging Face ``transformers`` models by model type: ``hf:llama``, ``hf:gpt2``, ``hf:bert``, ``hf:vit``.

Optional (``pip install 'passportnorm[hf]'``). Each is built from a small config (hidden 64,
2 layers, 4 heads, 256-token vocabulary) with random weights, sized for a CPU: what pairing and
the promises see is the family's structure (pre-norm RMSNorm decoders, GPT-2's Conv1D, BERT's
post-norm LayerNorms, ViT's patches), not its size. A causal LM reads token ids and answers
next-token logits; a vision type classifies images; an encoder (BERT) classifies token sequences.
``transformers`` answers an output object; :class:`LogitsOnly` hands on its logits, so the model
fits the same training, promises and verification as any other.
"""

from __future__ import annotations

import importlib
import types
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .hub import import_torchvision

__all__ = ["HF_PREFIX", "LogitsOnly", "build_hf_model", "hf_task", "is_hf_model", "token_input"]

HF_PREFIX = "hf:"
VOCABULARY = 256  # byte-sized: any text reads as tokens without a tokenizer file
_SMALL = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,  # grouped-query attention where the family has it (Llama, Mistral, Qwen2)
    "head_dim": 16,
    "intermediate_size": 128,
    "vocab_size": VOCABULARY,
    "max_position_embeddings": 128,
    "pad_token_id": 0,  # the families' defaults index a 32k-50k vocabulary; byte 0 (NUL) pads
    "bos_token_id": None,
    "eos_token_id": None,
}
_INSTALL = "pip install 'passportnorm[hf]'"


def is_hf_model(name: str) -> bool:
    return name.startswith(HF_PREFIX)


def _transformers() -> types.ModuleType:
    import_torchvision()  # transformers imports torchvision's transforms (see hub.py)
    try:
        return importlib.import_module("transformers")
    except ModuleNotFoundError as error:
        raise ConfigError(f"transformers is not installed: {_INSTALL}") from error


def _model_type(name: str) -> str:
    model_type = name[len(HF_PREFIX) :]
    known = _transformers().CONFIG_MAPPING
    if model_type not in known:
        raise ConfigError(
            f"transformers has no model type {model_type!r}; use e.g. hf:llama, hf:gpt2, hf:bert, hf:vit"
        )
    return model_type


def _head(model_type: str) -> str:
    names = importlib.import_module("transformers.models.auto.modeling_auto")
    if model_type in names.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES:
        return "AutoModelForImageClassification"
    encoder = model_type in names.MODEL_FOR_MASKED_LM_MAPPING_NAMES  # BERT: also listed as a causal LM
    if model_type in names.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES and encoder:
        return "AutoModelForSequenceClassification"
    if model_type in names.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "AutoModelForCausalLM"
    if model_type in names.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        return "AutoModelForSequenceClassification"
    raise ConfigError(
        f"hf:{model_type} has no image classifier, causal LM or sequence classifier in transformers; "
        "use e.g. hf:llama, hf:gpt2, hf:bert, hf:vit"
    )


def hf_task(name: str) -> str:
    """``image`` for a vision type (it classifies images), ``text`` for the rest (token ids in)."""
    return "image" if _head(_model_type(name)) == "AutoModelForImageClassification" else "text"


def token_input(batch: int = 2, length: int = 16) -> Tensor:
    """Token ids a text model runs on, for pairing and the promises (``length`` tokens)."""
    return torch.arange(batch * length).reshape(batch, length) % VOCABULARY


class LogitsOnly(nn.Module):
    """A ``transformers`` model answering its logits as a tensor (the model is ``.hf``); a causal
    LM's as ``(batch, vocabulary, tokens)``, the layout the zoo's GPT answers (zoo/gpt.py)."""

    def __init__(self, hf: nn.Module) -> None:
        super().__init__()
        self.hf = hf

    def forward(self, inputs: Tensor) -> Tensor:
        if inputs.is_floating_point():
            return self.hf(pixel_values=inputs).logits
        logits = self.hf(input_ids=inputs).logits
        # a causal LM's (batch, tokens, vocabulary) as scores along dim 1, like every model here
        return logits.transpose(1, 2) if logits.ndim == 3 else logits


def build_hf_model(
    name: str, in_channels: int = 3, num_classes: int = 10, image_size: int = 32, **ignored: Any
) -> nn.Module:
    """A randomly initialised ``transformers`` model of type ``hf:TYPE`` from a small config: a causal
    LM over a 256-token vocabulary, or a classifier of ``num_classes`` (images of ``in_channels`` x
    ``image_size``, patches of 4 pixels). ``width`` and ``norm`` of the built-in zoo do not apply."""
    model_type = _model_type(name)
    head = _head(model_type)
    transformers = _transformers()
    options: dict[str, Any] = dict(_SMALL, num_labels=num_classes)
    if head == "AutoModelForImageClassification":
        options |= {"image_size": image_size, "patch_size": 4, "num_channels": in_channels}
    try:
        config = transformers.AutoConfig.for_model(model_type, **options)
        model = getattr(transformers, head).from_config(config)
    except Exception as error:  # noqa: BLE001  (any of the families' own config checks)
        raise ConfigError(f"{name}: the small config does not build ({error}); pick another type") from error
    return LogitsOnly(model)
