"""`rfkp export`: onnx writes a graph (final detections or raw outputs), engine without TensorRT says what to
install, triton writes a config that Triton's own protobuf schema parses: a standalone detections model, or the
ensemble's rfkp_model exactly as `rfkp serve --engine` renders it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rfkp import RFDETRKeypoint
from rfkp.cli.main import main
from rfkp.config import ModelConfig
from rfkp.export.engine import tensorrt_available
from rfkp.export.triton_entry import TritonEntryOptions, render_config
from rfkp.serving.repository import BatchingOptions, ServingOptions, render_tensorrt_network
from rfkp.variants import tiny

pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "tiny.pth"
    RFDETRKeypoint.from_config(
        tiny(num_classes=3, num_keypoints_per_class=[7, 4]), device="cpu"
    ).save_checkpoint(path)
    return path


def _parse_config(text: str):  # noqa: ANN202
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from google.protobuf import text_format

    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_onnx_writes_a_graph_with_the_knobs(weights: Path, tmp_path: Path) -> None:
    from rfkp.export import read_metadata

    out = tmp_path / "m.onnx"
    args = ["--num-select", "10", "--dynamic-batch", "4", "--dec-layers", "1", "--resolution", "192"]
    rc = main(["export", "--weights", str(weights), "--out", str(out), *args])
    assert rc == 0 and out.is_file()
    meta = read_metadata(out)
    assert meta["rfkp_flavour"] == "portable" and meta["rfkp_resolution"] == "192"
    assert json.loads(meta["rfkp_sub_architecture"])["dec_layers"] == 1
    assert json.loads(meta["rfkp_batch"]) == {"batch": None, "max_batch": 4}


def test_onnx_raw_outputs(weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rfkp.export import read_metadata

    out = tmp_path / "raw.onnx"
    args = ["--outputs", "raw", "--dynamic-batch", "8", "--resolution", "192", "--num-queries", "10"]
    assert main(["export", "--weights", str(weights), "--out", str(out), *args]) == 0
    assert "10 queries, raw outputs" in capsys.readouterr().out
    meta = read_metadata(out)
    assert meta["rfkp_output_kind"] == "raw" and meta["rfkp_resolution"] == "192"
    assert json.loads(meta["rfkp_outputs"]) == ["pred_logits", "pred_boxes", "pred_keypoints"]
    assert json.loads(meta["rfkp_output_shapes"])["pred_logits"] == ["batch", 10, 3]
    assert main(["export", "--weights", str(weights), "--out", str(out), "--outputs", "raw", "--num-select", "5"]) == 1
    assert "--num-select" in capsys.readouterr().err


@pytest.mark.skipif(tensorrt_available(), reason="tensorrt is installed here")
def test_engine_without_tensorrt_says_what_to_install(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["export", "--weights", str(weights), "--format", "engine", "--out", str(tmp_path / "m.plan")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "pip install" in err and "tensorrt" in err
    assert "cmake -S csrc/tensorrt -B build/tensorrt" in err and "RFKP_TRT_PLUGIN_LIB" in err
    assert not any(tmp_path.iterdir())  # nothing exported before failing


def test_triton_entry_parses_and_carries_the_engine(weights: Path, tmp_path: Path) -> None:
    plan = tmp_path / "built.plan"
    plan.write_bytes(b"serialized engine bytes")
    folder = tmp_path / "repo" / "rfkp_detector"
    args = [
        "--engine",
        str(plan),
        "--dynamic-batch",
        "8",
        "--num-select",
        "30",
        "--max-queue-delay-us",
        "500",
    ]
    rc = main(["export", "--weights", str(weights), "--format", "triton", "--out", str(folder), *args])
    assert rc == 0
    assert (folder / "1" / "model.plan").read_bytes() == plan.read_bytes()
    assert (folder / "model.onnx").is_file()
    cfg = _parse_config((folder / "config.pbtxt").read_text())
    assert cfg.name == "rfkp_detector" and cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 8
    assert [(i.name, list(i.dims)) for i in cfg.input] == [("PIXELS", [3, 256, 256])]
    dims = {o.name: list(o.dims) for o in cfg.output}
    assert dims == {"scores": [30], "labels": [30], "boxes": [30, 4], "keypoints": [30, 7, 2],
                    "covariances": [30, 7, 2, 2], "findable": [30, 7], "visible": [30, 7]}  # fmt: skip
    assert {o.name: o.data_type for o in cfg.output}["labels"] == 9  # TYPE_INT64
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 8]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    assert json.loads(cfg.parameters["class_names"].string_value) == ["class_0", "class_1", "class_2"]
    assert "RfkpMSDeformAttn" in (folder / "config.pbtxt").read_text()  # the plugin note


def test_raw_triton_entry_is_the_served_rfkp_model(weights: Path, tmp_path: Path) -> None:
    """--format triton --outputs raw writes rfkp_model of the ensemble: the config `rfkp serve --engine` renders
    (same template), the raw-output plugin graph beside the plan, which `rfkp serve --engine` then accepts."""
    plan = tmp_path / "built.plan"
    plan.write_bytes(b"serialized engine bytes")
    folder = tmp_path / "repo" / "rfkp_model"
    args = ["--outputs", "raw", "--engine", str(plan), "--dynamic-batch", "8", "--max-queue-delay-us", "500"]
    assert main(["export", "--weights", str(weights), "--format", "triton", "--out", str(folder), *args]) == 0
    assert (folder / "1" / "model.plan").read_bytes() == plan.read_bytes()
    text = (folder / "config.pbtxt").read_text()
    cfg = _parse_config(text)
    model = RFDETRKeypoint.from_checkpoint(weights, device="cpu").config
    served = ServingOptions(
        batching=BatchingOptions(max_batch_size=8, preferred_batch_sizes=(4, 8), max_queue_delay_us=500)
    )
    assert cfg == _parse_config(render_tensorrt_network(model, served))  # what rfkp serve --engine renders
    assert cfg.name == "rfkp_model" and cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 8
    assert {o.name: list(o.dims) for o in cfg.output} == {
        "pred_logits": [20, 3], "pred_boxes": [20, 4], "pred_keypoints": [20, 14, 8]
    }  # fmt: skip
    assert "RfkpMSDeformAttn" in text and "RfkpGaussianRescore" not in text
    from rfkp.export import read_metadata

    meta = read_metadata(folder / "model.onnx")
    assert meta["rfkp_output_kind"] == "raw" and meta["rfkp_flavour"] == "plugins"
    # rfkp serve --engine accepts this engine (its graph is the raw export); the detections entry is refused
    from rfkp.serving.repository import render_repository

    repo = render_repository(tmp_path / "served", config=model, weights=weights,
                             options=ServingOptions(engine=folder / "1" / "model.plan"))  # fmt: skip
    assert (repo / "rfkp_model" / "config.pbtxt").read_text() == render_tensorrt_network(model)
    detections = tmp_path / "standalone" / "rfkp_model"
    args = ["--engine", str(plan), "--dynamic-batch", "8"]
    assert main(["export", "--weights", str(weights), "--format", "triton", "--out", str(detections), *args]) == 0
    with pytest.raises(ValueError, match="final-detections export"):
        render_repository(tmp_path / "refused", config=model, weights=weights,
                          options=ServingOptions(engine=detections / "1" / "model.plan"))  # fmt: skip


def test_raw_triton_entry_needs_a_dynamic_batch_and_the_network_name(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["export", "--weights", str(weights), "--format", "triton", "--outputs", "raw"]
    assert main([*base, "--out", str(tmp_path / "rfkp_model")]) == 1
    assert "--dynamic-batch MAX" in capsys.readouterr().err
    assert main([*base, "--dynamic-batch", "4", "--out", str(tmp_path / "detector")]) == 1
    assert "named rfkp_model" in capsys.readouterr().err
    folder = str(tmp_path / "rfkp_model")
    model = RFDETRKeypoint.from_checkpoint(weights, device="cpu").config
    other = model.resolution + model.patch_size * model.num_windows
    assert main([*base, "--dynamic-batch", "4", "--out", folder, "--resolution", str(other)]) == 1
    assert f"resolution {other} instead of {model.resolution}" in capsys.readouterr().err
    assert main([*base, "--dynamic-batch", "4", "--out", folder, "--num-queries", str(model.num_queries - 1)]) == 1
    assert f"{model.num_queries - 1} queries instead of {model.num_queries}" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before exporting anything


def test_outputs_never_replace_inputs_and_bad_options_stop_first(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "w.pt"
    copy.write_bytes(weights.read_bytes())
    assert main(["export", "--weights", str(copy), "--out", str(copy)]) == 1
    assert "is also --weights" in capsys.readouterr().err
    assert copy.read_bytes() == weights.read_bytes()
    assert main(["export", "--weights", str(copy), "--format", "engine", "--out", str(tmp_path / "e.onnx")]) == 1
    assert "an engine is not an .onnx file" in capsys.readouterr().err
    entry = tmp_path / "entry"
    args = ["export", "--weights", str(copy), "--format", "triton", "--out", str(entry), "--dynamic-batch", "2"]
    assert main([*args, "--engine", str(tmp_path / "nope.plan")]) == 1
    assert "--engine" in capsys.readouterr().err and not entry.exists()  # nothing half-written
    (entry / "1").mkdir(parents=True)
    (entry / "1" / "model.plan").write_bytes(b"an older engine")
    assert main(args) == 1
    assert "already holds a model entry" in capsys.readouterr().err
    assert not (entry / "config.pbtxt").exists()
    for option in (["--resolution", "-32"], ["--num-queries", "0"], ["--opset", "5"], ["--opset", "99"],
                   ["--opset", "21"],  # the exporter rfkp uses (TorchScript) stops at 20
                   ["--max-queue-delay-us", "-5"], ["--max-queue-delay-us", "99999999999999999999"]):  # fmt: skip
        with pytest.raises(SystemExit):
            main(["export", "--weights", str(copy), "--out", str(tmp_path / "x.onnx"), *option])
        err = capsys.readouterr().err
        assert "expected" in err or "opset must lie" in err
    assert not (tmp_path / "x.onnx").exists()


def test_fixed_batch_entry_has_no_batching() -> None:
    config = ModelConfig(
        num_classes=2, num_keypoints_per_class=[3], keypoint_names=[['a "quoted" name', "b", "c"]]
    )
    options = TritonEntryOptions(
        batch=2, max_batch=None, metadata={"keypoint_names": json.dumps(config.keypoint_names)}
    )
    cfg = _parse_config(render_config("m", config=config, resolution=64, num_select=5, options=options))
    assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
    assert list(cfg.input[0].dims) == [2, 3, 64, 64] and list(cfg.output[3].dims) == [2, 5, 3, 2]
    assert json.loads(cfg.parameters["keypoint_names"].string_value) == config.keypoint_names
    with pytest.raises(ValueError, match="preferred"):
        TritonEntryOptions(max_batch=4, preferred_batch_sizes=(8,)).preferred()


def test_paths_and_the_plugin_library_are_checked_before_exporting(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    base = ["export", "--weights", str(weights)]
    cases = [
        ([*base, "--out", str(tmp_path / "newdir") + "/"], "names a folder; give a file name"),
        ([*base, "--out", "/dev/null"], "is not a regular file"),
    ]
    (tmp_path / "entry").mkdir()
    (tmp_path / "entry" / "1").write_text("a file where the version folder goes")
    cases.append(([*base, "--format", "triton", "--dynamic-batch", "2", "--out", str(tmp_path / "entry")],
                  "is a file, where the engine's version folder goes"))  # fmt: skip
    (tmp_path / "file").write_text("")
    cases.append(([*base, "--format", "triton", "--out", str(tmp_path / "file" / "entry")], "is a file, not a folder"))
    for argv, message in cases:
        assert main(argv) == 1, argv
        assert message in capsys.readouterr().err, argv
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry", "file"]  # nothing exported
    assert [p.name for p in (tmp_path / "entry").iterdir()] == ["1"]
    from rfkp.export import engine as trt_engine

    monkeypatch.setattr(trt_engine, "tensorrt_available", lambda: True)  # the library is checked first
    for flags in (["--plugin-lib", str(tmp_path / "missing.so")], []):
        monkeypatch.setenv("RFKP_TRT_PLUGIN_LIB", str(tmp_path / "env_missing.so"))
        assert main([*base, "--format", "engine", "--out", str(tmp_path / "m.plan"), *flags]) == 1
        err = capsys.readouterr().err
        assert "plugin library not found" in err and ("--plugin-lib" if flags else "$RFKP_TRT_PLUGIN_LIB") in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry", "file"]
    for option in ("--out", "--engine", "--plugin-lib"):  # "" is an unset variable, not the current folder
        argv = [*base, "--format", "triton", "--out", str(tmp_path / "e"), option, ""]
        with pytest.raises(SystemExit):
            main(argv)
        assert f"argument {option}: expected a path, got an empty string" in capsys.readouterr().err


@pytest.mark.skipif(tensorrt_available(), reason="with TensorRT the entry's engine is built here")
def test_triton_entry_without_tensorrt_prints_the_engine_command_it_needs(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shlex

    from rfkp.cli.main import build_parser

    folder = tmp_path / "entry"
    argv = ["export", "--weights", str(weights), "--format", "triton", "--out", str(folder), "--dynamic-batch", "4",
            "--resolution", "192", "--dec-layers", "1", "--opset", "18",
            "--plugin-lib", "/plugins/librfkp_trt_plugins.so"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    command = next(line.strip() for line in out.splitlines() if line.strip().startswith("rfkp export"))
    parsed = build_parser().parse_args(shlex.split(command)[1:])  # a command rfkp accepts, for the same entry
    assert (parsed.format, parsed.dynamic_batch, parsed.resolution, parsed.dec_layers) == ("engine", 4, 192, 1)
    assert parsed.weights == str(weights) and parsed.plugin_lib == "/plugins/librfkp_trt_plugins.so"
    assert parsed.opset == 18
    assert parsed.out == str(folder / "1" / "model.plan")
    assert "--plugin-lib /plugins/librfkp_trt_plugins.so was not used" in out
    assert main([*argv[:-2], "--out", str(tmp_path / "second")]) == 0  # no --plugin-lib: none is made up
    out = capsys.readouterr().out
    command = next(line.strip() for line in out.splitlines() if line.strip().startswith("rfkp export"))
    assert "--plugin-lib" not in command and "set $RFKP_TRT_PLUGIN_LIB" in out


def test_options_that_do_not_apply_are_refused_before_exporting(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from rfkp.export import engine as trt_engine

    base = ["export", "--weights", str(weights)]
    onnx_out = ["--out", str(tmp_path / "m.onnx")]
    (tmp_path / "empty.plan").write_bytes(b"")
    (tmp_path / "built.plan").write_bytes(b"plan")
    cases = [
        ([*base, *onnx_out, "--fp32"], "--fp32 only apply when an engine is built (--format engine or triton)"),
        ([*base, *onnx_out, "--fp32", "--plugin-lib", "x.so"], "--fp32 and --plugin-lib only apply when an engine"),
        ([*base, "--format", "triton", "--dynamic-batch", "2", "--out", str(tmp_path / "e"), "--engine",
          str(tmp_path / "built.plan"), "--fp32"], "--fp32 only apply when an engine is built, not with --engine"),
        ([*base, *onnx_out, "--max-queue-delay-us", "10"],
         "--max-queue-delay-us sets the dynamic batching of a --format triton entry"),
        ([*base, "--format", "engine", "--dynamic-batch", "2", "--out", str(tmp_path / "m.plan"),
          "--max-queue-delay-us", "10"], "--max-queue-delay-us sets the dynamic batching of a --format triton"),
        ([*base, "--format", "triton", "--out", str(tmp_path / "e"), "--max-queue-delay-us", "10"],
         "--max-queue-delay-us sets Triton's dynamic batching: it needs --dynamic-batch MAX"),
        ([*base, "--format", "triton", "--out", str(tmp_path / "e"), "--engine", str(tmp_path / "empty.plan")],
         "empty.plan is empty: not a TensorRT engine"),
    ]  # fmt: skip
    monkeypatch.setitem(sys.modules, "onnx", None)  # an install without the export extra
    cases.append(([*base, *onnx_out], "the 'onnx' package is not installed: pip install 'rfkp[export]'"))
    for argv, message in cases:
        assert main(argv) == 1, argv
        assert message in capsys.readouterr().err, argv
    monkeypatch.undo()
    with pytest.raises(SystemExit):
        main([*base, *onnx_out, "--batch", "65"])
    assert "a fixed batch is at most 64" in capsys.readouterr().err
    # a plugin library that does not load is reported before the (long) export
    from test_engine import _fake_tensorrt, _layers

    trt, _ = _fake_tensorrt(_layers(), set())
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(trt_engine, "tensorrt_available", lambda: True)

    def not_a_library(path: str, mode: int) -> object:
        raise OSError(f"{path}: file too short")

    monkeypatch.setattr(trt_engine.ctypes, "CDLL", not_a_library)
    (tmp_path / "notalib.txt").write_text("text")
    argv = [*base, "--format", "engine", "--out", str(tmp_path / "m.plan"), "--plugin-lib", str(tmp_path / "notalib.txt")]
    assert main(argv) == 1
    assert "--plugin-lib: cannot load the plugin library" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["built.plan", "empty.plan", "notalib.txt"]  # no export
