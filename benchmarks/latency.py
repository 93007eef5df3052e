"""End-to-end predict() latency: rfkp vs the public peer on the same weights, side by side.

Times `predict(image)` (decode excluded: the image is loaded once) at the model resolution, batch 1, fp32, on
CPU with a fixed number of threads, and splits rfkp's time into preprocess, backbone (ViT + projectors),
decoder + heads, and post-processing. The peer runs in its own virtualenv in a child process (never imported
here). ONNX Runtime (CPU, same thread count) runs the portable export of the same weights (`rfkp.export`,
post-processing inside the graph), timed as preprocess + session.run; the export itself is not timed.
Usage:
    python benchmarks/latency.py [--weights CKPT] [--image IMG] [--threads 2] [--runs 20]
        [--peer-python PATH] [--no-onnxruntime] [--out benchmarks/results/latency_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from peer_env import peer_python_problem
from result_file import result_path, write_result

from rfkp.cli.arguments import non_negative_int, positive_int

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO.parent / "shared" / "fixtures" / "rfdetr-keypoint-preview-random"

PEER_SNIPPET = r"""
import json, os, sys, time, statistics, warnings
os.environ["HF_HUB_OFFLINE"] = "1"; warnings.filterwarnings("ignore")
import logging; logging.disable(logging.WARNING)
import torch
from PIL import Image
from rfdetr import RFDETRKeypointPreview
weights, image, threads, runs, warmup = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
ck = torch.load(weights, map_location="cpu", weights_only=True)
kw = {"num_keypoints_per_class": list(ck["args"]["num_keypoints_per_class"])}
model = RFDETRKeypointPreview(pretrain_weights=None, device="cpu", **kw)
model.model.model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ck["model"].items()})
model.model.model.eval()
img = Image.open(image).convert("RGB")
for _ in range(warmup):
    model.predict(img, threshold=0.5)
times = []
for _ in range(runs):
    t = time.perf_counter(); model.predict(img, threshold=0.5); times.append(time.perf_counter() - t)
print(json.dumps({"median_ms": 1000 * statistics.median(times), "times_ms": [1000 * t for t in times]}))
"""


def time_rfkp(weights: Path, image: Path, runs: int, warmup: int) -> dict:
    from rfkp import RFDETRKeypoint
    from rfkp.io import load_image

    model = RFDETRKeypoint.from_checkpoint(weights, device="cpu")
    rgb = load_image(image)
    net = model.network
    stages: dict[str, list[float]] = {"preprocess": [], "backbone": [], "decoder_heads": [], "postprocess": []}
    totals = []
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        x, sizes = model.preprocess([rgb])
        t1 = time.perf_counter()
        with torch.inference_mode():
            net.backbone(x, net.cfg.patch_size, net.cfg.num_windows)
        t2 = time.perf_counter()
        raw = model.forward_raw(x)
        t3 = time.perf_counter()
        model.postprocess(raw, sizes, threshold=0.5)
        t4 = time.perf_counter()
        # the whole public call, timed on its own
        s = time.perf_counter()
        model.predict(rgb, threshold=0.5)
        total = time.perf_counter() - s
        if i >= warmup:
            stages["preprocess"].append(t1 - t0)
            stages["backbone"].append(t2 - t1)
            stages["decoder_heads"].append((t3 - t2) - (t2 - t1))
            stages["postprocess"].append(t4 - t3)
            totals.append(total)
    return {
        "resolution": model.config.resolution,
        "median_ms": 1000 * statistics.median(totals),
        "times_ms": [1000 * t for t in totals],
        "breakdown_median_ms": {k: 1000 * statistics.median(v) for k, v in stages.items()},
    }


def time_onnxruntime(weights: Path, image: Path, threads: int, runs: int, warmup: int) -> dict:
    """The portable ONNX export (fixed batch 1, model resolution) on ONNX Runtime's CPU provider."""
    import onnxruntime as ort

    from rfkp import RFDETRKeypoint
    from rfkp.export import INPUT_NAME, export_onnx
    from rfkp.io import load_image

    model = RFDETRKeypoint.from_checkpoint(weights, device="cpu")
    rgb = load_image(image)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / "model.onnx", batch=1)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    totals, graph = [], []
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        x, _ = model.preprocess([rgb])
        t1 = time.perf_counter()
        session.run(None, {INPUT_NAME: x.numpy()})
        t2 = time.perf_counter()
        if i >= warmup:
            totals.append(t2 - t0)
            graph.append(t2 - t1)
    return {
        "resolution": model.config.resolution,
        "median_ms": 1000 * statistics.median(totals),
        "times_ms": [1000 * t for t in totals],
        "graph_median_ms": 1000 * statistics.median(graph),
        "onnxruntime": ort.__version__,
    }


