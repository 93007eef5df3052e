"""Exported ONNX graphs on ONNX Runtime (CPU) against PyTorch and `predict()`: both flavours, dynamic batch,
NAS knobs, metadata, and the plugin-node contract."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from export_helpers import (
    as_numpy,
    assert_same_detections,
    image_rows,
    in_input_pixels,
    random_model,
    run,
    session,
)

from rfkp import ModelConfig, RFDETRKeypoint
from rfkp.export import INPUT_NAME, OUTPUT_NAMES, ExportedDetector, export_onnx, plugin_nodes, read_metadata
from rfkp.postprocess import decode_detections
from tests.conftest import shared_path

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

R = 256
SELECT = 40


@pytest.fixture(scope="module")
def model() -> RFDETRKeypoint:
    return random_model(seed=5)


@pytest.fixture(scope="module")
def images() -> list[Path]:
    mouse = sorted(shared_path("data", "mirror-mouse", "images").glob("*.png"))[:2]
    coco = sorted(shared_path("data", "coco-sample", "images").glob("*.jpg"))[:1]
    return mouse + coco


@pytest.fixture(scope="module")
def portable(model: RFDETRKeypoint, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "portable.onnx"
    return export_onnx(model, path, dynamic_batch=4, num_select=SELECT)


@pytest.fixture(scope="module")
def plugins(model: RFDETRKeypoint, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "plugins.onnx"
    return export_onnx(model, path, dynamic_batch=4, num_select=SELECT, plugins=True)


def _ops(graph: onnx.ModelProto) -> list[tuple[str, str]]:
    return [(n.domain, n.op_type) for n in graph.graph.node]


def test_portable_graph_is_standard_onnx_with_metadata(portable: Path, model: RFDETRKeypoint) -> None:
    graph = onnx.load(str(portable))
    onnx.checker.check_model(graph, full_check=True)
    ops = _ops(graph)
    assert all(domain in ("", "ai.onnx") for domain, _ in ops)
    assert [o.domain for o in graph.opset_import] == [""]
    assert ops.count(("", "GridSample")) == 2 * model.config.dec_layers  # instance and keypoint attention
    assert ("", "TopK") in ops and not {"If", "Loop", "NonZero"} & {op for _, op in ops}  # engine-friendly
    meta = read_metadata(portable)
    assert meta["rfkp_flavour"] == "portable" and meta["rfkp_resolution"] == str(R)
    assert json.loads(meta["rfkp_outputs"]) == list(OUTPUT_NAMES)
    assert ModelConfig.from_dict(json.loads(meta["rfkp_config"])).to_dict() == model.config.to_dict()
    assert json.loads(meta["keypoint_names"])[2] == [] and len(json.loads(meta["class_names"])) == 3
    assert json.loads(meta["rfkp_batch"]) == {"batch": None, "max_batch": 4}
    assert [i.name for i in graph.graph.input] == [INPUT_NAME]
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    keypoints = next(o for o in graph.graph.output if o.name == "keypoints").type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in keypoints] == ["batch", SELECT, 7, 2]


def test_portable_onnx_equals_torch_and_predict_on_real_images(
    portable: Path, model: RFDETRKeypoint, images: list[Path]
) -> None:
    pixels, _ = model.preprocess(images, resolution=R)
    got = run(session(portable), pixels)  # batch 3 from the dynamic-batch graph
    with torch.no_grad():
        want = as_numpy(ExportedDetector(model, num_select=SELECT)(pixels))
    predicted = model.predict(images, threshold=0.0, num_select=SELECT)
    for i, dets in enumerate(predicted):
        assert_same_detections(image_rows(want, i), image_rows(got, i), ordered=False)
        assert len(dets) > SELECT // 2
        assert_same_detections(in_input_pixels(dets, R), image_rows(got, i), ordered=False)


def test_one_dynamic_batch_graph_serves_batch_one_and_three(portable: Path, model: RFDETRKeypoint) -> None:
    sess = session(portable)
    x = torch.randn(3, 3, R, R, generator=torch.Generator().manual_seed(1))
    three = run(sess, x)
    one = run(sess, x[1:2])
    assert three["boxes"].shape == (3, SELECT, 4) and one["keypoints"].shape == (1, SELECT, 7, 2)
    assert_same_detections(image_rows(three, 1), image_rows(one, 0), ordered=False)


def test_export_breaks_probability_ties_like_the_stable_sort(tmp_path: Path) -> None:
    """Saturated class probabilities tie; the exported TopK must keep the lower (query, class) index first."""

    class Decode(torch.nn.Module):
        def forward(self, logits: torch.Tensor, boxes: torch.Tensor, kps: torch.Tensor) -> torch.Tensor:
            raw = {"pred_logits": logits, "pred_boxes": boxes, "pred_keypoints": kps}
            sizes = torch.tensor([[64, 64]]).expand(logits.shape[0], 2)
            return decode_detections(raw, sizes, num_keypoints_per_class=[3], num_select=12)["labels"]

    g = torch.Generator().manual_seed(2)
    logits = torch.tensor([30.0, 25.0, 2.0, -1.0])[torch.randint(0, 4, (2, 8, 2), generator=g)]
    boxes, kps = torch.rand(2, 8, 4, generator=g), torch.randn(2, 8, 3, 8, generator=g)
    path = tmp_path / "decode.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Decode(), (logits, boxes, kps), str(path), dynamo=False, opset_version=17)
    sess = session(path)
    got = sess.run(
        None, dict(zip([i.name for i in sess.get_inputs()], (logits.numpy(), boxes.numpy(), kps.numpy())))
    )
    want = Decode()(logits, boxes, kps)
    assert (logits.sigmoid() == 1).sum() > 4  # real ties
    np.testing.assert_array_equal(got[0], want.numpy())


def test_plugin_graph_carries_exactly_the_contract(plugins: Path, model: RFDETRKeypoint) -> None:
    graph = onnx.load(str(plugins))
    onnx.checker.check_model(graph, full_check=True)
    assert {(o.domain, o.version) for o in graph.opset_import} == {("", 17), ("rfkp", 1)}
    custom = [n for n in graph.graph.node if n.domain]
    assert {n.domain for n in custom} == {"rfkp"}
    kinds = [n.op_type for n in custom]
    assert kinds.count("RfkpMSDeformAttn") == 2 * model.config.dec_layers
    assert kinds.count("RfkpGaussianRescore") == 1 and len(kinds) == 2 * model.config.dec_layers + 1
    assert ("", "GridSample") not in _ops(graph)
    for node in custom:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        expected = {"plugin_version": b"1", "plugin_namespace": b"rfkp"}
        if node.op_type == "RfkpGaussianRescore":
            expected["alpha"] = pytest.approx(model.config.rescore_alpha)
            assert (len(node.input), len(node.output)) == (6, 3)
        else:
            assert (len(node.input), len(node.output)) == (6, 1)
        assert attrs == expected
    # input dtypes of the contract: int64 level tables, int32 active mask (TensorRT casts bool to int32 only), float elsewhere
    inferred = onnx.shape_inference.infer_shapes(graph)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    types |= {i.name: i.data_type for i in inferred.graph.initializer}
    attn = next(n for n in custom if n.op_type == "RfkpMSDeformAttn")
    rescore = next(n for n in custom if n.op_type == "RfkpGaussianRescore")
    f, i64, i32 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64, onnx.TensorProto.INT32
    assert [types.get(name) for name in attn.input] == [f, i64, i64, f, f, f]
    assert [types.get(name) for name in rescore.input] == [f, f, i32, f, f, f]
    assert json.loads(read_metadata(plugins)["rfkp_plugins"])["ops"] == sorted(plugin_nodes.PLUGINS)


def test_plugin_graph_computes_the_portable_result(
    plugins: Path, model: RFDETRKeypoint, images: list[Path]
) -> None:
    from export_plugin_reference import with_reference_functions

    cfg = model.config
    grid = R // cfg.patch_size
    graph = with_reference_functions(
        onnx.load(str(plugins)), spatial_shape=(grid, grid), heads=cfg.ca_heads,
        channels=cfg.hidden_dim // cfg.ca_heads, points=cfg.ca_points, alpha=cfg.rescore_alpha,
    )  # fmt: skip
    pixels, _ = model.preprocess(images[:2], resolution=R)
    got = run(session(graph), pixels)
    with torch.no_grad():
        want = as_numpy(ExportedDetector(model, num_select=SELECT)(pixels))
    for i in range(2):
        assert_same_detections(image_rows(want, i), image_rows(got, i), ordered=False)


def test_nas_knobs_change_the_graph_and_match_predict(
    model: RFDETRKeypoint, images: list[Path], portable: Path, tmp_path: Path
) -> None:
    knobs = {"dec_layers": 1, "num_queries": 5}
    path = export_onnx(model, tmp_path / "small.onnx", resolution=192, num_select=12, **knobs)
    graph = onnx.load(str(path))
    assert _ops(graph).count(("", "GridSample")) == 2  # one decoder layer instead of two
    assert len(graph.graph.node) < len(onnx.load(str(portable)).graph.node)
    dims = [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 192, 192]
    out_dims = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in graph.graph.output}
    assert out_dims["covariances"] == [1, 12, 7, 2, 2]  # N = min(12, 5 queries x 3 classes)
    assert json.loads(read_metadata(path)["rfkp_sub_architecture"])["num_queries"] == 5
    pixels, _ = model.preprocess(images[2:], resolution=192)
    got = run(session(path), pixels)
    dets = model.predict(images[2], threshold=0.0, resolution=192, num_select=12, **knobs)
    assert_same_detections(in_input_pixels(dets, 192), image_rows(got, 0), ordered=False)
    full = model.predict(images[2], threshold=0.0, resolution=192, num_select=12)
    assert not np.allclose(np.sort(full.score), np.sort(dets.score))  # the knobs do change the result


@pytest.mark.slow
def test_peer_checkpoint_at_576(tmp_path: Path) -> None:
    """The released architecture (576 px, K=17, 91 classes) on the peer's random-weight fixture and image."""
    fixture = ("fixtures", "rfdetr-keypoint-preview-random")
    model = RFDETRKeypoint.from_checkpoint(shared_path(*fixture, "checkpoint.pth"), device="cpu")
    image = shared_path(*fixture, "image.jpg")
    path = export_onnx(model, tmp_path / "peer.onnx")
    pixels, _ = model.preprocess([image])
    got = image_rows(run(session(path), pixels), 0)
    with torch.no_grad():
        want = image_rows(as_numpy(ExportedDetector(model)(pixels)), 0)
    assert got["keypoints"].shape == (100, 17, 2)
    assert_same_detections(want, got, ordered=False)
    dets = model.predict(image, threshold=0.0)
    assert len(dets) == 100
    assert_same_detections(in_input_pixels(dets, 576), got, ordered=False)


