"""Turning user input into an RGB image.

Accepted sources (``ImageSource``):

- ``str`` / ``pathlib.Path``: an image file PIL can read (first frame of multi-frame files);
- ``bytes`` / ``bytearray`` / ``memoryview``: an encoded image (JPEG, PNG, ...);
- ``PIL.Image.Image`` of any common mode;
- ``np.ndarray`` of dtype uint8: HxWx3 RGB, HxW grayscale, HxWx1 grayscale or HxWx4 RGBA (alpha dropped);
- for :func:`to_tensor` only, ``torch.Tensor`` (C, H, W) with C in {1, 3}: float in [0, 1] or uint8.

Conventions for PIL modes: EXIF orientation is applied; alpha is dropped, never composited (premultiplied
``La`` and ``RGBa`` are un-premultiplied first); ``1``, ``L``, ``LA`` and ``P`` become grey or palette RGB;
``CMYK`` and other colour modes go through PIL's ``convert("RGB")``; 16-bit modes (``I;16``, ``I;16B``,
``I;16L``) and ``I`` (32-bit int, how PIL holds 16-bit data) scale to 8 bits by ``round(value / 257)`` and
must lie in [0, 65535]; ``F`` (32-bit float) is read as [0, 1] when its
maximum is <= 1.001 (scaled by 255, then clamped: resampling overshoots) and as [0, 255] otherwise, and
rejected when below -0.001, above 255 or non-finite. All rounding is round-half-to-even.

Every source, arrays and tensors included, is refused above ``max_pixels`` (width * height; encoded images
from their header, before their pixels are decoded).
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

__all__ = [
    "MAX_PIXELS",
    "RASTER_FORMATS",
    "ImageDecodeError",
    "ImageSource",
    "image_file",
    "load_image",
    "to_tensor",
]

MAX_PIXELS = 100_000_000
"""Largest accepted image (width * height), checked from the header before pixel data is decoded."""

RASTER_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "GIF", "PPM", "TGA", "ICO", "PCX", "JPEG2000")
"""Formats Pillow decodes by itself (no external program, unlike EPS through Ghostscript): what a server
accepts from untrusted requests."""

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | Image.Image | np.ndarray

_FLOAT_TOLERANCE = 1e-3
_ACCEPTED_ARRAYS = "accepted arrays: uint8 HxWx3 (RGB), HxW or HxWx1 (grayscale), HxWx4 (RGBA, alpha dropped)"
_ACCEPTED_TENSORS = "accepted tensors: (3, H, W) or (1, H, W), float in [0, 1] or uint8 in [0, 255]"
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError)
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class ImageDecodeError(ValueError):
    """The source is not a decodable image (corrupt, truncated or of an unknown format)."""


def _check_nonempty(width: int, height: int, what: str) -> None:
    if width <= 0 or height <= 0:
        raise ValueError(f"{what} has zero size ({width}x{height}, width x height)")


def _check_size(width: int, height: int, what: str, max_pixels: int) -> None:
    _check_nonempty(width, height, what)
    if width * height > max_pixels:
        raise ValueError(
            f"{what} is {width}x{height} = {width * height} pixels, more than max_pixels={max_pixels}; "
            "pass a larger max_pixels if this is intended"
        )


def _sixteen_bit_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ValueError(
            f"mode {mode!r} image has values in [{values.min()}, {values.max()}]; expected 16-bit data in "
            "[0, 65535]"
        )
    return np.rint(values.astype(np.float64) / 257.0).astype(np.uint8)


def _float_to_uint8(values: np.ndarray) -> np.ndarray:
    if not np.isfinite(values).all():
        raise ValueError("mode 'F' image has non-finite values")
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if low < -_FLOAT_TOLERANCE or high > 255.0:
        raise ValueError(
            f"mode 'F' image has values in [{low}, {high}]; accepted ranges are [0, 1] and [0, 255]"
        )
    # [0, 1] allows the overshoot of resampling, as float tensors do (then clamped)
    scale = 255.0 if high <= 1.0 + _FLOAT_TOLERANCE else 1.0
    return np.rint(np.clip(values.astype(np.float64) * scale, 0.0, 255.0)).astype(np.uint8)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))


def _pil_to_rgb_array(image: Image.Image) -> np.ndarray:
    """Decoded PIL image (any common mode) -> HxWx3 uint8 RGB, following the module's conventions."""
    mode = image.mode
    if mode == "RGB":
        return np.ascontiguousarray(np.array(image, dtype=np.uint8))
    if mode in ("RGBA", "RGBX"):
        return np.ascontiguousarray(np.array(image)[:, :, :3])
    if mode == "1":
        return _grey_to_rgb(np.array(image.convert("L")))
    if mode == "L":
        return _grey_to_rgb(np.array(image))
    if mode in ("LA", "La"):  # La (premultiplied alpha): un-premultiplied first, as PIL does for RGBa
        return _grey_to_rgb(np.array(image if mode == "LA" else image.convert("LA"))[:, :, 0])
    if mode in ("P", "PA"):
        # Palette lookup only: any transparency (tRNS or the PA alpha band) is dropped, not composited.
        return np.ascontiguousarray(np.array(image.convert("RGB")))
    if mode in _SIXTEEN_BIT_MODES:
        return _grey_to_rgb(_sixteen_bit_to_uint8(np.array(image), mode))
    if mode == "F":
        return _grey_to_rgb(_float_to_uint8(np.array(image)))
    try:
        converted = image.convert("RGB")
    except ValueError as err:
        raise ValueError(f"unsupported PIL image mode {mode!r}: {err}") from err
    return np.ascontiguousarray(np.array(converted))


