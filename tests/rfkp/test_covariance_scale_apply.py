"""`ModelConfig.covariance_scale`: validated, saved with the weights, and applied to the output covariances by
every path (decode, predict, exported graph, served post-processing) without touching anything else."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rfkp import RFDETRKeypoint
from rfkp.config import ModelConfig
from rfkp.export import ExportedDetector
from rfkp.postprocess import decode_detections
from rfkp.variants import tiny

SCALE = [[1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5], [0.25, 0.5, 0.75, 9.0]]


@pytest.fixture(scope="module")
def model() -> RFDETRKeypoint:
    model = RFDETRKeypoint.from_config(tiny(num_classes=3, num_keypoints_per_class=[7, 4]), device="cpu", seed=5)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # random heads: distinct covariances per slot
        for p in model.network.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def scaled(model: RFDETRKeypoint) -> RFDETRKeypoint:
    other = copy.deepcopy(model)
    other.network.cfg = dataclasses.replace(model.config, covariance_scale=SCALE)
    return other


def _expected_factor(labels: np.ndarray, kmax: int) -> np.ndarray:
    table = np.array([row + [1.0] * (kmax - len(row)) for row in SCALE])
    return table[np.minimum(labels, len(SCALE) - 1)]


def test_config_validates_pads_and_round_trips(scaled: RFDETRKeypoint, tmp_path: Path) -> None:
    cfg = scaled.config
    assert cfg.covariance_scale_table() == [SCALE[0], SCALE[1] + [1.0, 1.0, 1.0]]
    assert ModelConfig(num_keypoints_per_class=[3]).covariance_scale_table() is None
    with pytest.raises(ValueError, match=r"rows of lengths \[7\], expected one value per keypoint: \[7, 4\]"):
        dataclasses.replace(cfg, covariance_scale=[SCALE[0]])
    with pytest.raises(ValueError, match="finite and > 0, got 0.0"):
        dataclasses.replace(cfg, covariance_scale=[SCALE[0], [1.0, 0.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match="finite and > 0, got nan"):
        dataclasses.replace(cfg, covariance_scale=[SCALE[0], [1.0, float("nan"), 1.0, 1.0]])
    path = tmp_path / "scaled.pt"
    scaled.save_checkpoint(path, dtype=torch.float16)
    assert RFDETRKeypoint.from_checkpoint(path, device="cpu").config.covariance_scale == SCALE
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_decode_scales_covariances_only(model: RFDETRKeypoint) -> None:
    raw = model.forward_raw(torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(0)))
    sizes = torch.tensor([[300, 200], [256, 256]])
    plain = decode_detections(raw, sizes, num_keypoints_per_class=[7, 4], num_select=60)
    table = [row + [1.0] * (7 - len(row)) for row in SCALE]
    got = decode_detections(raw, sizes, num_keypoints_per_class=[7, 4], num_select=60, covariance_scale=table)
    for key in plain:
        if key != "covariance":
            torch.testing.assert_close(got[key], plain[key], rtol=0, atol=0, equal_nan=True, msg=key)
    labels = plain["labels"].numpy()
    assert {0, 1, 2} <= set(labels.ravel().tolist())  # every kind of class is exercised
    factor = _expected_factor(labels, 7)[..., None, None]
    np.testing.assert_allclose(got["covariance"].numpy(), plain["covariance"].numpy() * factor, rtol=1e-6)
    assert torch.equal(torch.isnan(got["covariance"]), torch.isnan(plain["covariance"]))
    with pytest.raises(ValueError, match=r"covariance_scale must be \(2, 7\), got \(2, 4\)"):
        decode_detections(raw, sizes, num_keypoints_per_class=[7, 4], covariance_scale=[[1.0] * 4] * 2)


def test_predict_export_and_server_postprocessing_apply_it(model: RFDETRKeypoint, scaled: RFDETRKeypoint) -> None:
    from rfkp.serving import protocol as P
    from rfkp.serving.runtime import Postprocessor

    image = (np.random.default_rng(1).random((120, 160, 3)) * 255).astype(np.uint8)
    plain, cal = model.predict(image, threshold=0.0), scaled.predict(image, threshold=0.0)
    np.testing.assert_array_equal(cal.score, plain.score)
    np.testing.assert_array_equal(cal.keypoints, plain.keypoints)
    factor = _expected_factor(plain.class_id, 7)[:, :, None, None]
    np.testing.assert_allclose(cal.covariance, plain.covariance * factor, rtol=1e-6)

    pixels = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a = ExportedDetector(model, num_select=40)(pixels)
        b = ExportedDetector(scaled, num_select=40)(pixels)
    factor = torch.from_numpy(_expected_factor(a[1].numpy(), 7)).float()[..., None, None]
    torch.testing.assert_close(b[4], a[4] * factor, equal_nan=True)
    torch.testing.assert_close(b[0], a[0], rtol=0, atol=0)

    raw = {k: v.numpy() for k, v in model.forward_raw(pixels).items()}
    sizes = np.array([[256, 256]], np.int64)
    served = [Postprocessor(m.config, threshold=0.0, max_detections=40)(raw, sizes) for m in (model, scaled)]
    labels, count = served[0][P.OUT_LABELS][0], int(served[0][P.OUT_COUNT][0, 0])
    factor = _expected_factor(labels[:count], 7)[:, :, None, None]
    np.testing.assert_allclose(served[1][P.OUT_COVARIANCES][0, :count], served[0][P.OUT_COVARIANCES][0, :count] * factor,
                               rtol=1e-6)  # fmt: skip