def time_peer(peer_python: str, weights: Path, image: Path, threads: int, runs: int, warmup: int) -> dict:
    cmd = [peer_python, "-c", PEER_SNIPPET, str(weights), str(image), str(threads), str(runs), str(warmup)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=1800)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, default=FIXTURE / "checkpoint.pth")
    ap.add_argument("--image", type=Path, default=FIXTURE / "image.jpg")
    ap.add_argument("--threads", type=positive_int, default=2)
    ap.add_argument("--runs", type=positive_int, default=20)
    ap.add_argument("--warmup", type=non_negative_int, default=3)
    ap.add_argument("--peer-python", help="python of a venv with rfdetr (see ../shared/tools/peer_env.sh)")
    ap.add_argument("--no-onnxruntime", action="store_true", help="skip the ONNX Runtime column")
    ap.add_argument("--out", type=result_path)
    args = ap.parse_args()
    problem = peer_python_problem(args.peer_python) if args.peer_python else None
    if problem:  # before any timing: a missing peer would otherwise fail only at the end
        print(f"latency.py: --peer-python: {problem}", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    results: dict = {"rfkp": time_rfkp(args.weights, args.image, args.runs, args.warmup)}
    if not args.no_onnxruntime:
        ort_result = time_onnxruntime(args.weights, args.image, args.threads, args.runs, args.warmup)
        results["onnxruntime"] = ort_result
        results["ratio_rfkp_over_onnxruntime"] = results["rfkp"]["median_ms"] / ort_result["median_ms"]
    if args.peer_python:
        results["peer"] = time_peer(args.peer_python, args.weights, args.image, args.threads, args.runs, args.warmup)
        # rfkp again after the peer, so drift of the machine shows up in the record
        results["rfkp_after_peer"] = time_rfkp(args.weights, args.image, args.runs, args.warmup)
        rfkp_ms = statistics.median([results["rfkp"]["median_ms"], results["rfkp_after_peer"]["median_ms"]])
        results["speedup_peer_over_rfkp"] = results["peer"]["median_ms"] / rfkp_ms
    print(f"{'implementation':18s} {'median ms':>10s}")
    for name in ("rfkp", "onnxruntime", "peer", "rfkp_after_peer"):
        if name in results:
            print(f"{name:18s} {results[name]['median_ms']:10.1f}")
    for stage, ms in results["rfkp"]["breakdown_median_ms"].items():
        print(f"  rfkp {stage:13s} {ms:10.1f}")
    if "onnxruntime" in results:
        print(f"  onnxruntime session.run {results['onnxruntime']['graph_median_ms']:10.1f}")
        ratio = results["ratio_rfkp_over_onnxruntime"]
        print(f"ratio rfkp eager/onnxruntime = {ratio:.3f} (>1: ONNX Runtime faster)")
    if "speedup_peer_over_rfkp" in results:
        print(f"ratio peer/rfkp = {results['speedup_peer_over_rfkp']:.3f} (>1: rfkp faster)")
    if args.out:
        side = results["rfkp"]["resolution"]
        write_result(args.out, f"predict() latency, {side}x{side}, batch 1, fp32, CPU", results, threads=args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
