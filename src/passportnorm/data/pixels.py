"""Between the tensors a model sees and the 8-bit images an image API accepts.

Image APIs (TorchServe's ``/predictions``) take encoded images and normalise them in the server's
handler with the dataset's mean and std. To send a normalised trigger, undo that normalisation,
clip to [0, 1] and round to 8 bits; the server's handler redoes it. What clipping and rounding
change is reported (``PixelScale.encode`` returns it), since a trigger the suspect never sees
exactly is weaker evidence.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["PixelScale", "decode_image", "encode_png"]


@dataclass(frozen=True)
class PixelScale:
    """``model input = (pixel - shift) * gain`` per channel, read off the dataset's ``normalize``."""

    shift: Tensor  # (C, 1, 1)
    gain: Tensor  # (C, 1, 1)

    @classmethod
    def of(cls, normalize: Callable[[Tensor], Tensor], input_shape: tuple[int, ...]) -> PixelScale:
        """Probe an affine per-channel ``normalize`` at pixel values 0 and 1."""
        channels = input_shape[0]
        zero, one = (normalize(torch.full((channels, 1, 1), v)).reshape(channels, 1, 1) for v in (0.0, 1.0))
        gain = one - zero
        if bool((gain == 0).any()):
            raise ValueError("the dataset's normalisation maps every pixel value to the same input")
        return cls(shift=-zero / gain, gain=gain)

    @classmethod
    def of_dataset(cls, splits: Any) -> PixelScale | None:
        """The scale of a loaded dataset (DatasetSplits); None when its inputs are not images."""
        if splits.normalize is None or splits.task != "image":
            return None
        return cls.of(splits.normalize, tuple(splits.input_shape))

    def to_pixels(self, inputs: Tensor) -> tuple[Tensor, float]:
        """8-bit images (uint8, same shape) and the share of values clipping had to change."""
        pixels = inputs / self.gain + self.shift
        clipped = float(((pixels < 0) | (pixels > 1)).float().mean())
        return (pixels.clamp(0, 1) * 255).round().to(torch.uint8), clipped

    def to_inputs(self, pixels: Tensor) -> Tensor:
        return (pixels.float() / 255 - self.shift) * self.gain


def encode_png(image: Tensor) -> bytes:
    """One uint8 image (C, H, W), C = 1 or 3, as PNG bytes (lossless: the server sees these pixels)."""
    from PIL import Image

    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"an image must be (1 or 3, H, W); got shape {tuple(image.shape)}")
    array = image.permute(1, 2, 0).numpy()
    picture = Image.fromarray(array[:, :, 0] if image.shape[0] == 1 else array)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def decode_image(data: bytes, shape: tuple[int, ...]) -> Tensor:
    """uint8 (C, H, W) from PNG/JPEG/... bytes; ValueError naming what does not fit ``shape``."""
    from PIL import Image, UnidentifiedImageError

    try:
        picture: Any = Image.open(io.BytesIO(data))
        picture.load()
    except (UnidentifiedImageError, OSError):
        raise ValueError("the body is not an image PIL can read (send PNG or JPEG bytes)") from None
    channels, height, width = shape
    if (picture.height, picture.width) != (height, width):
        raise ValueError(f"the image is {picture.width}x{picture.height}; this model takes {width}x{height}")
    picture = picture.convert("L" if channels == 1 else "RGB")
    array = torch.frombuffer(bytearray(picture.tobytes()), dtype=torch.uint8)
    return array.reshape(height, width, channels).permute(2, 0, 1).contiguous()
