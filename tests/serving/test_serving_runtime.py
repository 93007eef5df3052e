"""The server-side steps run in-process: same numbers as RFDETRKeypoint.predict, exact packing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from serving_helpers import encode, noise_image

from rfkp.api import RFDETRKeypoint
from rfkp.serving import protocol as P
from rfkp.serving.packing import ServedMetadata, pack_detections, unpack_detections
from rfkp.serving.payload import RequestError
from rfkp.serving.repository import metadata_parameters
from rfkp.serving.runtime import NetworkRunner, Postprocessor, Preprocessor, make_network, parameters_of


def test_parameters_of_reads_string_values() -> None:
    cfg = {"name": "m", "parameters": {"a": {"string_value": "1"}, "b": {"string_value": "[2]"}}}
    assert parameters_of(json.dumps(cfg)) == {"a": "1", "b": "[2]"}
    assert parameters_of(json.dumps({"name": "m"})) == {}


def test_pipeline_matches_predict(tiny_model: RFDETRKeypoint, tiny_weights: Path) -> None:
    cfg = tiny_model.config
    images = [noise_image(70, 90, seed=1), noise_image(70, 90, seed=2)]
    pre = Preprocessor.from_parameters(
        {P.PARAM_MODEL_CONFIG: json.dumps(cfg.to_dict()), P.PARAM_MAX_PIXELS: "100000", P.PARAM_NUM_THREADS: "0"}
    )
    pixels, sizes = pre(np.array([[encode(im)] for im in images], dtype=np.object_), None)
    x, ref_sizes = tiny_model.preprocess(images)
    assert pixels.dtype == np.float32 and pixels.shape == (2, 3, cfg.resolution, cfg.resolution)
    np.testing.assert_array_equal(pixels, x.numpy())
    np.testing.assert_array_equal(sizes, ref_sizes.numpy())

    net = make_network({P.PARAM_WEIGHTS: str(tiny_weights), P.PARAM_DEVICE: "cpu", P.PARAM_NUM_THREADS: "0"})
    assert isinstance(net, NetworkRunner)
    raw = net(pixels)
    ref_raw = tiny_model.forward_raw(x)
    for name in P.RAW_OUTPUTS:
        np.testing.assert_allclose(raw[name], ref_raw[name].numpy(), atol=1e-5, rtol=1e-5)

    post = Postprocessor(cfg, threshold=0.5, max_detections=100)
    thresholds = np.array([[0.0], [0.6]], np.float32)
    packed = post(raw, sizes, thresholds)
    assert set(packed) == set(P.DETECTION_OUTPUTS)
    packed[P.SOURCE_SIZE] = sizes
    metadata = ServedMetadata.from_parameters(metadata_parameters(cfg))
    served = unpack_detections(packed, metadata)
    for image, limit, got in zip(images, (0.0, 0.6), served):
        want = tiny_model.predict(image, threshold=limit)
        assert len(got) == len(want)
        np.testing.assert_array_equal(got.class_id, want.class_id)
        np.testing.assert_allclose(got.xyxy, want.xyxy, atol=1e-3)
        np.testing.assert_allclose(got.keypoints, want.keypoints, atol=1e-3, equal_nan=True)
        assert got.class_names == want.class_names and got.keypoint_names == want.keypoint_names
    assert len(served[0]) == min(100, cfg.num_queries * cfg.num_classes)  # threshold 0 keeps every row


def test_postprocess_rejects_bad_thresholds(tiny_model: RFDETRKeypoint) -> None:
    cfg = tiny_model.config
    x, sizes = tiny_model.preprocess([noise_image(32, 32)])
    raw = {k: v.numpy() for k, v in tiny_model.forward_raw(x).items()}
    post = Postprocessor(cfg, threshold=0.5, max_detections=10)
    for bad, fragment in ((np.full((1, 1), np.nan, np.float32), "[0, 1]"),
                          (np.full((1, 1), -0.1, np.float32), "[0, 1]"),
                          (np.zeros((2, 1), np.float32), "shape (1, 1)")):
        with pytest.raises(RequestError, match=re.escape(fragment)):
            post(raw, sizes.numpy(), bad)
    out = post(raw, sizes.numpy())
    assert out[P.OUT_BOXES].shape == (1, 10, 4) and int(out[P.OUT_COUNT][0, 0]) <= 10


def test_pack_unpack_round_trip(tiny_model: RFDETRKeypoint) -> None:
    dets = [
        tiny_model.predict(noise_image(40, 60, seed=3), threshold=0.0),
        tiny_model.predict(noise_image(50, 30, seed=4), threshold=0.5),
    ]
    k = tiny_model.config.max_keypoints
    packed = pack_detections(dets, max_detections=50, max_keypoints=k)
    assert packed[P.OUT_LABELS].dtype == np.int32 and packed[P.OUT_COUNT].shape == (2, 1)
    assert np.all(packed[P.OUT_LABELS][0, len(dets[0]):] == -1)
    metadata = ServedMetadata.from_parameters(metadata_parameters(tiny_model.config))
    for got, want in zip(unpack_detections(packed, metadata), dets):
        assert got.image_size == want.image_size
        for name in ("xyxy", "class_id", "score", "keypoints", "covariance", "findable", "visible"):
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
    with pytest.raises(ValueError, match="more than max_detections=1"):
        pack_detections(dets, max_detections=1, max_keypoints=k)


def test_metadata_requires_keys() -> None:
    with pytest.raises(ValueError, match="lacks the metadata parameters"):
        ServedMetadata.from_parameters({"class_names": "[]"})


def test_onnx_hook_is_explicit(tmp_path: Path) -> None:
    with pytest.raises(NotImplementedError, match="ONNX Runtime"):
        make_network({P.PARAM_WEIGHTS: str(tmp_path / "model.onnx")})
    with pytest.raises(KeyError, match="weights"):
        make_network({})


def test_network_runner_threads(tiny_weights: Path) -> None:
    before = torch.get_num_threads()
    try:
        NetworkRunner(tiny_weights, num_threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
