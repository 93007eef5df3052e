"""The ONNX Runtime network runtime of the served ensemble: which runtime is chosen and why, the raw ONNX export
cached by weights hash and resolution, and a real Triton server on ONNX Runtime against in-process predict()."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from serving_helpers import SHARED, assert_same, encode, launch_for_tests, noise_image

from rfkp.api import RFDETRKeypoint
from rfkp.serving import deploy
from rfkp.serving import protocol as P
from rfkp.serving.deploy import (
    MAX_GRAPH_AGE_S,
    PreparedWeights,
    choose_runtime,
    launch,
    prepare_raw_graph,
    prune_graph_cache,
)
from rfkp.serving.launcher import TritonServer
from rfkp.serving.repository import ServingOptions


@pytest.mark.parametrize(
    ("options", "installed", "runtime", "why"),
    [
        (ServingOptions(), True, "onnxruntime", "auto: onnxruntime is installed"),
        (ServingOptions(), False, "torch", "auto: onnxruntime and onnx not installed"),
        (ServingOptions(runtime="torch"), True, "torch", "--runtime torch"),
        (ServingOptions(runtime="onnxruntime"), True, "onnxruntime", "--runtime onnxruntime"),
        (ServingOptions(device="cuda"), True, "torch", "device cuda: ONNX Runtime is used on CPU only"),
        (ServingOptions(engine=Path("m.plan")), True, "tensorrt_plan", "TensorRT engine m.plan"),
    ],
    ids=["auto", "auto-without-onnxruntime", "torch", "onnxruntime", "cuda", "engine"],
)
def test_runtime_choice_and_reason(
    options: ServingOptions, installed: bool, runtime: str, why: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deploy, "_importable", lambda module: installed)
    choice = choose_runtime(options)
    assert choice.name == runtime and why in choice.reason and choice.graph is None


def test_asking_for_onnxruntime_without_it_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deploy, "_importable", lambda module: module != "onnxruntime")
    with pytest.raises(RuntimeError, match=r"needs the onnxruntime package.*pip install.*--runtime torch"):
        choose_runtime(ServingOptions(runtime="onnxruntime"))


def test_raw_graph_is_exported_once_per_weights_and_resolution(
    tiny_model: RFDETRKeypoint, tiny_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnx")
    from rfkp.export import read_metadata

    prepared = PreparedWeights(tiny_weights, tiny_model.config, random_init=False)
    cache = tmp_path / "cache"
    graph, exported = prepare_raw_graph(prepared, max_batch=4, cache_dir=cache)
    assert exported and graph.parent == cache and f"-r{tiny_model.config.resolution}.onnx" in graph.name
    assert [p.name for p in cache.iterdir()] == [graph.name]  # no partial file left behind
    meta = read_metadata(graph)
    assert meta["rfkp_output_kind"] == "raw" and json.loads(meta["rfkp_outputs"]) == list(P.RAW_OUTPUTS)
    assert json.loads(meta["rfkp_batch"]) == {"batch": None, "max_batch": 4}
    assert meta["rfkp_flavour"] == "portable"

    def no_export(*args: object, **kwargs: object) -> None:
        raise AssertionError("exported again")

    import rfkp.export

    monkeypatch.setattr(rfkp.export, "export_onnx", no_export)
    os.utime(graph, (1_000_000, 1_000_000))
    again, exported = prepare_raw_graph(prepared, max_batch=8, cache_dir=cache)  # a restart, other max batch
    assert again == graph and not exported
    assert graph.stat().st_mtime > 1_000_000  # marked used: pruning keeps it
    # a truncated cache file (a crash while writing) is exported again, not served
    graph.write_bytes(graph.read_bytes()[:1000])
    with pytest.raises(AssertionError, match="exported again"):
        prepare_raw_graph(prepared, max_batch=4, cache_dir=cache)
    assert not graph.exists()
    # other weights bytes (same config) or another resolution: another key
    other = tmp_path / "other.pth"
    RFDETRKeypoint.from_config(tiny_model.config, device="cpu", seed=4).save_checkpoint(other)
    with pytest.raises(AssertionError, match="exported again"):
        prepare_raw_graph(PreparedWeights(other, tiny_model.config, False), max_batch=4, cache_dir=cache)
    config_192 = type(tiny_model.config).from_dict({**tiny_model.config.to_dict(), "resolution": 192})
    with pytest.raises(AssertionError, match="exported again"):
        prepare_raw_graph(PreparedWeights(tiny_weights, config_192, False), max_batch=4, cache_dir=cache)
    # same weights, but rfkp's network/export code (or torch) changed: the cached graph is stale
    import rfkp.serving.deploy as deploy

    monkeypatch.setattr(deploy, "torch_version", lambda: "0.0.0-other")
    with pytest.raises(AssertionError, match="exported again"):
        prepare_raw_graph(prepared, max_batch=4, cache_dir=cache)


def test_graph_cache_keeps_the_graphs_used_most_recently(tmp_path: Path) -> None:
    now = 10_000_000.0
    key = "0123456789abcdef" * 2
    ages = {f"raw-{key[:-2]}{i:02d}-r64.onnx": i * 3600.0 for i in range(12)}  # ...00 used last
    ages[f"raw-{key}-r96.onnx"] = MAX_GRAPH_AGE_S + 1
    ages[f"raw-{key[:-2]}11-r64.12.partial.onnx"] = 2 * 3600.0  # a crashed export
    ages[f"raw-{key[:-2]}12-r64.13.partial.onnx"] = 60.0  # an export in progress
    ages[f".raw-{key[:-2]}13-r64.onnx.14.tmp"] = 2 * 3600.0  # a crashed export_onnx
    ages[f".raw-{key[:-2]}14-r64.onnx.15.tmp"] = 60.0  # in progress
    ages[f"raw-v1-{key}-r64.onnx"] = 60.0  # an earlier version's graph, never reused
    ages["notes.txt"] = ages["raw-model.onnx"] = 1e9  # not ours
    for name, age in ages.items():
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, (now - age, now - age))
    removed = prune_graph_cache(tmp_path, keep=8, now=now)
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == sorted([f"raw-{key[:-2]}{i:02d}-r64.onnx" for i in range(8)]
                          + [f"raw-{key[:-2]}12-r64.13.partial.onnx", f".raw-{key[:-2]}14-r64.onnx.15.tmp",
                             "notes.txt", "raw-model.onnx"])  # fmt: skip
    assert len(removed) == 8 and not set(p.name for p in removed) & set(kept)
    assert prune_graph_cache(tmp_path / "missing") == []


def test_run_dirs_of_live_or_foreign_servers_are_refused_and_ours_reused(tmp_path: Path) -> None:
    from rfkp.serving.deploy import RUN_STAMP, _claim_run_dir

    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        _claim_run_dir(tmp_path / "file")
    run = tmp_path / "run"
    (run / "model_repository" / "rfkp").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="already holds a rendered repository"):  # no stamp: not rendered by rfkp
        _claim_run_dir(run)
    (run / RUN_STAMP).write_text("4242")
    holder = subprocess.Popen(  # a live launch: it holds the stamp's lock
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1]); fcntl.flock(f, fcntl.LOCK_EX); "
         "print('locked', flush=True); time.sleep(60)", str(run / RUN_STAMP)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FileExistsError, match=r"still running \(pid 4242\)"):
            _claim_run_dir(run)
    finally:
        holder.kill()
        holder.wait()
    (run / RUN_STAMP).write_text("1")  # the pid of a live process, reused after a restart: the lock is gone
    _claim_run_dir(run)
    assert not (run / "model_repository").exists() and (run / RUN_STAMP).read_text() == str(os.getpid())
    (run / "model_repository" / "rfkp").mkdir(parents=True)
    _claim_run_dir(run)  # this process again (a restart in the same process): its own lock is handed over
    assert not (run / "model_repository").exists()


def test_taken_ports_are_refused_before_the_export(tiny_weights: Path, tmp_path: Path) -> None:
    import socket

    from rfkp.serving.launcher import ServerStartError

    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        with pytest.raises(ServerStartError, match=f"already in use on 127.0.0.1: HTTP {other.getsockname()[1]}"):
            launch(tiny_weights, run_dir=tmp_path / "run", cache_dir=tmp_path / "cache",
                   http_port=other.getsockname()[1])  # fmt: skip
    assert not (tmp_path / "cache").exists()


def test_a_used_run_dir_is_refused_before_anything_is_exported(tiny_weights: Path, tmp_path: Path) -> None:
    (tmp_path / "model_repository" / "rfkp").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="already holds a rendered repository"):
        launch(tiny_weights, run_dir=tmp_path, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


@pytest.fixture(scope="module")
def ort_server(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """A real server whose rfkp_model runs the tiny model's raw ONNX export on ONNX Runtime (1 thread)."""
    pytest.importorskip("tritonclient.grpc", reason="serving tests need the 'serving' extra (tritonclient[grpc])")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    cache = tmp_path_factory.mktemp("graphs")
    triton = launch_for_tests(tiny_weights, tmp_path_factory.mktemp("served-ort"), cache_dir=cache,
                              runtime="onnxruntime")  # fmt: skip
    try:
        yield triton
    finally:
        triton.stop()