def _decode(image: Image.Image, what: str, max_pixels: int) -> np.ndarray:
    """Size check from the header, then decode, EXIF-transpose and convert."""
    _check_size(image.width, image.height, what, max_pixels)
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
    except Image.DecompressionBombError as err:
        raise ValueError(f"{what} is too large for PIL's decompression-bomb limit: {err}") from err
    except _DECODE_ERRORS as err:
        raise ImageDecodeError(f"could not decode {what}: {err}") from err
    except AssertionError:  # PIL asserts its file is open when pixels were never read
        if getattr(image, "fp", True) is not None:
            raise
        raise ValueError(f"{what} was closed before its pixels were read (used after its `with Image.open()` "
                         "block?); call image.load() inside the block, or pass the path") from None
    return _pil_to_rgb_array(image)


def _open(stream: io.BytesIO | Path, what: str, max_pixels: int, formats: Sequence[str] | None = None) -> np.ndarray:
    try:
        image = Image.open(stream, formats=formats)
    except PermissionError:
        raise
    except Image.DecompressionBombError as err:
        raise ValueError(
            f"{what} declares more pixels than PIL opens at all (its decompression-bomb limit, "
            f"{2 * (Image.MAX_IMAGE_PIXELS or 0)}); at most max_pixels={max_pixels} are accepted"
        ) from err
    except Image.UnidentifiedImageError as err:
        known = f" (accepted: {', '.join(formats)})" if formats else ""
        raise ImageDecodeError(f"could not decode {what}: not an image in a known format{known}") from err
    except _DECODE_ERRORS as err:
        raise ImageDecodeError(f"could not decode {what}: {err}") from err
    with image:
        return _decode(image, what, max_pixels)


def image_file(source: str | os.PathLike) -> Path:
    """The image file a path names, checked before it is read (by ``load_image``, or sent by a client).

    Raises:
        ValueError: a URL (never fetched), an empty path, or not a regular file (a pipe or a device would block
            the reader). FileNotFoundError: it does not exist. IsADirectoryError: a directory.
    """
    text = os.fspath(source)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if text.startswith(("http://", "https://")):  # before Path(), which folds "//"
        raise ValueError(f"URLs are not fetched: download {text!r} first and pass the file or its bytes")
    if not text:
        raise ValueError("got an empty path; expected an image file")
    path = Path(text)
    if not path.exists():
        raise FileNotFoundError(2, "image file not found", text)
    if path.is_dir():
        raise IsADirectoryError(21, "expected an image file, got a directory", text)
    if not path.is_file():
        raise ValueError(f"{text!r} is not a regular file (a pipe or a device?); expected an image file")
    return path


def _array_to_rgb(array: np.ndarray, max_pixels: int) -> np.ndarray:
    if array.dtype != np.uint8:
        raise ValueError(
            f"got a numpy array of dtype {array.dtype} and shape {array.shape}; {_ACCEPTED_ARRAYS}. "
            "Float images in [0, 1] can be passed to to_tensor as a (3, H, W) torch tensor"
        )
    if array.ndim in (2, 3):
        _check_size(array.shape[1], array.shape[0], f"array of shape {array.shape}", max_pixels)
    if array.ndim == 2:
        return _grey_to_rgb(array)
    if array.ndim == 3 and array.shape[2] == 1:
        return _grey_to_rgb(array[:, :, 0])
    if array.ndim == 3 and array.shape[2] == 3:
        return np.ascontiguousarray(array)
    if array.ndim == 3 and array.shape[2] == 4:
        return np.ascontiguousarray(array[:, :, :3])
    raise ValueError(f"got a uint8 numpy array of shape {array.shape}; {_ACCEPTED_ARRAYS}")


