"""The server-side steps run in-process: same numbers as RFDETRKeypoint.predict, exact packing; the ONNX Runtime
network runner against forward_raw."""

from __future__ import annotations

import json
import re
import sys
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
from rfkp.serving.runtime import (
    NetworkRunner,
    OnnxRuntimeRunner,
    Postprocessor,
    Preprocessor,
    make_network,
    parameters_of,
)

RAW_TOL = 1e-4  # ONNX Runtime vs PyTorch on the raw outputs (measured: <= 1e-6 on tiny, 1e-5 on the peer model)


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
    assert metadata.category_ids == (cfg.category_ids or None)
    with_ids = type(cfg).from_dict({**cfg.to_dict(), "category_ids": [3, 8]})
    assert ServedMetadata.from_parameters(metadata_parameters(with_ids)).category_ids == [3, 8]
    assert metadata.coco_keypoint_offset == 0.5
    peer_like = type(cfg).from_dict({**cfg.to_dict(), "coco_keypoint_offset": 0.0})
    assert ServedMetadata.from_parameters(metadata_parameters(peer_like)).coco_keypoint_offset == 0.0
    served = unpack_detections(packed, metadata)
    for image, limit, got in zip(images, (0.0, 0.6), served):
        want = tiny_model.predict(image, threshold=limit)
        assert len(got) == len(want)
        np.testing.assert_array_equal(got.class_id, want.class_id)
        np.testing.assert_allclose(got.xyxy, want.xyxy, atol=1e-3)
        np.testing.assert_allclose(got.keypoints, want.keypoints, atol=1e-3, equal_nan=True)
        assert got.class_names == want.class_names and got.keypoint_names == want.keypoint_names
    assert len(served[0]) == min(100, cfg.num_queries * cfg.num_classes)  # threshold 0 keeps every row


def test_preprocess_holds_one_decoded_image_at_a_time(tiny_model: RFDETRKeypoint, monkeypatch: pytest.MonkeyPatch) -> None:
    """A request of several large encoded images is decoded image by image, each freed before the next is
    decoded: never more than one full-size decoded image is alive, whatever N."""
    import weakref

    from rfkp.serving import payload

    decoded: list[weakref.ref] = []
    alive_at_decode: list[int] = []

    def counting_load_image(*args: object, **kwargs: object) -> np.ndarray:
        image = load_image(*args, **kwargs)
        decoded.append(weakref.ref(image))
        alive_at_decode.append(sum(ref() is not None for ref in decoded))
        return image

    load_image = payload.load_image
    monkeypatch.setattr(payload, "load_image", counting_load_image)
    images = [noise_image(300, 400, seed=i) for i in range(4)]
    pre = Preprocessor(tiny_model.config, max_pixels=10**6)
    pixels, sizes = pre(np.array([[encode(im)] for im in images], dtype=np.object_), None)
    assert alive_at_decode == [1, 1, 1, 1]
    np.testing.assert_array_equal(pixels, tiny_model.preprocess(images)[0].numpy())
    assert sizes.tolist() == [[300, 400]] * 4
    bad = np.array([[encode(images[0])], [b"not an image"]], dtype=np.object_)
    with pytest.raises(RequestError, match=r"^IMAGE_BYTES\[1\]: corrupt"):  # named by its index, as before
        pre(bad, None)


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


def test_preprocess_rejects_bad_thresholds_before_decoding(tiny_model: RFDETRKeypoint, monkeypatch: pytest.MonkeyPatch) -> None:
    from rfkp.serving import payload

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded an image of a request with a bad THRESHOLD")

    monkeypatch.setattr(payload, "load_image", no_decoding)
    pre = Preprocessor(tiny_model.config, max_pixels=10**6)
    encoded = np.array([[encode(noise_image(32, 32))]], dtype=np.object_)
    for bad, message in ((np.full((1, 1), 1.5, np.float32), "THRESHOLD must lie in [0, 1], got 1.5"),
                         (np.full((1, 1), np.nan, np.float32), "THRESHOLD must lie in [0, 1], got nan"),
                         (np.full((1, 1), -0.1, np.float32), "THRESHOLD must lie in [0, 1], got -0.1"),
                         (np.zeros((2, 1), np.float32), "THRESHOLD must have shape (1, 1), got (2, 1)")):  # fmt: skip
        with pytest.raises(RequestError, match=f"^{re.escape(message)}"):
            pre(encoded, None, bad)
        with pytest.raises(RequestError, match=f"^{re.escape(message)}"):
            pre(None, np.zeros((1, 8, 8, 3), np.uint8), bad)


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


