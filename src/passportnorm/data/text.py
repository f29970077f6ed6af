"""A real English corpus that ships with every CPython, for the language model (``--dataset pydocs``).

``pydoc_data.topics`` holds the text of the Python Language Reference's topics that ``help()``
shows (about 465 KB on CPython 3.11; the exact text follows the interpreter's version, so numbers
are comparable on one Python version). Read as bytes, it needs no tokenizer: 256 token ids. The text is cut
at 90% (train | test, no window crosses the cut) into windows of ``CONTEXT + 1`` bytes; a window's
first ``CONTEXT`` bytes are the input, the same bytes one place later its labels (next-token
prediction at every position). The seed shifts where the windows start, so seeds see other windows.
"""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from ..errors import DatasetError
from .registry import DatasetSplits, register_dataset

__all__ = ["CONTEXT", "VOCABULARY", "corpus_bytes", "pydocs", "windows"]

CONTEXT = 64  # tokens a model reads at once
VOCABULARY = 256  # byte-level tokens
TRAIN_SHARE = 0.9


def corpus_bytes() -> bytes:
    """The topics' texts in their sorted order, UTF-8 encoded."""
    try:
        from pydoc_data.topics import topics
    except ImportError as error:  # pragma: no cover - part of the standard library
        raise DatasetError("this Python ships without pydoc_data; --dataset pydocs needs it") from error
    return "\n\n".join(topics[name] for name in sorted(topics)).encode("utf-8")


def windows(tokens: torch.Tensor, context: int, offset: int = 0) -> TensorDataset:
    """Non-overlapping ``context + 1`` windows from ``offset``: inputs and next-token labels."""
    usable = (len(tokens) - offset - 1) // context * context
    if usable < context:
        raise DatasetError(f"a text of {len(tokens)} tokens holds no window of {context + 1}")
    span = tokens[offset : offset + usable + 1]
    inputs = span[:-1].reshape(-1, context)
    labels = span[1:].reshape(-1, context)
    return TensorDataset(inputs.clone(), labels.clone())


@register_dataset("pydocs", task="text")
def pydocs(data_dir=None, seed: int = 0) -> DatasetSplits:
    """The Python reference topics as byte windows of 64 tokens: about 6500 train, 730 test."""
    text = corpus_bytes()
    tokens = torch.frombuffer(bytearray(text), dtype=torch.uint8).long()
    cut = int(len(tokens) * TRAIN_SHARE)
    offset = seed % CONTEXT
    return DatasetSplits(
        "pydocs",
        windows(tokens[:cut], CONTEXT, offset),
        windows(tokens[cut:], CONTEXT, offset),
        num_classes=VOCABULARY,
        input_shape=(CONTEXT,),
        task="text",
    )
