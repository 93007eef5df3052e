"""Micro-benchmark of multi-scale deformable attention: reference vs Triton vs CUDA library.

For each shape, op variant (plain: given locations and weights; fused: references, raw offsets and logits),
dtype and backend it times the forward and the forward+backward, and prints the time, the speedup over the
reference and the achieved bandwidth against the bytes the op must move (`must_move_bytes`). Results go to
benchmarks/results/kernels_<gpu>.json, naming the GPU.

    python benchmarks/kernels.py                      # every shape, fp32 and fp16
    python benchmarks/kernels.py --shapes detection --dtypes fp32 --iters 50
    python benchmarks/kernels.py --device cpu --shapes tiny   # smoke run of the script: reference only
"""

from __future__ import annotations

import argparse
import platform
import sys
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from result_file import command_line, dumps_strict, result_path
from timing import median_ms

import rfkp.ops as ops
from rfkp.cli.arguments import non_negative_int, positive_int
from rfkp.ops import backend
from rfkp.ops.sample_inputs import msda_inputs

RESULTS = Path(__file__).resolve().parent / "results"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}


@dataclass(frozen=True)
class Shape:
    """One deformable-attention call: value (B, S, H, D), samples (B, Q, H, L, P)."""

    name: str
    batch: int
    queries: int
    heads: int
    channels: int
    levels: tuple[tuple[int, int], ...]
    points: int


SHAPES = {
    # This model at inference: detection cross-attention (100 queries, 16 heads x 16 dims, one 48x48 level,
    # 2 points) and keypoint cross-attention (100 x 17 keypoint queries into the second projector).
    "detection": Shape("detection", 1, 100, 16, 16, ((48, 48),), 2),
    "keypoint": Shape("keypoint", 1, 1700, 16, 16, ((48, 48),), 2),
    # Training: 13 query groups, batch 8.
    "train_detection": Shape("train_detection", 8, 1300, 16, 16, ((48, 48),), 2),
    "train_keypoint": Shape("train_keypoint", 8, 22100, 16, 16, ((48, 48),), 2),
    # Deformable-DETR decoder on an 800x1333 image: 300 queries, 8 heads x 32 dims, 4 levels, 4 points.
    "deformable_detr": Shape("deformable_detr", 2, 300, 8, 32, ((100, 167), (50, 84), (25, 42), (13, 21)), 4),
    "tiny": Shape("tiny", 1, 3, 2, 4, ((3, 4), (2, 2)), 2),
}


def must_move_bytes(shape: Shape, dtype: torch.dtype, fused: bool, backward: bool) -> int:
    """Bytes an ideal kernel reads and writes once.

    Value: every sample reads 4 corners x D channels, but never more than the whole value tensor, so
    min(B*S*H*D, B*Q*H*L*P*4*D) elements. Per sample: 2 location coordinates + 1 weight (plain) or 2 offsets +
    1 logit (fused, plus the references B*Q*R with R = 4 for boxes). Output B*Q*H*D. The backward reads value
    again (same count), grad_output, the per-sample inputs, and writes grad_value (the whole B*S*H*D tensor,
    it is zeroed and accumulated), the per-sample gradients (and the reference gradient, fused).
    """
    e = torch.empty((), dtype=dtype).element_size()
    B, Q, H, D, P = shape.batch, shape.queries, shape.heads, shape.channels, shape.points
    L = len(shape.levels)
    S = sum(h * w for h, w in shape.levels)
    samples = B * Q * H * L * P
    value = min(B * S * H * D, samples * 4 * D)
    per_sample = 3 * samples + (B * Q * 4 if fused else 0)
    out = B * Q * H * D
    levels = L * 2 * 8 + L * 8  # int64 shapes and start indices
    forward = (value + per_sample + out) * e + levels
    if not backward:
        return forward
    return forward + (value + out + per_sample + B * S * H * D + per_sample) * e + levels


def copy_bandwidth_gb_per_s(device: torch.device, nbytes: int = 1 << 30, iters: int = 20) -> float | None:
    """Device-to-device copy bandwidth, counting the bytes read and written (None off CUDA): the yardstick the
    kernels' achieved GB/s is compared with."""
    if device.type != "cuda":
        return None
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), device, iters, warmup=3)
    return 2 * nbytes / ms / 1e6


