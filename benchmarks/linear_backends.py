"""CPU linear layers: PyTorch's ``F.linear`` (the BLAS of the build) vs oneDNN's ``_linear_pointwise``.

Times, side by side in one process, the products of the released preview model at 576 px (ViT: 2308 tokens of
width 384 in 4 windows; decoder keypoint stream: 1700 tokens of width 256) on fp32 CPU tensors, with and without
the fused activation, and writes GFLOP/s and the speed-up. This is the measurement behind ``rfkp.nn.linear``.

Usage:
    python benchmarks/linear_backends.py [--threads 2] [--runs 20] [--out benchmarks/results/linear_backends_cpu.json]
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from result_file import result_path, write_result
from timing import median_ms

from rfkp.cli.arguments import positive_int
from rfkp.nn.linear import onednn_linear_available

CPU = torch.device("cpu")

# (name, tokens, in, out, activation)
SHAPES = [
    ("vit qkv", 2308, 384, 1152, None),
    ("vit proj", 2308, 384, 384, None),
    ("vit fc1 + gelu", 2308, 384, 1536, "gelu"),
    ("vit fc2", 2308, 1536, 384, None),
    ("decoder kp ffn1 + relu", 1700, 256, 1024, "relu"),
    ("decoder kp ffn2", 1700, 1024, 256, None),
]


def _blas() -> str:
    config = torch.__config__.show()
    match = re.search(r"BLAS_INFO=(\w+)", config)
    libraries = [line.strip(" -") for line in config.splitlines() if "Math Kernel Library" in line]
    return ", ".join([f"BLAS_INFO={match.group(1) if match else 'unknown'}", *libraries])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=positive_int, default=2)
    ap.add_argument("--runs", type=positive_int, default=20)
    ap.add_argument("--out", type=result_path, default=Path(__file__).parent / "results" / "linear_backends_cpu.json")
    args = ap.parse_args()
    if not onednn_linear_available():
        raise SystemExit("this PyTorch build has no oneDNN linear (torch.ops.mkldnn._linear_pointwise)")
    torch.set_num_threads(args.threads)
    acts = {None: lambda t: t, "relu": F.relu, "gelu": F.gelu}
    rows = []
    print(f"{'product':24s} {'M x K x N':>18s} {'F.linear ms':>12s} {'oneDNN ms':>10s} {'GFLOP/s':>15s} {'speed-up':>9s}")
    with torch.inference_mode():
        for name, m, k, n, act in SHAPES:
            g = torch.Generator().manual_seed(0)
            x, w, b = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g) / k**0.5, torch.randn(n, generator=g)
            ref = acts[act](F.linear(x, w, b))
            fused = torch.ops.mkldnn._linear_pointwise(x, w, b, act or "none", [], "none")
            max_diff = (fused - ref).abs().max().item()
            aten_ms = median_ms(lambda x=x, w=w, b=b, act=act: acts[act](F.linear(x, w, b)), CPU, args.runs, 3)
            onednn_ms = median_ms(
                lambda x=x, w=w, b=b, act=act: torch.ops.mkldnn._linear_pointwise(x, w, b, act or "none", [], "none"),
                CPU, args.runs, 3,
            )
            gflop = 2 * m * k * n / 1e9
            rows.append({"product": name, "m": m, "k": k, "n": n, "activation": act, "f_linear_ms": aten_ms,
                         "onednn_ms": onednn_ms, "f_linear_gflops": gflop / aten_ms * 1e3,
                         "onednn_gflops": gflop / onednn_ms * 1e3, "speedup": aten_ms / onednn_ms,
                         "max_abs_diff": max_diff})
            print(f"{name:24s} {f'{m}x{k}x{n}':>18s} {aten_ms:12.2f} {onednn_ms:10.2f} "
                  f"{rows[-1]['f_linear_gflops']:6.0f} -> {rows[-1]['onednn_gflops']:5.0f} {rows[-1]['speedup']:8.2f}x")
    total = sum(r["f_linear_ms"] for r in rows) / sum(r["onednn_ms"] for r in rows)
    print(f"all products: {total:.2f}x")
    write_result(args.out, "CPU linear layers: F.linear vs oneDNN _linear_pointwise, fp32, inference",
                 {"products": rows, "speedup_all": total}, threads=args.threads,
                 blas=_blas())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