def load_image(
    source: ImageSource, *, max_pixels: int = MAX_PIXELS, formats: Sequence[str] | None = None
) -> np.ndarray:
    """Load any accepted source as an RGB image.

    Args:
        source: see the module docstring.
        max_pixels: largest accepted width * height.
        formats: for encoded bytes, the Pillow formats tried (e.g. ``RASTER_FORMATS``); None: all.

    Returns:
        (H, W, 3) uint8 RGB, C-contiguous. A contiguous HxWx3 uint8 array is returned as is (same object).

    Raises:
        FileNotFoundError: a path that does not exist. IsADirectoryError: a directory.
        ImageDecodeError: corrupt, truncated or unknown encoded data (a ``ValueError``).
        ValueError: empty bytes, a zero-size image, an image above ``max_pixels``, unsupported layouts.
        TypeError: a source of another type.
    """
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, max_pixels)
    if isinstance(source, (str, os.PathLike)):
        path = image_file(source)
        return _open(path, f"image file {str(path)!r}", max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise ValueError("got empty bytes; expected an encoded image (JPEG, PNG, ...)")
        return _open(io.BytesIO(data), f"encoded image ({len(data)} bytes)", max_pixels, formats)
    if isinstance(source, Image.Image):
        return _decode(source, f"PIL image (mode {source.mode!r})", max_pixels)
    if isinstance(source, torch.Tensor):
        raise TypeError("load_image does not take tensors; use to_tensor for (3, H, W) tensors")
    hint = "; pass several images as a list" if hasattr(source, "__next__") else ""
    raise TypeError(
        f"unsupported image source of type {type(source).__name__}; expected a path, encoded bytes, "
        f"a PIL image or a uint8 numpy array{hint}"
    )


def _tensor_to_chw(tensor: torch.Tensor, max_pixels: int) -> torch.Tensor:
    shape = tuple(tensor.shape)
    if tensor.ndim == 4:
        raise ValueError(
            f"got a 4-D tensor {shape}; pass a batch as a list of (3, H, W) images, not a stacked tensor"
        )
    if tensor.ndim != 3:
        raise ValueError(f"got a {tensor.ndim}-D tensor {shape}; {_ACCEPTED_TENSORS}")
    if shape[0] not in (1, 3):
        if shape[2] in (1, 3, 4):
            raise ValueError(
                f"got a channels-last tensor {shape} (H, W, {shape[2]}); pass a (3, H, W) tensor or an "
                "HxWx3 numpy array"
            )
        raise ValueError(f"got a tensor with {shape[0]} channels {shape}; {_ACCEPTED_TENSORS}")
    _check_size(shape[2], shape[1], f"tensor of shape {shape}", max_pixels)
    if tensor.layout != torch.strided:
        raise ValueError(f"tensor {shape} is {tensor.layout}; pass a dense tensor (e.g. tensor.to_dense())")
    if tensor.device.type == "meta":
        raise ValueError(f"tensor {shape} is on the meta device and holds no pixels")
    if tensor.dtype == torch.uint8:
        out = tensor.to(torch.float32) / 255.0
    elif tensor.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"tensor {shape} has non-finite values (NaN or inf)")
        low, high = float(tensor.min()), float(tensor.max())
        if low < -_FLOAT_TOLERANCE or high > 1.0 + _FLOAT_TOLERANCE:
            raise ValueError(
                f"float tensor {shape} has values in [{low:.4g}, {high:.4g}], outside [0, 1]: it looks "
                "unnormalised (0-255) or already ImageNet-normalised; pass raw RGB in [0, 1] or uint8"
            )
        out = tensor.to(torch.float32)
        if low < 0.0 or high > 1.0:
            out = out.clamp(0.0, 1.0)
    else:
        raise ValueError(f"unsupported tensor dtype {tensor.dtype} for {shape}; {_ACCEPTED_TENSORS}")
    return out.expand(3, -1, -1).contiguous() if shape[0] == 1 else out.contiguous()


def to_tensor(source: ImageSource | torch.Tensor, *, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """Load any accepted source as a (3, H, W) float32 RGB tensor in [0, 1].

    Tensors keep their device; a contiguous float32 (3, H, W) tensor in [0, 1] is returned as is. Float
    tensors may exceed [0, 1] by 1e-3 (resampling overshoot) and are then clamped.

    Raises:
        ValueError: 4-D (batched) or channels-last tensors, wrong channel counts, unsupported dtypes,
            non-finite values, float values outside [0, 1]; and everything :func:`load_image` raises.
    """
    if isinstance(source, torch.Tensor):
        return _tensor_to_chw(source, max_pixels)
    rgb = load_image(source, max_pixels=max_pixels)
    return torch.from_numpy(rgb).permute(2, 0, 1).to(torch.float32).div_(255.0).contiguous()