@pytest.mark.parametrize("plugins", [False, True])
def test_peer_architecture_options_export(tmp_path: Path, plugins: bool) -> None:
    model = random_model(seed=7, keypoint_dim_downscale=2, inter_instance_kp_attn=True, decoder_registers=2,
                         projector_norm="batch")
    path = export_onnx(model, tmp_path / "narrow.onnx", num_select=12, plugins=plugins)
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph, full_check=True)
    if plugins:  # ONNX Runtime has no kernels for the plugin nodes: their presence is what is checked here
        assert {op for _, op in _ops(graph)} >= {"RfkpMSDeformAttn", "RfkpGaussianRescore"}
        return
    pixels = torch.randn(1, 3, R, R, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = image_rows(as_numpy(ExportedDetector(model, num_select=12)(pixels)), 0)
    assert_same_detections(want, image_rows(run(session(path), pixels), 0), ordered=False)


def test_a_failed_export_keeps_the_old_file_and_the_callers_train_mode(
    model: RFDETRKeypoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The graph is written beside the target and renamed only when complete: an export that fails (or is
    killed) part-way leaves the previous file intact. The caller's model keeps its train/eval state."""
    from rfkp.export import onnx_export

    path = tmp_path / "m.onnx"
    export_onnx(model, path, resolution=64, num_select=5)
    before = path.read_bytes()
    model.network.train()
    try:
        export_onnx(model, path, resolution=64, num_select=5)
        assert model.network.training and all(m.training for m in model.network.modules())

        def fail(*args: object, **kwargs: object) -> None:
            raise RuntimeError("killed mid-write")

        monkeypatch.setattr(onnx_export, "_annotate", fail)
        with pytest.raises(RuntimeError, match="killed mid-write"):
            export_onnx(model, path, resolution=96, num_select=5)
        assert model.network.training
    finally:
        model.network.eval()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no partial file left
    import os
    import time

    partial = tmp_path / ".m.onnx.999999999.tmp"
    partial.write_bytes(b"partial of a writer no longer running")
    os.utime(partial, (time.time() - 7200, time.time() - 7200))  # older than STALE_PARTIAL_AGE_S
    monkeypatch.undo()
    export_onnx(model, path, resolution=64, num_select=5)
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