def test_served_on_onnxruntime_matches_in_process_predict(
    ort_server: TritonServer, tiny_model: RFDETRKeypoint, tmp_path: Path
) -> None:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from rfkp.client import KeypointClient

    config = text_format.Parse(
        (ort_server.repository / P.NETWORK / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    params = {k: v.string_value for k, v in config.parameters.items()}
    graph = ort_server.repository / P.NETWORK / "1" / "model.onnx"
    assert params[P.PARAM_RUNTIME] == "onnxruntime" and params[P.PARAM_WEIGHTS] == str(graph) and graph.is_file()

    image = noise_image(203, 317, seed=5)  # odd sizes: resize and scaling back are exercised
    path = tmp_path / "frame.png"
    path.write_bytes(encode(image, "PNG"))
    payloads: list[object] = [path, image]
    coco = SHARED / "data" / "coco-sample" / "images" / "000000000785.jpg"
    if coco.is_file():
        payloads.append(coco)
    with KeypointClient(ort_server.grpc_url, timeout=60) as client:
        assert client.metadata.class_names == list(tiny_model.config.class_names)
        for payload in payloads:
            remote = client.predict(payload, threshold=0.0)
            local = tiny_model.predict(payload, threshold=0.0)
            assert_same(remote, local)  # <= 1e-3 px, scores within 1e-5
    assert ort_server.poll() is None
    assert os.stat(graph).st_nlink >= 2  # hard-linked from the cache, not exported into the run folder again
