"""Peak memory of `predict()` on a list of large images: does it grow with the number of images?

`predict()` loads and resizes one image at a time, so only one full-size float image is alive at once. The
same run measures the way it worked before, for comparison: every image converted to a full-size float
tensor first, then resized and stacked (`normalize_batch`). Each case runs in a fresh process (the peak resident set size is per process); the figure is the growth of
that peak during the call, over the process's peak before it (model and input arrays already in memory).
Usage:
    python benchmarks/predict_memory.py [--variant tiny] [--height 3000 --width 4000] [--batches 1,4,8]
        [--out benchmarks/results/predict_memory_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

from result_file import result_path, write_result

from rfkp.cli.arguments import positive_int, positive_int_list
from rfkp.variants import VARIANTS


def child(variant: str, n: int, height: int, width: int, way: str) -> dict[str, float]:
    import numpy as np
    import torch

    from rfkp import RFDETRKeypoint
    from rfkp.io import to_tensor
    from rfkp.preprocess import normalize_batch
    from rfkp.variants import VARIANTS

    model = RFDETRKeypoint.from_config(VARIANTS[variant](), device="cpu")
    images = [np.random.default_rng(i).integers(0, 255, (height, width, 3), dtype=np.uint8) for i in range(n)]
    cfg = model.config

    def run(batch: list) -> None:
        if way == "predict":
            model.predict(batch, threshold=0.0)
        else:  # all at full size first, as before
            tensors = [to_tensor(image) for image in batch]
            sizes = torch.tensor([t.shape[1:] for t in tensors])
            x = normalize_batch(tensors, cfg.resolution, cfg.image_mean, cfg.image_std)
            model.postprocess(model.forward_raw(x), sizes, threshold=0.0)

    run(images[:1])  # first-call allocations are not the batch's
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run(images)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"way": way, "images": n, "peak_growth_mb": (after - before) / 1024,
            "one_float_image_mb": height * width * 3 * 4 / 2**20}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="tiny", choices=sorted(VARIANTS))
    p.add_argument("--height", type=positive_int, default=3000)
    p.add_argument("--width", type=positive_int, default=4000)
    p.add_argument("--batches", type=positive_int_list, default=(1, 4, 8), help="comma-separated image counts (default 1,4,8)")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--way", default="predict", help=argparse.SUPPRESS)
    p.add_argument("--out", type=result_path)
    args = p.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args.variant, args.child, args.height, args.width, args.way)))
        return 0
    rows = []
    for n in args.batches:
        for way in ("predict", "all_at_once"):
            cmd = [sys.executable, __file__, "--child", str(n), "--way", way, "--variant", args.variant,
                   "--height", str(args.height), "--width", str(args.width)]  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:  # the child's own error, not a bare CalledProcessError
                print(f"predict_memory: the {way} run of {n} images failed:\n{done.stderr[-2000:]}", file=sys.stderr)
                return 1
            rows.append(json.loads(done.stdout.splitlines()[-1]))
    print(f"{'images':>6} {'predict() MB':>13} {'all at once MB':>15}   (peak growth; one {args.height}x{args.width} "
          f"float image: {rows[0]['one_float_image_mb']:.0f} MB)")
    for one, old in zip(rows[::2], rows[1::2]):
        print(f"{one['images']:>6} {one['peak_growth_mb']:>13.0f} {old['peak_growth_mb']:>15.0f}")
    if args.out:
        write_result(args.out, "peak memory growth of predict() over a list of large uint8 images",
                     {"variant": args.variant, "image_hw": [args.height, args.width], "rows": rows},
                     argv=[__file__, *argv])
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
