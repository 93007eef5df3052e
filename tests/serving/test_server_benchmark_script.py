"""benchmarks/server.py end to end on a tiny model: a real embedded server, real gRPC cameras, and a result file
with the server's overhead against the same pipeline run in-process."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from serving_helpers import require_triton

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load():
    sys.path.insert(0, str(BENCHMARKS))  # the script imports its sibling result_file
    try:
        spec = importlib.util.spec_from_file_location("rfkp_server_benchmark", BENCHMARKS / "server.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def test_smoke_run_writes_a_result_with_the_server_overhead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_triton()
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("RFKP_CACHE_DIR", str(tmp_path / "cache"))
    bench = _load()
    out = tmp_path / "server.json"
    argv = ["--variant", "tiny", "--cameras", "2", "--requests", "3", "--single-requests", "3", "--batching", "on",
            "--runtime", "onnxruntime", "--out", str(out)]  # fmt: skip
    assert bench.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["model"].startswith("tiny (random-initialised")
    assert result["versions"]["torch"]
    assert result["command"] == "python benchmarks/server.py " + " ".join(argv[:-1]) + " '<path>/server.json'"
    (run,) = result["runs"]
    assert run["network_runtime"] == "onnxruntime" and run["server_alive_after"]
    assert run["cameras"]["requests_ok"] == 6 and run["cameras"]["errors"] == 0
    assert run["in_process_pipeline"]["runs"] == 3 and run["in_process_pipeline"]["p50_ms"] > 0
    summary = result["summary"]
    served = run["single_camera_sequential"]["latency"]["p50_ms"]
    assert summary["batching_on_server_overhead_p50_ms"] == pytest.approx(served - run["in_process_pipeline"]["p50_ms"])
