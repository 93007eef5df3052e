"""The raw-output export (`ExportedDetector(..., outputs="raw")`): the graph the served ensemble's rfkp_model runs
on ONNX Runtime or TensorRT equals `RFDETRKeypoint.forward_raw`, dynamic batch, NAS knobs, both flavours."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from export_helpers import random_model, session

from rfkp import RFDETRKeypoint
from rfkp.export import INPUT_NAME, RAW_OUTPUT_NAMES, ExportedDetector, export_onnx, read_metadata
from rfkp.serving import protocol as P
from tests.conftest import shared_path

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

RAW_TOL = 1e-4  # absolute, every raw output (measured: 9.5e-6 on the peer model's logits, |logits| <= 15)


def run_raw(sess, pixels: torch.Tensor) -> dict[str, np.ndarray]:  # noqa: ANN001
    return dict(zip(RAW_OUTPUT_NAMES, sess.run(list(RAW_OUTPUT_NAMES), {INPUT_NAME: pixels.numpy()})))


def assert_raw_equal(got: dict[str, np.ndarray], want: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(P.RAW_OUTPUTS)
    for name in RAW_OUTPUT_NAMES:
        assert got[name].dtype == np.float32 and got[name].shape == tuple(want[name].shape), name
        np.testing.assert_allclose(got[name], want[name].numpy(), rtol=0, atol=RAW_TOL, err_msg=name)


@pytest.fixture(scope="module")
def model() -> RFDETRKeypoint:
    return random_model(seed=7)  # every parameter random: two keypointed classes (K = 7, 4) and one without


@pytest.mark.slow
def test_peer_fixture_raw_export_equals_forward_raw(tmp_path: Path) -> None:
    """The released architecture (ViT-S/12, 91 classes, K = 17) on the peer's random-weight fixture, at 192 px
    (576 px takes long on CPU; the graph is the same up to the baked-in sizes), dynamic batch at 2 and 1."""
    fixture = ("fixtures", "rfdetr-keypoint-preview-random")
    peer = RFDETRKeypoint.from_checkpoint(shared_path(*fixture, "checkpoint.pth"), device="cpu")
    image = shared_path(*fixture, "image.jpg")
    path = export_onnx(peer, tmp_path / "peer_raw.onnx", resolution=192, dynamic_batch=4, outputs="raw")
    photo, _ = peer.preprocess([image], resolution=192)
    noise = torch.randn(1, 3, 192, 192, generator=torch.Generator().manual_seed(0))
    pixels = torch.cat([photo, noise])
    sess = session(path)
    two = run_raw(sess, pixels)
    assert_raw_equal(two, peer.forward_raw(pixels))
    one = run_raw(sess, pixels[1:])
    assert_raw_equal(one, peer.forward_raw(pixels[1:]))
    assert two["pred_keypoints"].shape == (2, 100, 17, 8) and two["pred_logits"].shape == (2, 100, 91)
    meta = read_metadata(path)
    assert meta["rfkp_output_kind"] == "raw" and json.loads(meta["rfkp_outputs"]) == list(RAW_OUTPUT_NAMES)
    assert json.loads(meta["rfkp_output_shapes"])["pred_keypoints"] == ["batch", 100, 17, 8]
    assert "num_select" not in json.loads(meta["rfkp_sub_architecture"])


def test_raw_module_is_forward_raw_with_the_knobs(model: RFDETRKeypoint) -> None:
    knobs = {"dec_layers": 1, "num_queries": 5}
    raw = ExportedDetector(model, resolution=192, outputs="raw", **knobs).eval()
    assert raw.output_names == RAW_OUTPUT_NAMES
    assert raw.output_shapes(2) == {"pred_logits": (2, 5, 3), "pred_boxes": (2, 5, 4), "pred_keypoints": (2, 5, 14, 8)}
    x = torch.randn(2, 3, 192, 192, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = raw(x)
    want = model.forward_raw(x, **knobs)
    for name, tensor in zip(RAW_OUTPUT_NAMES, got):
        torch.testing.assert_close(tensor, want[name], rtol=0, atol=0, msg=name)
    with pytest.raises(ValueError, match="outputs must be one of"):
        ExportedDetector(model, outputs="logits")
    with pytest.raises(ValueError, match="pass the knobs to ExportedDetector"):
        export_onnx(raw, "unused.onnx", outputs="detections")


def test_fixed_batch_raw_graph_with_knobs(model: RFDETRKeypoint, tmp_path: Path) -> None:
    knobs = {"dec_layers": 1, "num_queries": 5}
    path = export_onnx(model, tmp_path / "raw.onnx", resolution=192, batch=2, outputs="raw", **knobs)
    graph = onnx.load(str(path))
    assert [o.name for o in graph.graph.output] == list(RAW_OUTPUT_NAMES)
    assert [i.name for i in graph.graph.input] == [INPUT_NAME]
    out_dims = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in graph.graph.output}
    assert out_dims == {"pred_logits": [2, 5, 3], "pred_boxes": [2, 5, 4], "pred_keypoints": [2, 5, 14, 8]}
    ops = {n.op_type for n in graph.graph.node}
    assert "TopK" in ops and not {"If", "Loop", "NonZero"} & ops  # the two-stage top-k; no post-processing
    assert sum(n.op_type == "GridSample" for n in graph.graph.node) == 2  # one decoder layer
    x = torch.randn(2, 3, 192, 192, generator=torch.Generator().manual_seed(2))
    assert_raw_equal(run_raw(session(path), x), model.forward_raw(x, **knobs))


def test_raw_plugin_graph_has_only_the_attention_nodes_and_computes_forward_raw(
    model: RFDETRKeypoint, tmp_path: Path
) -> None:
    """The flavour TensorRT engines for serving are built from: deformable attention as rfkp plugin nodes, no
    rescoring node (rescoring is post-processing, done by rfkp_postprocess)."""
    from export_plugin_reference import with_reference_functions

    cfg = model.config
    path = export_onnx(model, tmp_path / "raw_plugins.onnx", dynamic_batch=4, plugins=True, outputs="raw")
    graph = onnx.load(str(path))
    kinds = [n.op_type for n in graph.graph.node if n.domain]
    assert kinds == ["RfkpMSDeformAttn"] * (2 * cfg.dec_layers)
    assert read_metadata(path)["rfkp_flavour"] == "plugins"
    assert json.loads(read_metadata(path)["rfkp_plugins"])["ops"] == ["RfkpMSDeformAttn"]  # the graph's own
    grid = cfg.resolution // cfg.patch_size
    reference = with_reference_functions(
        graph, spatial_shape=(grid, grid), heads=cfg.ca_heads, channels=cfg.hidden_dim // cfg.ca_heads,
        points=cfg.ca_points, alpha=cfg.rescore_alpha,
    )  # fmt: skip
    x = torch.randn(2, 3, cfg.resolution, cfg.resolution, generator=torch.Generator().manual_seed(3))
    assert_raw_equal(run_raw(session(reference), x), model.forward_raw(x))
