"""predict() on every accepted input type and on bad inputs."""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rfkp import KeypointDetections, RFDETRKeypoint
from rfkp.io import ImageDecodeError
from rfkp.variants import tiny


@pytest.fixture(scope="module")
def model() -> RFDETRKeypoint:
    return RFDETRKeypoint.from_config(tiny(), device="cpu")


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)


def test_all_input_types_agree(model: RFDETRKeypoint, rgb: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.fromarray(rgb).save(path)
    inputs = [
        str(path), path, path.read_bytes(), Image.fromarray(rgb), rgb,
        torch.from_numpy(rgb).permute(2, 0, 1).float() / 255,
    ]  # fmt: skip
    results = [model.predict(x, threshold=0.0) for x in inputs]
    for r in results:
        assert isinstance(r, KeypointDetections)
        assert r.image_size == (90, 120)
        np.testing.assert_allclose(r.xyxy, results[0].xyxy, atol=1e-4)
    batch = model.predict(inputs[:3], threshold=0.0)
    assert isinstance(batch, list) and len(batch) == 3
    assert model.predict([], threshold=0.0) == []


def test_coordinates_follow_the_source_size(model: RFDETRKeypoint, rgb: np.ndarray) -> None:
    dets = model.predict(rgb, threshold=0.0)
    assert (dets.xyxy[:, [0, 2]] <= 120).all() and (dets.xyxy[:, [1, 3]] <= 90).all()
    assert np.all(np.diff(dets.score) <= 0), "sorted by score"


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16", "P"])
def test_image_modes(model: RFDETRKeypoint, rgb: np.ndarray, mode: str) -> None:
    img = Image.fromarray(rgb).convert(mode) if mode != "I;16" else Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    dets = model.predict(buf.getvalue(), threshold=0.0)
    assert dets.image_size == (90, 120)


def test_bad_inputs(model: RFDETRKeypoint, rgb: np.ndarray, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        model.predict(tmp_path / "missing.jpg")
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG")
    with pytest.raises(ImageDecodeError):
        model.predict(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageDecodeError):
        model.predict(b"\x89PNG garbage")
    with pytest.raises(ValueError):
        model.predict(b"")
    with pytest.raises(ValueError, match="channels-last"):
        model.predict(torch.from_numpy(rgb).float() / 255)
    with pytest.raises(ValueError):
        model.predict(np.zeros((0, 10, 3), np.uint8))
    with pytest.raises(ValueError, match="[Bb]atch|list"):
        model.predict(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError):
        model.forward_raw(torch.zeros(1, 4, 256, 256))


def test_arguments_are_checked_before_images_are_read(model: RFDETRKeypoint, rgb: np.ndarray) -> None:
    missing = "no/such/image.png"  # reading it would raise FileNotFoundError: the argument errors come first
    for kwargs, match in [
        (dict(threshold=-0.1), "threshold must be a number in"),
        (dict(threshold=float("nan")), "threshold must be a number in"),
        (dict(threshold="0.5"), "threshold must be a number in"),
        (dict(num_select=0), "num_select must be a positive integer"),
        (dict(num_select=2.5), "num_select must be a positive integer"),
        (dict(resolution=0), "resolution must be a positive integer"),
        (dict(patch_size=0), "patch_size must be a positive integer"),
        (dict(num_windows=True), "num_windows must be a positive integer"),
        (dict(max_pixels=-1), "max_pixels must be a positive integer"),
        (dict(resolution=10001), "resolution 10001 is not a multiple of"),  # not resized to first
        (dict(resolution=256, patch_size=12), "resolution 256 is not a multiple of patch_size x num_windows = 24"),
        (dict(resolution=96 * 43), "above the largest supported input side"),
        (dict(dec_layers=3), r"dec_layers must be in \[1, 2\] for this model, got 3"),  # tiny: 2 layers
        (dict(num_queries=21), r"num_queries must be in \[1, 20\] for this model, got 21"),
    ]:
        with pytest.raises(ValueError, match=match):
            model.predict(missing, **kwargs)
    with pytest.raises(TypeError, match=r"unknown keyword argument\(s\) \['max_pixel'\]"):
        model.predict(missing, max_pixel=10)
    # numpy scalars are numbers too
    dets = model.predict(rgb, threshold=np.float32(0.0), num_select=np.int64(5))
    assert len(dets) == 5
    assert len(model.predict(rgb, threshold=1.0)) == 0
    assert len(model.predict(rgb, threshold=Fraction(0), num_select=3)) == 3  # any real number


def test_preprocess_and_postprocess_take_what_predict_takes(model: RFDETRKeypoint, rgb: np.ndarray,
                                                            tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.fromarray(rgb).save(path)
    for single in (rgb, str(path), Image.fromarray(rgb)):  # one image is one image, not a batch of its rows
        x, sizes = model.preprocess(single)
        assert x.shape[0] == 1 and sizes.tolist() == [[90, 120]]
    raw = model.forward_raw(x)
    for kwargs, match in [
        (dict(threshold=float("nan")), "threshold must be a number in"),
        (dict(threshold=-5), "threshold must be a number in"),
        (dict(num_select=-1), "num_select must be a positive integer"),
    ]:
        with pytest.raises(ValueError, match=match):
            model.postprocess(raw, sizes, **kwargs)
    assert len(model.postprocess(raw, sizes, threshold=0.0, num_select=4)[0]) == 4
    assert len(model.postprocess(raw, sizes.tolist(), threshold=0.0, num_select=4)[0]) == 4  # a list of (H, W)
    with pytest.raises(ValueError, match=r"source_sizes must be \(B, 2\)"):
        model.postprocess(raw, [90, 120])
    with pytest.raises(ValueError, match="needs at least one image"):
        model.preprocess([])


def test_a_bad_image_in_a_list_is_named_and_max_pixels_is_a_predict_argument(
    model: RFDETRKeypoint, rgb: np.ndarray
) -> None:
    with pytest.raises(ValueError, match="image 1 of 3: got a numpy array of dtype float32"):
        model.predict([rgb, rgb.astype(np.float32), rgb])
    h, w = rgb.shape[:2]
    with pytest.raises(ValueError, match=f"more than max_pixels={h * w - 1}"):
        model.predict(rgb, max_pixels=h * w - 1)
    assert model.predict(rgb, threshold=0.0, max_pixels=h * w).image_size == (h, w)


def test_huge_image_is_refused_before_decoding(model: RFDETRKeypoint, tmp_path: Path) -> None:
    path = tmp_path / "huge.png"
    Image.new("L", (12000, 9000)).save(path)  # 108 Mpx, small file
    with pytest.raises(ValueError, match="pixels"):
        model.predict(path)