def _callables(shape: Shape, dtype: torch.dtype, device: torch.device, fused: bool, name: str):
    x = msda_inputs(shape.batch, shape.queries, shape.heads, shape.channels, list(shape.levels), shape.points,
                    dtype=dtype, device=device, reference_dim=4 if fused else None)
    names = (("value", "spatial_shapes", "level_start_index", "reference", "sampling_offsets", "attention_logits")
             if fused else ("value", "spatial_shapes", "level_start_index", "sampling_locations",
                            "attention_weights"))
    args = [x[n].requires_grad_(x[n].is_floating_point()) for n in names]
    if name == "reference":  # the plain PyTorch twin with ordinary autograd: the baseline
        op = ops.ms_deform_attn_fused_reference if fused else ops.ms_deform_attn_reference
    else:
        op = ops.multi_scale_deformable_attention_fused if fused else ops.multi_scale_deformable_attention
    grad = torch.randn(shape.batch, shape.queries, shape.heads * shape.channels, dtype=dtype, device=device)

    def forward() -> None:
        with torch.no_grad():
            op(*args)

    leaves = [a for a in args if a.requires_grad]

    def forward_backward() -> None:
        # gradients returned, not accumulated into .grad (an extra read and write of each the op need not do)
        torch.autograd.grad(op(*args), leaves, grad)

    return forward, forward_backward


def _available(device: torch.device) -> list[str]:
    if device.type != "cuda":
        return ["reference"]
    names = ["reference"]
    for name in ("triton", "cuda"):
        backend.set_ops_backend(name)
        try:
            backend.ops_backend(device)
            names.append(name)
        except RuntimeError as exc:
            print(f"skipping {name}: {exc}")
    backend.set_ops_backend(None)
    return names


def main(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or pass --device cpu for a smoke run")
    backends = _available(device)
    copy_gb_per_s = copy_bandwidth_gb_per_s(device)
    if copy_gb_per_s is not None:
        print(f"device-to-device copy: {copy_gb_per_s:.0f} GB/s (read + write)")
    rows = []
    print(f"{'shape':<16}{'op':<6}{'dtype':<6}{'backend':<10}{'mode':<9}{'ms':>10}{'speedup':>9}{'GB/s':>9}")
    for shape_name in args.shapes:
        shape = SHAPES[shape_name]
        for fused in (False, True):
            for dtype_name in args.dtypes:
                dtype = DTYPES[dtype_name]
                baseline: dict[str, float] = {}
                for name in backends:
                    backend.set_ops_backend(None if name == "reference" else name)
                    fwd, fwd_bwd = _callables(shape, dtype, device, fused, name)
                    for mode, fn in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
                        ms = median_ms(fn, device, args.iters, args.warmup)
                        baseline.setdefault(mode, ms)
                        nbytes = must_move_bytes(shape, dtype, fused, mode != "fwd")
                        row = dict(shape=shape_name, op="fused" if fused else "plain", dtype=dtype_name,
                                   backend=name, mode=mode, ms=ms, speedup=baseline[mode] / ms,
                                   gb_per_s=nbytes / ms / 1e6, must_move_bytes=nbytes,
                                   pct_of_copy=(100 * nbytes / ms / 1e6 / copy_gb_per_s) if copy_gb_per_s else None)
                        rows.append(row)
                        print(f"{shape_name:<16}{row['op']:<6}{dtype_name:<6}{name:<10}{mode:<9}{ms:>10.4f}"
                              f"{row['speedup']:>8.2f}x{row['gb_per_s']:>9.1f}")
    backend.set_ops_backend(None)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    result = {
        "device": gpu,
        "capability": list(torch.cuda.get_device_capability(device)) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": _triton_version(),
        "iters": args.iters,
        "copy_gb_per_s": copy_gb_per_s,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(["benchmarks/kernels.py", *args.argv]),
        "shapes": {n: asdict(SHAPES[n]) for n in args.shapes},
        "rows": rows,
    }
    out = Path(args.out) if args.out else RESULTS / f"kernels_{_slug(gpu)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(dumps_strict(result, indent=1) + "\n")
    print(f"wrote {out}")
    return result


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_") or "device"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES),
                        default=["detection", "keypoint", "train_detection", "train_keypoint", "deformable_detr"])
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["fp32", "fp16"])
    parser.add_argument("--iters", type=positive_int, default=100)
    parser.add_argument("--warmup", type=non_negative_int, default=10)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=result_path, default=None, help="result file (default benchmarks/results/kernels_<gpu>.json)")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


if __name__ == "__main__":
    main(parse_args())
