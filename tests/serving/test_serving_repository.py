"""Rendering the committed model_repository templates: valid Triton configs with the model's shapes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
from google.protobuf import text_format  # noqa: E402

from rfkp.serving import protocol as P  # noqa: E402
from rfkp.serving.repository import (  # noqa: E402
    BatchingOptions,
    ServingOptions,
    default_templates,
    network_dims,
    render_repository,
    render_tensorrt_network,
)
from rfkp.variants import tiny  # noqa: E402

MODELS = (P.ENSEMBLE, P.PREPROCESS, P.NETWORK, P.POSTPROCESS)


def parse(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def dims(config: model_config_pb2.ModelConfig, kind: str) -> dict[str, list[int]]:
    return {t.name: list(t.dims) for t in getattr(config, kind)}


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    path = tmp_path / "w.pth"
    path.write_bytes(b"placeholder: rendering only checks that the file exists")
    return path


def test_rendered_repository_layout_and_shapes(tmp_path: Path, weights: Path) -> None:
    cfg = tiny(class_names=["mouse", "other"])
    options = ServingOptions(batching=BatchingOptions(max_batch_size=6, preferred_batch_sizes=(2, 6)),
                             max_detections=30, max_pixels=1234)
    repo = render_repository(tmp_path / "repo", config=cfg, weights=weights, options=options)
    for name in MODELS:
        assert (repo / name / "config.pbtxt").is_file()
        assert (repo / name / "1").is_dir()
        if name != P.ENSEMBLE:
            assert (repo / name / "1" / "model.py").is_file()
    configs = {name: parse(repo / name / "config.pbtxt") for name in MODELS}
    assert all(c.name == n and c.max_batch_size == 6 for n, c in configs.items())

    ens = configs[P.ENSEMBLE]
    assert ens.platform == "ensemble"
    assert [s.model_name for s in ens.ensemble_scheduling.step] == [P.PREPROCESS, P.NETWORK, P.POSTPROCESS]
    out = dims(ens, "output")
    k = cfg.max_keypoints
    assert set(out) == set(P.ENSEMBLE_OUTPUTS)
    assert out[P.OUT_KEYPOINTS] == [30, k, 2] and out[P.OUT_COVARIANCES] == [30, k, 2, 2]
    assert {t.name for t in ens.input if t.optional} == {P.INPUT_BYTES, P.INPUT_RAW, P.INPUT_THRESHOLD}
    params = {key: v.string_value for key, v in ens.parameters.items()}
    assert json.loads(params["class_names"]) == ["mouse", "other"]
    assert json.loads(params["keypoint_names"]) == [cfg.keypoint_names[0], []]
    assert json.loads(params["skeletons"])[0] == [list(e) for e in cfg.skeletons[0]]
    assert params[P.PARAM_WEIGHTS] == str(weights.resolve())

    net = configs[P.NETWORK]
    assert net.backend == "python"
    assert dims(net, "input")[P.PIXELS] == [3, cfg.resolution, cfg.resolution]
    assert dims(net, "output")["pred_keypoints"] == [cfg.num_queries, k, 8]
    assert list(net.dynamic_batching.preferred_batch_size) == [2, 6]
    assert net.dynamic_batching.max_queue_delay_microseconds == 2000
    assert configs[P.PREPROCESS].parameters[P.PARAM_MAX_PIXELS].string_value == "1234"
    post = {key: v.string_value for key, v in configs[P.POSTPROCESS].parameters.items()}
    assert json.loads(post[P.PARAM_MODEL_CONFIG]) == cfg.to_dict()
    assert float(post[P.PARAM_THRESHOLD]) == 0.5


def test_dynamic_batching_off(tmp_path: Path, weights: Path) -> None:
    options = ServingOptions(batching=BatchingOptions(enabled=False))
    repo = render_repository(tmp_path / "r", config=tiny(), weights=weights, options=options)
    assert not parse(repo / P.NETWORK / "config.pbtxt").HasField("dynamic_batching")


def test_tensorrt_engine_variant(tmp_path: Path, weights: Path) -> None:
    engine = tmp_path / "net.plan"
    engine.write_bytes(b"engine bytes")
    repo = render_repository(tmp_path / "r", config=tiny(), weights=weights, options=ServingOptions(engine=engine))
    net = parse(repo / P.NETWORK / "config.pbtxt")
    assert net.platform == "tensorrt_plan"
    assert (repo / P.NETWORK / "1" / "model.plan").read_bytes() == b"engine bytes"
    assert not (repo / P.NETWORK / "1" / "model.py").exists()
    assert dims(net, "output") == {k: v for k, v in network_dims(tiny()).items() if k != P.PIXELS}
    assert (repo / P.NETWORK / "config.pbtxt").read_text() == render_tensorrt_network(tiny())
    ens = parse(repo / P.ENSEMBLE / "config.pbtxt")
    assert ens.parameters[P.PARAM_RUNTIME].string_value == P.RUNTIME_TENSORRT


def test_torch_and_onnxruntime_variants(tmp_path: Path, weights: Path) -> None:
    cfg = tiny()
    repo = render_repository(tmp_path / "t", config=cfg, weights=weights)  # runtime auto without a graph: torch
    net = parse(repo / P.NETWORK / "config.pbtxt")
    assert net.parameters[P.PARAM_RUNTIME].string_value == P.RUNTIME_TORCH
    assert net.parameters[P.PARAM_WEIGHTS].string_value == str(weights.resolve())

    graph = tmp_path / "cache" / "raw.onnx"
    graph.parent.mkdir()
    graph.write_bytes(b"placeholder graph: rendering only places the file")
    options = ServingOptions(runtime="onnxruntime", num_threads=2)
    repo = render_repository(tmp_path / "o", config=cfg, weights=weights, options=options, network_graph=graph)
    net = parse(repo / P.NETWORK / "config.pbtxt")
    placed = repo / P.NETWORK / "1" / "model.onnx"
    assert net.backend == "python" and (repo / P.NETWORK / "1" / "model.py").is_file()
    params = {key: v.string_value for key, v in net.parameters.items()}
    assert params[P.PARAM_WEIGHTS] == str(placed) and params[P.PARAM_RUNTIME] == P.RUNTIME_ONNXRUNTIME
    assert params[P.PARAM_NUM_THREADS] == "2" and params[P.PARAM_DEVICE] == "cpu"
    assert placed.read_bytes() == graph.read_bytes() and placed.stat().st_ino == graph.stat().st_ino  # hard link
    assert dims(net, "output")["pred_keypoints"] == [cfg.num_queries, cfg.max_keypoints, 8]
    ens = {key: v.string_value for key, v in parse(repo / P.ENSEMBLE / "config.pbtxt").parameters.items()}
    assert ens[P.PARAM_WEIGHTS] == str(weights.resolve()) and ens[P.PARAM_RUNTIME] == P.RUNTIME_ONNXRUNTIME
    # auto with a graph also serves it
    auto = render_repository(tmp_path / "a", config=cfg, weights=weights, network_graph=graph)
    assert parse(auto / P.NETWORK / "config.pbtxt").parameters[P.PARAM_RUNTIME].string_value == "onnxruntime"


def test_runtime_choices_that_do_not_fit(tmp_path: Path, weights: Path) -> None:
    graph = tmp_path / "raw.onnx"
    graph.write_bytes(b"graph")
    engine = tmp_path / "net.plan"
    engine.write_bytes(b"engine")
    with pytest.raises(ValueError, match="needs the raw-output ONNX graph"):
        render_repository(tmp_path / "a", config=tiny(), weights=weights, options=ServingOptions(runtime="onnxruntime"))
    with pytest.raises(ValueError, match="give no ONNX graph"):
        render_repository(tmp_path / "b", config=tiny(), weights=weights, options=ServingOptions(runtime="torch"),
                          network_graph=graph)
    with pytest.raises(ValueError, match="not both"):
        render_repository(tmp_path / "c", config=tiny(), weights=weights, options=ServingOptions(engine=engine),
                          network_graph=graph)
    with pytest.raises(ValueError, match="CPU only"):
        render_repository(tmp_path / "d", config=tiny(), weights=weights, options=ServingOptions(device="cuda"),
                          network_graph=graph)
    with pytest.raises(FileNotFoundError, match="ONNX graph not found"):
        render_repository(tmp_path / "e", config=tiny(), weights=weights, network_graph=tmp_path / "none.onnx")


def _companion(path: Path, kind: str, shapes: dict, resolution: int, batch: dict) -> None:
    """An ONNX file carrying only the metadata `rfkp export` writes (the checks read nothing else)."""
    onnx = pytest.importorskip("onnx")
    model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    meta = {"rfkp_output_kind": kind, "rfkp_output_shapes": json.dumps(shapes),
            "rfkp_resolution": str(resolution), "rfkp_batch": json.dumps(batch)}
    if kind == "detections":
        del meta["rfkp_output_kind"]  # exports made before raw outputs existed carry no kind
    model.metadata_props.extend(onnx.StringStringEntryProto(key=k, value=v) for k, v in meta.items())
    onnx.save(model, path)


def test_engine_must_come_from_the_raw_export(tmp_path: Path, weights: Path) -> None:
    cfg = tiny()
    q, c, slots = cfg.num_queries, cfg.num_classes, cfg.max_keypoints
    raw = {"pred_logits": ["batch", q, c], "pred_boxes": ["batch", q, 4], "pred_keypoints": ["batch", q, slots, 8]}
    dynamic8 = {"batch": None, "max_batch": 8}
    engine = tmp_path / "rfkp.plan"  # rfkp export --format engine writes rfkp.onnx beside rfkp.plan
    engine.write_bytes(b"engine")
    options = ServingOptions(engine=engine)

    _companion(tmp_path / "rfkp.onnx", "detections", {"scores": ["batch", 100]}, cfg.resolution, dynamic8)
    with pytest.raises(ValueError, match="final-detections export.*--outputs raw"):
        render_repository(tmp_path / "a", config=cfg, weights=weights, options=options)
    _companion(tmp_path / "rfkp.onnx", "raw", raw, 192, dynamic8)
    with pytest.raises(ValueError, match="resolution and query count"):
        render_repository(tmp_path / "b", config=cfg, weights=weights, options=options)
    _companion(tmp_path / "rfkp.onnx", "raw", raw, cfg.resolution, {"batch": 1, "max_batch": None})
    with pytest.raises(ValueError, match="--dynamic-batch 8"):
        render_repository(tmp_path / "c", config=cfg, weights=weights, options=options)
    _companion(tmp_path / "rfkp.onnx", "raw", raw, cfg.resolution, dynamic8)
    repo = render_repository(tmp_path / "d", config=cfg, weights=weights, options=options)
    assert parse(repo / P.NETWORK / "config.pbtxt").platform == "tensorrt_plan"
    # the layout of rfkp export --format triton: folder/model.onnx beside folder/1/model.plan
    folder = tmp_path / "rfkp_model"
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.plan").write_bytes(b"engine")
    _companion(folder / "model.onnx", "detections", {"scores": ["batch", 100]}, cfg.resolution, dynamic8)
    with pytest.raises(ValueError, match="final-detections export"):
        render_repository(tmp_path / "e", config=cfg, weights=weights,
                          options=ServingOptions(engine=folder / "1" / "model.plan"))
    (folder / "model.onnx").write_bytes(b"\x08\x07garbage that is no protobuf \xff\xff")
    with pytest.raises(ValueError, match="is not a readable ONNX graph"):
        render_repository(tmp_path / "f", config=cfg, weights=weights,
                          options=ServingOptions(engine=folder / "1" / "model.plan"))
    assert not (tmp_path / "f").exists()


def test_templates_are_untouched(tmp_path: Path, weights: Path) -> None:
    templates = default_templates()
    before = {p: p.read_bytes() for p in templates.rglob("*") if p.is_file()}
    render_repository(tmp_path / "r", config=tiny(), weights=weights)
    assert {p: p.read_bytes() for p in templates.rglob("*") if p.is_file()} == before


def test_rendering_errors(tmp_path: Path, weights: Path) -> None:
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        render_repository(tmp_path / "a", config=tiny(), weights=tmp_path / "missing.pth")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    with pytest.raises(FileExistsError, match="non-empty"):
        render_repository(busy, config=tiny(), weights=weights)
    bad = tmp_path / "templates"
    for name in MODELS:
        (bad / name).mkdir(parents=True)
        (bad / name / "config.pbtxt").write_text("name: $nonsense\n")
    with pytest.raises(ValueError, match=r"unknown placeholder \$nonsense"):
        render_repository(tmp_path / "b", config=tiny(), weights=weights, templates=bad)
    with pytest.raises(FileNotFoundError, match="TensorRT engine not found"):
        render_repository(tmp_path / "c", config=tiny(), weights=weights,
                          options=ServingOptions(engine=tmp_path / "none.plan"))


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        (dict(max_batch_size=0), "max_batch_size must be >= 1"),
        (dict(max_batch_size=4, preferred_batch_sizes=(8,)), "outside [1, max_batch_size=4]"),
        (dict(max_queue_delay_us=-1), "max_queue_delay_us"),
    ],
)
def test_batching_options_are_validated(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        BatchingOptions(**kwargs)
    assert fragment in str(info.value)


def test_preferred_batch_sizes_default_to_half_and_all_of_the_largest() -> None:
    assert BatchingOptions().preferred_batch_sizes == (4, 8)
    assert BatchingOptions(max_batch_size=2).preferred_batch_sizes == (1, 2)  # (4, 8) would be out of range
    assert BatchingOptions(max_batch_size=1).preferred_batch_sizes == (1,)
    assert BatchingOptions(max_batch_size=6, preferred_batch_sizes=(3,)).preferred_batch_sizes == (3,)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        (dict(device="tpu"), "device must be"),
        (dict(threshold=1.5), "threshold must lie in [0, 1]"),
        (dict(max_detections=0), "max_detections must be >= 1"),
        (dict(num_threads=-1), "thread counts"),
        (dict(runtime="tensorflow"), "runtime must be one of auto, torch, onnxruntime"),
        (dict(runtime="onnxruntime", device="cuda"), "CPU only"),
        (dict(runtime="torch", engine=Path("e.plan")), "exclude each other"),
    ],
)
def test_serving_options_are_validated(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        ServingOptions(**kwargs)
    assert fragment in str(info.value)
