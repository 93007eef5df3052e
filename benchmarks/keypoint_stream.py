"""Cost of the keypoint stream's options: `keypoint_dim_downscale` (narrower stream) and `inter_instance_kp_attn`.

Random-weight models of one variant that differ only in these options, timed side by side in one run: the
whole `forward_raw` and the decoder alone (a forward hook), median of `--runs` after `--warmup`, batch 1, fp32.
Usage:
    python benchmarks/keypoint_stream.py [--variant preview] [--threads 2] [--runs 10] [--device cpu]
        [--out benchmarks/results/keypoint_stream_cpu.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from result_file import result_path, write_result
from timing import median_ms

from rfkp import RFDETRKeypoint
from rfkp.cli.arguments import non_negative_int, positive_int
from rfkp.variants import VARIANTS

SETTINGS = [(1, False), (2, False), (4, False), (1, True), (2, True)]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="preview", choices=sorted(VARIANTS))
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--runs", type=positive_int, default=10)
    p.add_argument("--warmup", type=non_negative_int, default=2)
    p.add_argument("--device", default="cpu", choices=["cpu"],
                   help="cpu only: the decoder is timed by wall clock between hooks, with no GPU synchronisation")
    p.add_argument("--out", type=result_path)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    models = {
        (ds, inter): RFDETRKeypoint.from_config(
            VARIANTS[args.variant](keypoint_dim_downscale=ds, inter_instance_kp_attn=inter), device=device)
        for ds, inter in SETTINGS
    }  # fmt: skip
    res = next(iter(models.values())).config.resolution
    x = torch.randn(1, 3, res, res, device=device)
    decoder_ms: dict[tuple[int, bool], list[float]] = {key: [] for key in models}
    rows = []
    print(f"{'downscale':>9} {'inter':>6} {'params':>11} {'forward ms':>11} {'decoder ms':>11}")
    for key, model in models.items():
        started: list[float] = []
        net = model.network
        pre = net.decoder.register_forward_pre_hook(lambda *_: started.append(time.perf_counter()))  # noqa: B023
        post = net.decoder.register_forward_hook(
            lambda *_: decoder_ms[key].append((time.perf_counter() - started[-1]) * 1e3))  # noqa: B023
        forward = median_ms(lambda: model.forward_raw(x), device, args.runs, args.warmup)  # noqa: B023
        pre.remove()
        post.remove()
        decoder = statistics.median(decoder_ms[key][args.warmup:])  # the same estimator as forward_ms
        params = sum(t.numel() for t in net.parameters())
        rows.append({"keypoint_dim_downscale": key[0], "inter_instance_kp_attn": key[1], "parameters": params,
                     "forward_ms": forward, "decoder_ms": decoder})  # fmt: skip
        print(f"{key[0]:>9} {key[1]!s:>6} {params:>11,} {forward:>11.1f} {decoder:>11.1f}")
    base = rows[0]
    for row in rows:
        row["decoder_speedup_vs_full_width"] = base["decoder_ms"] / row["decoder_ms"]
    if args.out:
        write_result(args.out, f"keypoint stream options, {args.variant} at {res} px, batch 1, fp32, random weights",
                     {"rows": rows}, argv=["benchmarks/keypoint_stream.py", *argv], threads=args.threads)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
