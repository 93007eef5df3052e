"""Helpers of the serving tests: locations, a server launcher with test settings, images, comparison of served
and in-process detections."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rfkp.detections import KeypointDetections
from rfkp.serving.embedded import TritonNotFoundError, find_installation
from rfkp.serving.launcher import TritonServer
from rfkp.serving.repository import BatchingOptions, ServingOptions

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO / ".." / "shared"
READY_TIMEOUT = 90.0
PIXEL_TOL = 1e-3


def require_triton() -> None:
    try:
        find_installation("auto")
    except TritonNotFoundError as exc:
        pytest.skip(f"no Triton server available: {exc}")


def launch_for_tests(
    weights: Path, run_dir: Path, *, cache_dir: Path | None = None, **options: object
) -> TritonServer:
    """A ready real server on free loopback ports: dynamic batching (max 8, preferred 4 and 8, 10 ms
    queue delay), one thread per instance, the network on torch unless ``runtime`` says otherwise;
    ``options`` override ``ServingOptions`` fields; ``cache_dir``: where raw ONNX graphs are cached."""
    require_triton()
    from rfkp.serving.deploy import launch

    settings: dict[str, object] = dict(
        batching=BatchingOptions(max_batch_size=8, preferred_batch_sizes=(4, 8), max_queue_delay_us=10_000),
        num_threads=1,
        runtime="torch",
    )
    settings.update(options)
    triton, _ = launch(
        weights,
        options=ServingOptions(**settings),  # type: ignore[arg-type]
        run_dir=run_dir,
        grpc_port=0,
        http_port=0,
        metrics_port=0,
        ready_timeout=READY_TIMEOUT,
        cache_dir=cache_dir,
    )
    return triton


def assert_same(remote: KeypointDetections, local: KeypointDetections) -> None:
    """Served detections equal in-process ones: coordinates within PIXEL_TOL px, scores and probabilities
    within 1e-5, covariances within 1e-4, the same metadata."""
    assert len(remote) == len(local) > 0
    assert remote.image_size == local.image_size
    np.testing.assert_array_equal(remote.class_id, local.class_id)
    np.testing.assert_allclose(remote.score, local.score, atol=1e-5, rtol=0)
    np.testing.assert_allclose(remote.xyxy, local.xyxy, atol=PIXEL_TOL, rtol=0)
    np.testing.assert_allclose(remote.keypoints, local.keypoints, atol=PIXEL_TOL, rtol=0, equal_nan=True)
    np.testing.assert_allclose(remote.covariance, local.covariance, rtol=1e-4, atol=1e-4, equal_nan=True)
    np.testing.assert_allclose(remote.findable, local.findable, atol=1e-5, equal_nan=True)
    np.testing.assert_allclose(remote.visible, local.visible, atol=1e-5, equal_nan=True)
    assert remote.class_names == local.class_names
    assert remote.keypoint_names == local.keypoint_names
    assert remote.skeletons == local.skeletons



def noise_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 smooth random image (so JPEG/PNG round trips stay realistic)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(1, height // 8), max(1, width // 8), 3), dtype=np.uint8)
    return np.array(Image.fromarray(small).resize((width, height), Image.BILINEAR))


def encode(image: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, fmt)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height RGB but carries no pixel data (cheap huge image)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")