@pytest.fixture(scope="module")
def raw_graph(tiny_model: RFDETRKeypoint, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's raw-output export at its resolution, dynamic batch (what `rfkp serve` exports)."""
    pytest.importorskip("onnx")
    from rfkp.export import export_onnx

    return export_onnx(tiny_model, tmp_path_factory.mktemp("raw") / "raw.onnx", dynamic_batch=4, outputs="raw")


def test_onnxruntime_runner_equals_forward_raw(tiny_model: RFDETRKeypoint, raw_graph: Path) -> None:
    pytest.importorskip("onnxruntime")
    net = make_network({P.PARAM_WEIGHTS: str(raw_graph), P.PARAM_DEVICE: "cpu", P.PARAM_NUM_THREADS: "1"})
    assert isinstance(net, OnnxRuntimeRunner)
    assert net.session.get_session_options().intra_op_num_threads == 1
    assert net.session.get_providers() == ["CPUExecutionProvider"]
    images = [noise_image(70, 90, seed=1), noise_image(120, 64, seed=2), noise_image(33, 47, seed=3)]
    x, _ = tiny_model.preprocess(images)
    for batch in (x[:1], x):  # one graph, batch 1 and 3
        raw = net(batch.numpy())
        want = tiny_model.forward_raw(batch)
        assert list(raw) == list(P.RAW_OUTPUTS)
        for name in P.RAW_OUTPUTS:
            assert raw[name].dtype == np.float32 and raw[name].shape == tuple(want[name].shape)
            np.testing.assert_allclose(raw[name], want[name].numpy(), rtol=0, atol=RAW_TOL, err_msg=name)


def test_onnxruntime_runner_feeds_the_postprocessor_like_predict(tiny_model: RFDETRKeypoint, raw_graph: Path) -> None:
    pytest.importorskip("onnxruntime")
    cfg = tiny_model.config
    image = noise_image(203, 317, seed=5)
    x, sizes = tiny_model.preprocess([image])
    raw = OnnxRuntimeRunner(raw_graph, num_threads=1)(x.numpy())
    packed = Postprocessor(cfg, threshold=0.0, max_detections=100)(raw, sizes.numpy())
    packed[P.SOURCE_SIZE] = sizes.numpy()
    got = unpack_detections(packed, ServedMetadata.from_parameters(metadata_parameters(cfg)))[0]
    want = tiny_model.predict(image, threshold=0.0)
    assert len(got) == len(want) > 0
    np.testing.assert_array_equal(got.class_id, want.class_id)
    np.testing.assert_allclose(got.xyxy, want.xyxy, atol=1e-3)
    np.testing.assert_allclose(got.keypoints, want.keypoints, atol=1e-3, equal_nan=True)


def test_onnxruntime_runner_rejects_other_graphs(tiny_model: RFDETRKeypoint, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from rfkp.export import export_onnx

    detections = export_onnx(tiny_model, tmp_path / "detections.onnx", num_select=10)  # the final-detections export
    with pytest.raises(ValueError, match=r"not a raw-output rfkp graph.*gives \[scores") as info:
        make_network({P.PARAM_WEIGHTS: str(detections)})
    assert "rfkp export --outputs raw" in str(info.value)
    pixels = helper.make_tensor_value_info(P.PIXELS, TensorProto.FLOAT, ["n", 3, 8, 8])
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n", 3, 8, 8]) for n in ("pred_logits", "x")]
    nodes = [helper.make_node("Identity", [P.PIXELS], [o.name]) for o in outputs]
    graph = helper.make_graph(nodes, "wrong", [pixels], outputs)
    wrong = helper.make_model(graph, ir_version=9, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(wrong, tmp_path / "wrong.onnx")
    with pytest.raises(ValueError, match="not a raw-output rfkp graph"):
        OnnxRuntimeRunner(tmp_path / "wrong.onnx")
    with pytest.raises(FileNotFoundError, match="ONNX graph not found"):
        OnnxRuntimeRunner(tmp_path / "missing.onnx")


def test_onnxruntime_runner_errors(raw_graph: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="CPU only"):
        make_network({P.PARAM_WEIGHTS: str(raw_graph), P.PARAM_DEVICE: "cuda"})
    with pytest.raises(KeyError, match="weights"):
        make_network({})
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    with pytest.raises(RuntimeError, match=r"needs the 'onnxruntime' package.*pip install onnxruntime"):
        make_network({P.PARAM_WEIGHTS: str(raw_graph)})


def test_network_runner_threads(tiny_weights: Path) -> None:
    before = torch.get_num_threads()
    try:
        NetworkRunner(tiny_weights, num_threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
