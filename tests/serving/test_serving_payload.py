"""Request validation of the preprocessing step: each bad payload gets its own precise error."""

from __future__ import annotations

import numpy as np
import pytest
from serving_helpers import encode, noise_image, png_header_only

from rfkp.serving.payload import RequestError, decode_request_images


def as_bytes_input(*items: bytes) -> np.ndarray:
    return np.array([[item] for item in items], dtype=np.object_)


def test_encoded_images_decode_to_rgb() -> None:
    a, b = noise_image(30, 40, seed=1), noise_image(50, 20, seed=2)
    images = decode_request_images(as_bytes_input(encode(a), encode(b)), None, max_pixels=10_000)
    assert [im.shape for im in images] == [(30, 40, 3), (50, 20, 3)]
    np.testing.assert_array_equal(images[0], a)  # PNG is lossless
    assert all(im.dtype == np.uint8 for im in images)


def test_raw_images_are_split_and_writable() -> None:
    raw = np.stack([noise_image(12, 16, seed=i) for i in range(3)])
    raw.setflags(write=False)  # what Triton hands over
    images = decode_request_images(None, raw, max_pixels=1000)
    assert len(images) == 3 and all(im.flags.writeable and im.flags.c_contiguous for im in images)
    np.testing.assert_array_equal(images[2], raw[2])


@pytest.mark.parametrize(
    ("encoded", "raw", "fragment"),
    [
        (None, None, "got neither"),
        (as_bytes_input(b"x"), np.zeros((1, 2, 2, 3), np.uint8), "got both"),
        (as_bytes_input(b""), None, "IMAGE_BYTES[0]: empty payload"),
        (as_bytes_input(b"\x89PNG\r\n\x1a\nbroken"), None, "IMAGE_BYTES[0]: corrupt"),
        (as_bytes_input(b"GIF89a" + b"\x00" * 3), None, "IMAGE_BYTES[0]: corrupt"),
        (np.array([[b"x", b"y"]], dtype=np.object_), None, "shape (N, 1)"),
        (np.array([[3]], dtype=np.object_), None, "expected encoded image bytes, got int"),
        (as_bytes_input(png_header_only(10000, 10000)), None, "10000x10000 = 100000000 pixels"),
        (None, np.zeros((1, 4, 4, 3), np.float32), "IMAGE_RAW must be UINT8, got float32"),
        (None, np.zeros((1, 4, 4, 4), np.uint8), "(N, H, W, 3)"),
        (None, np.zeros((4, 4, 3), np.uint8), "(N, H, W, 3)"),
        (None, np.zeros((1, 0, 4, 3), np.uint8), "zero size: 0x4"),
        (None, np.zeros((1, 40, 30, 3), np.uint8), "1200 pixels, more than the server's max_pixels=1000"),
        (None, np.zeros((0, 4, 4, 3), np.uint8), "holds no image"),
    ],
)
def test_bad_payloads(encoded: np.ndarray | None, raw: np.ndarray | None, fragment: str) -> None:
    with pytest.raises(RequestError) as info:  # encoded images are decoded when taken: list() takes them all
        list(decode_request_images(encoded, raw, max_pixels=1000 if raw is not None else 50_000_000))
    assert fragment in str(info.value), str(info.value)


def test_second_item_is_named() -> None:
    good = encode(noise_image(8, 8))
    with pytest.raises(RequestError, match=r"IMAGE_BYTES\[1\]: empty payload"):
        decode_request_images(as_bytes_input(good, b""), None, max_pixels=1000)


def test_only_raster_formats_pillow_decodes_itself_are_taken() -> None:
    """An EPS payload would have Pillow run Ghostscript on the request's bytes: refused by format."""
    import io

    from PIL import Image

    eps = io.BytesIO()
    Image.new("RGB", (8, 8)).save(eps, format="EPS")
    with pytest.raises(RequestError, match=r"IMAGE_BYTES\[0\]: .*not an image in a known format \(accepted: JPEG"):
        list(decode_request_images(np.array([[eps.getvalue()]], dtype=np.object_), None, max_pixels=10**6))
    with pytest.raises(RequestError, match="more than max_pixels=99 \\(the server's limit\\)"):
        list(decode_request_images(np.array([[encode(noise_image(10, 10, seed=1))]], dtype=np.object_), None, max_pixels=99))
