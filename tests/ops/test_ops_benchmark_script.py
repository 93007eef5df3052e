"""benchmarks/kernels.py runs end to end (CPU smoke run: reference only) and writes its result file."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "kernels.py"


def _load():
    sys.path.insert(0, str(SCRIPT.parent))  # the script imports its sibling result_file
    try:
        spec = importlib.util.spec_from_file_location("rfkp_kernel_benchmark", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return module


def test_smoke_run_writes_results(tmp_path):
    bench = _load()
    out = tmp_path / "kernels.json"
    bench.main(bench.parse_args(["--device", "cpu", "--shapes", "tiny", "--dtypes", "fp32", "--iters", "2",
                                 "--warmup", "1", "--out", str(out)]))
    result = json.loads(out.read_text())
    assert result["torch"] == torch.__version__ and result["device"]
    assert result["copy_gb_per_s"] is None and result["date"]
    assert result["command"].startswith("python benchmarks/kernels.py --device cpu --shapes tiny")
    assert result["command"].endswith("--out '<path>/kernels.json'")  # quoted for a shell; no machine folder
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


def test_end_to_end_benchmark_smoke_run(tmp_path):
    """benchmarks/end_to_end.py on CPU (eager only): forward rows per batch, a training step, a result file; its
    "eager" mode makes the public ops call the reference directly even for CUDA tensors."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        spec = importlib.util.spec_from_file_location("rfkp_end_to_end_benchmark", SCRIPT.parent / "end_to_end.py")
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
    finally:
        sys.path.remove(str(SCRIPT.parent))
    import rfkp.ops

    with bench.implementation("eager"):
        assert rfkp.ops.uses_reference_directly(torch.device("cuda"))
    assert not rfkp.ops.uses_reference_directly(torch.device("cuda"))
    out = tmp_path / "e2e.json"
    assert bench.main(["--device", "cpu", "--variant", "tiny", "--resolution", "128", "--batches", "1", "2",
                       "--train-batch", "2", "--iters", "1", "--train-iters", "1", "--warmup", "0",
                       "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["results"]["rows"]
    assert [(r["mode"], r["batch"], r["ops"]) for r in rows] == [
        ("forward_fp32", 1, "eager"), ("forward_fp32", 2, "eager"), ("train_step_fp32", 2, "eager")]
    assert all(r["ms"] > 0 and r["speedup_vs_eager"] == 1.0 for r in rows)
    assert result["device"] == "cpu" and result["command"].startswith("python benchmarks/end_to_end.py --device cpu")


def test_keypoint_stream_benchmark_smoke_run(tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        spec = importlib.util.spec_from_file_location("rfkp_keypoint_stream_benchmark",
                                                      SCRIPT.parent / "keypoint_stream.py")
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
    finally:
        sys.path.remove(str(SCRIPT.parent))
    out = tmp_path / "ks.json"
    assert bench.main(["--variant", "tiny", "--runs", "1", "--warmup", "1", "--threads", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]["rows"]
    assert [(r["keypoint_dim_downscale"], r["inter_instance_kp_attn"]) for r in rows] == bench.SETTINGS
    assert rows[0]["parameters"] > rows[1]["parameters"] > rows[2]["parameters"]  # narrower keypoint streams
    assert rows[3]["parameters"] > rows[0]["parameters"]  # plus the inter-instance attention
    assert all(r["forward_ms"] > r["decoder_ms"] > 0 for r in rows)


def test_predict_memory_benchmark_smoke_run(tmp_path):
    out = tmp_path / "mem.json"
    cmd = [sys.executable, str(SCRIPT.parent / "predict_memory.py"), "--height", "1200", "--width", "1600",
           "--batches", "4", "--out", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
    rows = json.loads(out.read_text())["results"]["rows"]
    assert [(r["way"], r["images"]) for r in rows] == [("predict", 4), ("all_at_once", 4)]
    one_at_a_time, all_at_once = (r["peak_growth_mb"] for r in rows)
    # what the benchmark is for: one image at a time holds at least one full float image less than four at once
    assert one_at_a_time < all_at_once - rows[0]["one_float_image_mb"]


def test_result_files_are_strict_json_with_portable_commands(tmp_path, monkeypatch):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import result_file
    finally:
        sys.path.remove(str(SCRIPT.parent))
    assert result_file.portable_argv(["--out=/x/y/z.json", "/a/b.pt", "rel/c.pt", "--n", "3"]) == [
        "--out=<path>/z.json", "<path>/b.pt", "rel/c.pt", "--n", "3"]
    assert result_file.command_line(["s.py", "--note", 'a "b" c']) == "python s.py --note 'a \"b\" c'"
    out = tmp_path / "r.json"
    result_file.write_result(out, "test", {"x": float("nan"), "y": [1.0, float("inf")]}, argv=["s.py"], device="GPU X")
    record = json.loads(out.read_text())  # strict JSON: NaN and inf are null
    assert record["results"] == {"x": None, "y": [1.0, None]} and record["device"] == "GPU X"
    assert "NaN" not in out.read_text()


def test_benchmark_arguments_are_checked_before_the_work(tmp_path):
    """Numbers and --out are refused while the command line is parsed (a folder as --out used to fail only
    after the benchmark had run; --batches 0 made predict_memory re-run itself)."""
    cases = [
        ("keypoint_stream.py", ["--out", str(tmp_path)], "is a folder; give a file name"),
        ("predict_memory.py", ["--batches", "0"], "expected comma-separated integers >= 1"),
        ("latency.py", ["--runs", "0"], "expected an integer >= 1"),
        ("end_to_end.py", ["--batches", "0"], "expected an integer >= 1"),
        ("server.py", ["--cameras", "0"], "expected an integer >= 1"),
        ("kernels.py", ["--iters", "0"], "expected an integer >= 1"),
        ("peer_options.py", ["--peer-python", str(tmp_path / "nope")], f"{tmp_path / 'nope'} not found"),
        ("client_reconnect.py", ["--outage", "0"], "expected a finite number > 0"),
        ("server.py", ["--url", "grpc://host:1"], "server url must be HOST:PORT"),
        ("predict_memory.py", ["--variant", "bogus"], "invalid choice: 'bogus'"),
    ]
    for script, args, message in cases:
        done = subprocess.run([sys.executable, str(SCRIPT.parent / script), *args], capture_output=True, text=True,
                              timeout=120)  # fmt: skip
        assert done.returncode in (1, 2), (script, done.stderr[-500:])
        assert message in done.stderr, (script, done.stderr[-500:])
    assert list(tmp_path.iterdir()) == []


def test_the_peer_python_may_be_a_command_on_path() -> None:
    from benchmarks.peer_env import peer_python_problem

    for python in (sys.executable, "python3"):  # a path, and a command found on PATH (it was refused)
        problem = peer_python_problem(python)
        assert problem is None or problem.startswith(f"{python} cannot import rfdetr"), problem
    assert peer_python_problem("no-such-python-here") == (
        "no-such-python-here not found (neither a file nor a command on PATH)"
    )


def test_gpu_suite_exit_status_reports_failed_steps(tmp_path):
    """gpu_suite.sh records each step and exits 1 when any failed, was killed by its time limit, or is unknown
    (PYTHON stands in for the interpreter: `true` passes every step, `false` fails it)."""
    suite = SCRIPT.parent / "gpu_suite.sh"
    repo = SCRIPT.parents[1]

    def run(python: str, *steps: str, timeout: str = "540") -> tuple[int, str]:
        out = tmp_path / f"{python}-{'-'.join(steps)}"
        env = {**os.environ, "PYTHON": python, "STEP_TIMEOUT": timeout}
        done = subprocess.run(["bash", str(suite), str(out), *steps], cwd=repo, env=env, capture_output=True,
                              text=True, timeout=120)  # fmt: skip
        return done.returncode, (out / "summary.txt").read_text()

    code, summary = run("true", "kernels", "end_to_end")
    assert code == 0 and "kernels rc=0" in summary and "end_to_end rc=0" in summary
    code, summary = run("false", "kernels")
    assert code == 1 and "kernels rc=1" in summary
    code, summary = run("true", "bogus")
    assert code == 1 and "unknown step bogus" in summary
    hang = tmp_path / "hang"
    hang.write_text("#!/bin/sh\nsleep 60\n")
    hang.chmod(0o755)
    code, summary = run(str(hang), "kernels", "end_to_end", timeout="1")
    assert code == 1 and "kernels rc=124" in summary and "end_to_end rc=124" in summary  # killed, and went on
