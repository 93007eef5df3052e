"""`ExportedDetector` in PyTorch: the decode of `predict` at the input resolution, fixed shapes, flavours."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from export_helpers import random_model

from rfkp import RFDETRKeypoint
from rfkp.export import OUTPUT_NAMES, ExportedDetector
from rfkp.export.plugin_nodes import PluginDeformableAttention
from rfkp.nn.deformable import DeformableAttention
from rfkp.postprocess import decode_detections

DECODED = ("scores", "labels", "boxes", "keypoints", "covariance", "findable", "visible")


@pytest.fixture(scope="module")
def model() -> RFDETRKeypoint:
    return random_model(seed=3)  # two keypointed classes with different K and one class without keypoints


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))


def test_numpy_knobs_are_taken_as_ints(model: RFDETRKeypoint) -> None:
    detector = ExportedDetector(model, num_select=np.int64(5), dec_layers=np.int64(1), resolution=np.int64(256))
    assert (detector.requested_select, detector.arch.dec_layers, detector.resolution) == (5, 1, 256)
    assert all(type(v) is int for v in (detector.requested_select, detector.arch.dec_layers, detector.resolution))


def test_outputs_are_decode_detections_for_an_input_sized_source(
    model: RFDETRKeypoint, pixels: torch.Tensor
) -> None:
    detector = ExportedDetector(model, num_select=30).eval()
    with torch.no_grad():
        got = detector(pixels)
    raw = model.forward_raw(pixels)
    sizes = torch.tensor([[256, 256], [256, 256]])
    want = decode_detections(raw, sizes, num_keypoints_per_class=[7, 4], num_select=30, alpha=0.2)
    for name, out, key in zip(OUTPUT_NAMES, got, DECODED):
        torch.testing.assert_close(out, want[key], rtol=0, atol=0, equal_nan=True, msg=name)
    labels, keypoints = got[1], got[3]
    assert torch.isnan(keypoints[labels == 2]).all()  # the class without keypoints
    assert (
        torch.isnan(keypoints[labels == 1][:, 4:]).all()
        and not torch.isnan(keypoints[labels == 1][:, :4]).any()
    )


def test_fixed_shapes_dtypes_and_the_cap_on_rows(model: RFDETRKeypoint, pixels: torch.Tensor) -> None:
    detector = ExportedDetector(model, num_select=1000, num_queries=7).eval()
    assert detector.num_select == 7 * 3  # queries x classes
    with torch.no_grad():
        got = detector(pixels)
    shapes = detector.output_shapes(2)
    assert [tuple(t.shape) for t in got] == [shapes[name] for name in OUTPUT_NAMES]
    assert got[1].dtype == torch.int64 and all(t.dtype == torch.float32 for i, t in enumerate(got) if i != 1)
    boxes = got[2]
    assert (boxes >= 0).all() and (boxes <= 256).all()


def test_plugin_flavour_computes_the_same_and_leaves_the_model_alone(
    model: RFDETRKeypoint, pixels: torch.Tensor
) -> None:
    portable = ExportedDetector(model, num_select=30).eval()
    plugins = ExportedDetector(model, num_select=30, plugins=True).eval()
    replaced = [m for m in plugins.modules() if isinstance(m, PluginDeformableAttention)]
    assert len(replaced) == 2 * model.config.dec_layers
    assert not any(isinstance(m, PluginDeformableAttention) for m in model.network.modules())
    assert (
        sum(isinstance(m, DeformableAttention) for m in model.network.modules())
        == 2 * model.config.dec_layers
    )
    with torch.no_grad():
        a, b = portable(pixels), plugins(pixels)
    for name, x, y in zip(OUTPUT_NAMES, a, b):
        torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-5, equal_nan=True, msg=name)


def test_knobs_are_checked(model: RFDETRKeypoint) -> None:
    with pytest.raises(ValueError, match="not a multiple of patch_size x num_windows = 32"):
        ExportedDetector(model, resolution=200)
    with pytest.raises(ValueError, match="above the largest supported input side"):
        ExportedDetector(model, resolution=32 * 129)
    with pytest.raises(ValueError, match="dec_layers"):
        ExportedDetector(model, dec_layers=3)
    with pytest.raises(ValueError, match="num_queries"):
        ExportedDetector(model, num_queries=21)
    for knob, bad in (("dec_layers", 0), ("num_queries", 0), ("patch_size", 0), ("num_windows", 0),
                      ("num_queries", 2.5), ("num_select", None), ("resolution", True)):  # fmt: skip
        with pytest.raises(ValueError, match=f"{knob} must be a positive integer"):
            ExportedDetector(model, **{knob: bad})
    with pytest.raises(ValueError, match="pixels"):
        ExportedDetector(model)(torch.zeros(1, 3, 128, 128))
    with pytest.raises(TypeError):
        ExportedDetector(torch.nn.Linear(2, 2))  # type: ignore[arg-type]
