"""rfkp.io: every accepted source, every PIL mode convention, every rejection with its exception type."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rfkp.io import MAX_PIXELS, ImageDecodeError, load_image, to_tensor

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def _rgb(h: int = 12, w: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def test_array_sources() -> None:
    rgb = _rgb()
    assert load_image(rgb) is rgb
    strided = rgb[:, ::2]
    out = load_image(strided)
    assert out.flags.c_contiguous and np.array_equal(out, strided)
    grey = rgb[:, :, 0].copy()
    assert np.array_equal(load_image(grey), np.repeat(grey[:, :, None], 3, axis=2))
    assert np.array_equal(load_image(grey[:, :, None]), load_image(grey))
    rgba = np.concatenate([rgb, np.full((12, 10, 1), 7, np.uint8)], axis=2)
    out = load_image(rgba)
    assert out.shape == (12, 10, 3) and out.flags.c_contiguous and np.array_equal(out, rgb)


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.zeros((4, 5, 3), np.float32), "dtype float32"),
        (np.zeros((4, 5, 2), np.uint8), r"shape \(4, 5, 2\)"),
        (np.zeros((2, 4, 5, 3), np.uint8), r"shape \(2, 4, 5, 3\)"),
        (np.zeros((0, 5, 3), np.uint8), "zero size"),
    ],
)
def test_bad_arrays(array: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_image(array)


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "WEBP"])
def test_lossless_files_bytes_and_pil_roundtrip(tmp_path: Path, fmt: str) -> None:
    rgb = _rgb(9, 13)
    data = _encode(Image.fromarray(rgb), fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    path = tmp_path / f"img.{fmt.lower()}"
    path.write_bytes(data)
    for source in (path, str(path), data, bytearray(data), memoryview(data), Image.open(io.BytesIO(data))):
        out = load_image(source)
        assert out.dtype == np.uint8 and out.shape == (9, 13, 3) and out.flags.c_contiguous
        assert np.array_equal(out, rgb), type(source)


def test_jpeg_decodes_close_to_source(tmp_path: Path) -> None:
    rgb = np.zeros((32, 48, 3), np.uint8)
    rgb[:, :24] = (200, 40, 30)
    rgb[:, 24:] = (20, 90, 220)
    out = load_image(_encode(Image.fromarray(rgb), "JPEG", quality=95))
    assert out.shape == (32, 48, 3)
    assert np.abs(out.astype(int) - rgb.astype(int))[:, 2:20].max() <= 6


def test_sixteen_bit_modes_scale_by_257_not_clip() -> None:
    values = np.array([[0, 128, 257, 384], [385, 30000, 65407, 65535]], np.uint16)
    expected = np.rint(values / 257.0).astype(np.uint8)
    assert expected.tolist() == [[0, 0, 1, 1], [1, 117, 255, 255]]
    little = Image.fromarray(values)
    assert little.mode == "I;16"
    big = Image.frombytes("I;16B", (4, 2), values.astype(">u2").tobytes())
    as_int = Image.fromarray(values.astype(np.int32))
    assert as_int.mode == "I"
    reopened = Image.open(io.BytesIO(_encode(little, "PNG")))
    for image in (little, big, as_int, reopened):
        out = load_image(image)
        assert np.array_equal(out[:, :, 0], expected), image.mode
        assert np.array_equal(out[:, :, 1], out[:, :, 2])
    with pytest.raises(ValueError, match=r"\[0, 65535\]"):
        load_image(Image.fromarray(np.array([[-1, 5]], np.int32)))


def test_float_mode_ranges() -> None:
    unit = np.array([[0.0, 0.5, 1.0]], np.float32)
    assert load_image(Image.fromarray(unit))[0, :, 0].tolist() == [0, 128, 255]
    byte_range = np.array([[0.0, 100.4, 255.0]], np.float32)
    assert load_image(Image.fromarray(byte_range))[0, :, 0].tolist() == [0, 100, 255]
    # resampling overshoots [0, 1] a little: read as [0, 1] and clamped, as float tensors are
    overshoot = np.array([[-0.0004, 0.5, 1.0005]], np.float32)
    assert load_image(Image.fromarray(overshoot))[0, :, 0].tolist() == [0, 128, 255]
    for bad in ([[-0.5, 0.2]], [[0.0, 300.0]], [[np.nan, 0.2]]):
        with pytest.raises(ValueError, match="mode 'F'"):
            load_image(Image.fromarray(np.array(bad, np.float32)))


def test_colour_modes_drop_alpha_without_compositing() -> None:
    rgb = _rgb(5, 6, seed=3)
    rgba = Image.fromarray(np.concatenate([rgb, np.zeros((5, 6, 1), np.uint8)], axis=2), "RGBA")
    assert np.array_equal(load_image(rgba), rgb)  # alpha 0 everywhere: a composite would be blank
    grey = rgb[:, :, 1]
    la = Image.fromarray(np.stack([grey, np.zeros_like(grey)], axis=2), "LA")
    assert np.array_equal(load_image(la)[:, :, 2], grey)
    # premultiplied modes are un-premultiplied first (up to the rounding of premultiplying by 128 / 255)
    la_half = Image.fromarray(np.stack([grey, np.full_like(grey, 128)], axis=2), "LA").convert("La")
    assert la_half.mode == "La"
    out = load_image(la_half).astype(int)
    assert (out == out[:, :, :1]).all() and np.abs(out[:, :, 0] - grey.astype(int)).max() <= 2
    rgba_half = Image.fromarray(np.concatenate([rgb, np.full((5, 6, 1), 128, np.uint8)], axis=2), "RGBA")
    assert np.abs(load_image(rgba_half.convert("RGBa")).astype(int) - rgb.astype(int)).max() <= 2
    palette = Image.fromarray(rgb).quantize(colors=16)
    assert palette.mode == "P"
    expected = np.array(palette.convert("RGB"))
    assert np.array_equal(load_image(palette), expected)
    pa = palette.convert("PA")
    assert pa.mode == "PA" and np.array_equal(load_image(pa), expected)
    bits = Image.fromarray(grey > 128)
    assert bits.mode == "1"
    assert np.array_equal(load_image(bits)[:, :, 0], np.where(grey > 128, 255, 0))
    cmyk = Image.fromarray(rgb).convert("CMYK")
    assert np.abs(load_image(cmyk).astype(int) - rgb.astype(int)).max() <= 1


def test_exif_orientation_applied(tmp_path: Path) -> None:
    rgb = _rgb(4, 7, seed=4)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.png"
    Image.fromarray(rgb).save(path, "PNG", exif=exif.tobytes())
    out = load_image(path)
    assert out.shape == (7, 4, 3)
    assert np.array_equal(out, np.rot90(rgb, k=-1))


def test_pil_image_used_after_its_with_block(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(path)
    with Image.open(path) as image:
        pass
    with pytest.raises(ValueError, match=r"closed before its pixels were read \(used after its `with Image.open"):
        load_image(image)
    with Image.open(path) as image:
        image.load()
    assert load_image(image).shape == (4, 5, 3)  # read inside the block: fine


def test_missing_file_and_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope.png"
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(missing)
    with pytest.raises(IsADirectoryError, match=str(tmp_path.name)):
        load_image(tmp_path)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_corrupt_and_truncated_bytes(tmp_path: Path, fmt: str) -> None:
    data = _encode(Image.fromarray(_rgb(64, 48, seed=5)), fmt)
    for cut in (len(data) // 2, len(data) - 40, 30):
        with pytest.raises(ImageDecodeError, match=rf"encoded image \({cut} bytes\)"):
            load_image(data[:cut])
    path = tmp_path / f"half.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match="half"):
        load_image(path)
    with pytest.raises(ImageDecodeError, match="could not decode"):
        load_image(b"definitely not an image")
    assert issubclass(ImageDecodeError, ValueError)


def test_empty_and_zero_size() -> None:
    with pytest.raises(ValueError, match="empty bytes"):
        load_image(b"")
    with pytest.raises(ValueError, match="zero size"):
        load_image(Image.new("RGB", (0, 5)))


def test_max_pixels_checked_before_decoding() -> None:
    assert MAX_PIXELS == 100_000_000
    data = _encode(Image.new("L", (300, 200)), "PNG")
    # Truncated pixel data: only the header is valid, so the size error proves no decoding happened.
    header_only = data[:60]
    with pytest.raises(ValueError, match="max_pixels=50000") as info:
        load_image(header_only, max_pixels=50_000)
    assert not isinstance(info.value, ImageDecodeError)
    assert load_image(data, max_pixels=60_000).shape == (200, 300, 3)


def _png_claiming_size(width: int, height: int) -> bytes:
    """A small valid PNG whose IHDR (with a correct CRC) claims another size: a header-only image."""
    data = bytearray(_encode(Image.new("L", (4, 4)), "PNG"))
    ihdr = bytearray(data[12:29])  # chunk type + 13 data bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_header_size_checked_before_decoding() -> None:
    # The pixel data is 4x4: had it been decoded against a 15000x10000 header, decoding would fail instead.
    with pytest.raises(ValueError, match="150000000 pixels, more than max_pixels=100000000") as info:
        load_image(_png_claiming_size(15000, 10000))
    assert not isinstance(info.value, ImageDecodeError)


def test_decompression_bomb_becomes_value_error() -> None:
    # 400 Mpx is above PIL's own bomb limit (about 179 Mpx), which only bites when max_pixels is raised.
    with pytest.raises(ValueError, match="decompression-bomb") as info:
        load_image(_png_claiming_size(20000, 20000), max_pixels=10**9)
    assert not isinstance(info.value, ImageDecodeError)


def test_max_pixels_applies_to_arrays_and_tensors() -> None:
    with pytest.raises(ValueError, match="50x40 = 2000 pixels, more than max_pixels=1999"):
        load_image(np.zeros((40, 50, 3), np.uint8), max_pixels=1999)
    with pytest.raises(ValueError, match="2000 pixels, more than max_pixels=1999"):
        to_tensor(torch.zeros(3, 40, 50), max_pixels=1999)
    assert to_tensor(torch.zeros(3, 40, 50), max_pixels=2000).shape == (3, 40, 50)


def _raised_within(seconds: float, fn, *args):  # noqa: ANN001, ANN202
    """The exception ``fn(*args)`` raised, run in a thread: a call that blocks fails the test instead of hanging it."""
    import threading

    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            fn(*args)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"{fn.__name__} blocked for {seconds} s"
    return outcome[0]


def test_a_pipe_is_refused_without_blocking(tmp_path: Path) -> None:
    from rfkp.checkpoint import CheckpointError, read_checkpoint

    fifo = tmp_path / "frames"
    os.mkfifo(fifo)
    exc = _raised_within(10, load_image, fifo)
    assert isinstance(exc, ValueError) and "not a regular file" in str(exc)
    exc = _raised_within(10, read_checkpoint, fifo)
    assert isinstance(exc, CheckpointError) and "not a regular file" in str(exc)


def test_paths_urls_and_empty_paths() -> None:
    with pytest.raises(ValueError, match="URLs are not fetched: download 'https://example.com/a.jpg'"):
        load_image("https://example.com/a.jpg")
    with pytest.raises(ValueError, match="empty path"):
        load_image("")


def test_unsupported_source_type() -> None:
    with pytest.raises(TypeError, match="int"):
        load_image(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="pass several images as a list"):
        load_image(iter([np.zeros((4, 4, 3), np.uint8)]))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="to_tensor"):
        load_image(torch.zeros(3, 4, 4))  # type: ignore[arg-type]


def test_to_tensor_from_images_and_tensors() -> None:
    rgb = _rgb(6, 5, seed=6)
    t = to_tensor(rgb)
    assert t.shape == (3, 6, 5) and t.dtype == torch.float32 and t.is_contiguous()
    torch.testing.assert_close(t, torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0)
    torch.testing.assert_close(to_tensor(_encode(Image.fromarray(rgb), "PNG")), t)
    torch.testing.assert_close(to_tensor(torch.from_numpy(rgb).permute(2, 0, 1)), t)
    assert to_tensor(t) is t
    grey = torch.rand(1, 6, 5, dtype=torch.float64)
    out = to_tensor(grey)
    assert out.shape == (3, 6, 5) and out.dtype == torch.float32
    torch.testing.assert_close(out, grey.float().expand(3, -1, -1))
    nearly = torch.full((3, 2, 2), 1.0005)
    assert to_tensor(nearly).max().item() == 1.0


@pytest.mark.parametrize(
    ("tensor", "match"),
    [
        (torch.rand(6, 5, 3), r"channels-last tensor \(6, 5, 3\).*\(3, H, W\) tensor or an HxWx3 numpy array"),
        (torch.rand(2, 3, 6, 5), "batch as a list"),
        (torch.rand(3, 6, 5) * 255, "unnormalised"),
        ((torch.rand(3, 6, 5) - 0.485) / 0.229, "ImageNet-normalised"),
        (torch.full((3, 2, 2), float("nan")), "non-finite"),
        (torch.rand(2, 6, 5), "2 channels"),
        (torch.zeros(3, 6, 5, dtype=torch.int64), "unsupported tensor dtype torch.int64"),
        (torch.rand(6, 5), "2-D tensor"),
        (torch.rand(3, 0, 5), "zero size"),
        (torch.rand(3, 6, 5, device="meta"), "on the meta device and holds no pixels"),
        (torch.rand(3, 6, 5).to_sparse(), "is torch.sparse_coo; pass a dense tensor"),
    ],
)
def test_to_tensor_rejections(tensor: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        to_tensor(tensor)


def test_real_coco_image() -> None:
    folder = SHARED_DATA / "coco-sample" / "images"
    if not folder.is_dir():
        pytest.skip(f"shared COCO sample not found at {folder}")
    path = sorted(folder.glob("*.jpg"))[0]
    out = load_image(path)
    with Image.open(path) as reference:
        assert out.shape == (reference.height, reference.width, 3)
    assert out.std() > 10
    assert np.array_equal(load_image(path.read_bytes()), out)


def test_real_grayscale_pngs() -> None:
    folder = SHARED_DATA / "mirror-mouse" / "images"
    if not folder.is_dir():
        pytest.skip(f"shared mirror-mouse images not found at {folder}")
    for path in sorted(folder.glob("*.png"))[:3]:
        with Image.open(path) as reference:
            assert reference.mode == "L"
            grey = np.array(reference)
        out = load_image(path)
        assert out.shape == (*grey.shape, 3)
        assert all(np.array_equal(out[:, :, c], grey) for c in range(3))
