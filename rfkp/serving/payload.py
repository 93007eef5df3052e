"""Validate and decode the image payload of one inference request (server side, no Triton imports).

Every failure raises ``RequestError`` whose message names the input, the item and what is wrong, so
the server can answer that request alone with an error and go on with the rest of its batch.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import overload

import numpy as np
from PIL import Image

from rfkp.io import RASTER_FORMATS, ImageDecodeError, load_image
from rfkp.serving.protocol import INPUT_BYTES, INPUT_RAW

__all__ = ["EncodedImages", "RequestError", "decode_request_images"]


class RequestError(ValueError):
    """A request the server rejects; the message is sent back to the client as is."""


def _as_bytes(item: object, where: str) -> bytes:
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    if isinstance(item, np.bytes_):
        return bytes(item)
    raise RequestError(f"{where}: expected encoded image bytes, got {type(item).__name__}")


def _decode_one(data: bytes, where: str, max_pixels: int) -> np.ndarray:
    try:
        with warnings.catch_warnings():  # the size is checked against max_pixels before decoding
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return load_image(data, max_pixels=max_pixels, formats=RASTER_FORMATS)
    except ImageDecodeError as exc:
        raise RequestError(f"{where}: corrupt or unsupported encoded image: {exc}") from None
    except ValueError as exc:  # the limit is the server's: a client cannot raise it
        message = str(exc).replace("; pass a larger max_pixels if this is intended", " (the server's limit)")
        raise RequestError(f"{where}: {message}") from None


class EncodedImages(Sequence[np.ndarray]):
    """The N images of one ``IMAGE_BYTES`` input, each decoded when it is taken (by index or while iterating):
    ``prepare_batch`` resizes each before it takes the next, so a request of several large images holds one
    decoded at full size at a time, not all N."""

    def __init__(self, payloads: list[bytes], max_pixels: int) -> None:
        self._payloads = payloads
        self._max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self._payloads)

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...
    @overload
    def __getitem__(self, index: slice) -> list[np.ndarray]: ...
    def __getitem__(self, index: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        i = range(len(self))[index]  # IndexError past the end (ends iteration)
        return _decode_one(self._payloads[i], f"{INPUT_BYTES}[{i}]", self._max_pixels)


def _decode_encoded(encoded: np.ndarray, max_pixels: int) -> EncodedImages:
    """Checks the shape and that every item holds bytes (all items, before any is decoded); decoding is lazy."""
    if encoded.ndim != 2 or encoded.shape[1] != 1:
        raise RequestError(f"{INPUT_BYTES} must have shape (N, 1) (one encoded image per row), got {encoded.shape}")
    payloads = []
    for i in range(encoded.shape[0]):
        where = f"{INPUT_BYTES}[{i}]"
        data = _as_bytes(encoded[i, 0], where)
        if not data:
            raise RequestError(f"{where}: empty payload (0 bytes); expected an encoded image (JPEG, PNG, ...)")
        payloads.append(data)
    return EncodedImages(payloads, max_pixels)


def _check_raw(raw: np.ndarray, max_pixels: int) -> list[np.ndarray]:
    if raw.dtype != np.uint8:
        raise RequestError(f"{INPUT_RAW} must be UINT8, got {raw.dtype}")
    if raw.ndim != 4 or raw.shape[3] != 3:
        raise RequestError(
            f"{INPUT_RAW} must have shape (N, H, W, 3) (RGB, channels last), got {tuple(raw.shape)}"
        )
    _, h, w, _ = raw.shape
    if h == 0 or w == 0:
        raise RequestError(f"{INPUT_RAW} has zero size: {h}x{w} (H x W)")
    if h * w > max_pixels:
        raise RequestError(
            f"{INPUT_RAW} is {h}x{w} = {h * w} pixels, more than the server's max_pixels={max_pixels}"
        )
    return [np.array(raw[i], copy=True) for i in range(raw.shape[0])]  # writable, contiguous


def decode_request_images(
    encoded: np.ndarray | None, raw: np.ndarray | None, *, max_pixels: int
) -> Sequence[np.ndarray]:
    """Exactly one of the two inputs -> N (H, W, 3) uint8 RGB images. Encoded images come as ``EncodedImages``:
    each is decoded (and its size checked from its header, its errors raised) only when it is taken.

    Args:
        encoded: ``IMAGE_BYTES`` as Triton gives it, an object array (N, 1) of bytes.
        raw: ``IMAGE_RAW`` (N, H, W, 3) uint8.
        max_pixels: largest accepted H * W, checked from the header before decoding.
    """
    if encoded is not None and raw is not None:
        raise RequestError(f"send exactly one of {INPUT_BYTES} and {INPUT_RAW}, got both")
    if encoded is None and raw is None:
        raise RequestError(f"send exactly one of {INPUT_BYTES} and {INPUT_RAW}, got neither")
    images = _decode_encoded(encoded, max_pixels) if encoded is not None else _check_raw(raw, max_pixels)
    if not images:
        name = INPUT_BYTES if encoded is not None else INPUT_RAW
        raise RequestError(f"{name} holds no image (batch dimension is 0)")
    return images
