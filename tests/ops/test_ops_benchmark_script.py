"""benchmarks/kernels.py runs end to end (CPU smoke run: reference only) and writes its result file."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "kernels.py"


def _load():
    spec = importlib.util.spec_from_file_location("rfkp_kernel_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_smoke_run_writes_results(tmp_path):
    bench = _load()
    out = tmp_path / "kernels.json"
    bench.main(bench.parse_args(["--device", "cpu", "--shapes", "tiny", "--dtypes", "fp32", "--iters", "2",
                                 "--warmup", "1", "--out", str(out)]))
    result = json.loads(out.read_text())
    assert result["torch"] == torch.__version__ and result["device"]
    rows = result["rows"]
    assert {(r["op"], r["mode"]) for r in rows} == {("plain", "fwd"), ("plain", "fwd+bwd"), ("fused", "fwd"),
                                                    ("fused", "fwd+bwd")}
    assert all(r["backend"] == "reference" and r["ms"] > 0 and r["speedup"] == 1.0 for r in rows)


def test_byte_count_of_the_detection_shape():
    bench = _load()
    shape = bench.SHAPES["detection"]
    # value: min(48*48*16*16, 100*16*2*4*16) = 204800 elements; per sample 3 * 3200; output 25600; levels 24 B.
    assert bench.must_move_bytes(shape, torch.float32, fused=False, backward=False) == \
        (204800 + 9600 + 25600) * 4 + 24
    assert bench.must_move_bytes(shape, torch.float16, fused=True, backward=False) == \
        (204800 + 9600 + 400 + 25600) * 2 + 24
