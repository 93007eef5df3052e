"""The network end to end with each implementation of the ops: forward at batch 1 and 8, and a training step.

"eager" is the PyTorch reference called directly with ordinary autograd (what a plain PyTorch port does);
"reference", "triton" and "cuda" go through the registered ops with that backend (`rfkp.ops.set_ops_backend`).
Each backend's forward outputs are compared with eager's (max abs difference of the three raw tensors), so a
speed-up never hides a wrong result. The training step is forward + `SetCriterion` (Hungarian matching, all
query groups, every decoder layer and the two-stage proposals) + backward + AdamW on synthetic targets.
On CPU only "eager" runs (a smoke run). Usage:
    python benchmarks/end_to_end.py [--variant preview] [--resolution 576] [--batches 1 8] [--train-batch 8]
        [--iters 20] [--warmup 5] [--device cuda] [--out benchmarks/results/end_to_end_<gpu>.json]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import torch
from result_file import result_path, write_result
from timing import median_ms

import rfkp.ops
from rfkp.cli.arguments import non_negative_int, positive_int
from rfkp.nn.detector import KeypointDETR
from rfkp.nn.init import init_weights
from rfkp.ops import backend
from rfkp.variants import VARIANTS
from trainer.losses import SetCriterion

RESULTS = Path(__file__).resolve().parent / "results"
RAW = ("pred_logits", "pred_boxes", "pred_keypoints")


@contextlib.contextmanager
def implementation(name: str) -> Iterator[None]:
    """Run the network's ops with ``name``: "eager" (the reference called directly, plain autograd) or a
    backend of the registered ops."""
    if name == "eager":
        with mock.patch.object(rfkp.ops, "uses_reference_directly", lambda device: True):
            yield
        return
    with backend.forced_ops_backend(name):
        yield


def available(device: torch.device) -> list[str]:
    if device.type != "cuda":
        return ["eager"]
    names = ["eager", "reference"]
    for name in ("triton", "cuda"):
        try:
            with backend.forced_ops_backend(name):
                backend.ops_backend(device)
            names.append(name)
        except Exception as exc:  # noqa: BLE001 - report and skip an unusable backend
            print(f"skipping {name}: {exc}")
    return names


def synthetic_targets(batch: int, num_keypoints: list[int], device: torch.device, seed: int = 0) -> list[dict]:
    """Three objects per image, keypoints inside their boxes, all visible; the layout of ``trainer.data.collate``."""
    g = torch.Generator().manual_seed(seed)
    kmax = max(num_keypoints)
    targets = []
    for i in range(batch):
        n = 3
        labels = torch.randint(0, len(num_keypoints), (n,), generator=g)
        centre = 0.25 + 0.5 * torch.rand(n, 2, generator=g)
        size = 0.1 + 0.3 * torch.rand(n, 2, generator=g)
        kps = torch.zeros(n, kmax, 3)
        kps[..., :2] = centre[:, None] + (torch.rand(n, kmax, 2, generator=g) - 0.5) * size[:, None]
        for j, label in enumerate(labels.tolist()):
            kps[j, : num_keypoints[label], 2] = 2.0
        targets.append({"labels": labels.to(device), "boxes": torch.cat([centre, size], 1).to(device),
                        "keypoints": kps.to(device), "image_id": i,
                        "orig_size": torch.tensor([480, 640], device=device)})  # fmt: skip
    return targets


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or pass --device cpu for a smoke run")
    torch.manual_seed(0)
    cfg = VARIANTS[args.variant](resolution=args.resolution)
    network = KeypointDETR(cfg)
    init_weights(network)
    network.to(device)
    names = available(device)
    rows: list[dict] = []
    parity: dict[str, dict[str, float]] = {}
    g = torch.Generator().manual_seed(1)
    print(f"{'mode':<16}{'batch':>6}  {'ops':<10}{'ms':>10}{'vs eager':>10}")
    # --amp applies to the forward passes too (their parity is then measured in bf16)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.amp == "bf16"
                else contextlib.nullcontext())  # fmt: skip
    forward_mode = f"forward_{args.amp}"

    network.eval()
    for batch in args.batches:
        x = torch.randn(batch, 3, args.resolution, args.resolution, generator=g).to(device)
        want = None
        base = None
        for name in names:
            with implementation(name), torch.inference_mode(), autocast:
                out = network(x)
                got = {k: out[k].float() for k in RAW}
                ms = median_ms(lambda: network(x), device, args.iters, args.warmup)  # noqa: B023
            if want is None:
                want, base = got, ms
            else:
                parity.setdefault(name, {})[f"batch_{batch}"] = max(
                    float((got[k] - want[k]).abs().max()) for k in RAW
                )
            rows.append({"mode": forward_mode, "batch": batch, "ops": name, "ms": ms, "speedup_vs_eager": base / ms})
            print(f"{forward_mode:<16}{batch:>6}  {name:<10}{ms:>10.2f}{base / ms:>9.2f}x")

    network.train()
    criterion = SetCriterion(cfg.num_keypoints_per_class)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-5)
    x = torch.randn(args.train_batch, 3, args.resolution, args.resolution, generator=g).to(device)
    targets = synthetic_targets(args.train_batch, cfg.num_keypoints_per_class, device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            out = network(x)
            losses = criterion(out, targets, num_groups=cfg.group_detr)
        losses["loss"].backward()
        optimizer.step()

    base = None
    for name in names:
        with implementation(name):
            ms = median_ms(step, device, args.train_iters, args.warmup)
        base = base or ms
        rows.append({"mode": f"train_step_{args.amp}", "batch": args.train_batch, "ops": name, "ms": ms,
                     "speedup_vs_eager": base / ms})  # fmt: skip
        print(f"{'train step':<16}{args.train_batch:>6}  {name:<10}{ms:>10.2f}{base / ms:>9.2f}x")

    return {"rows": rows, "forward_max_abs_diff_vs_eager": parity,
            "settings": {"variant": args.variant, "resolution": args.resolution, "batches": args.batches,
                         "train_batch": args.train_batch, "amp": args.amp, "iters": args.iters,
                         "train_iters": args.train_iters, "warmup": args.warmup, "group_detr": cfg.group_detr}}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="preview", choices=sorted(VARIANTS))
    p.add_argument("--resolution", type=positive_int, default=576)
    p.add_argument("--batches", type=positive_int, nargs="+", default=[1, 8])
    p.add_argument("--train-batch", type=positive_int, default=8)
    p.add_argument("--amp", choices=("fp32", "bf16"), default="fp32", help="precision of the forward passes and the training step")
    p.add_argument("--iters", type=positive_int, default=20)
    p.add_argument("--train-iters", type=positive_int, default=10)
    p.add_argument("--warmup", type=non_negative_int, default=3)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", type=result_path, help="result file (default benchmarks/results/end_to_end_<gpu>.json)")
    return p.parse_args(argv)


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    results = run(args)
    device = torch.device(args.device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    slug = "".join(c if c.isalnum() else "_" for c in gpu.lower()).strip("_")
    out = args.out or RESULTS / f"end_to_end_{slug}.json"
    write_result(out, "network forward and training step: eager PyTorch reference vs the registered ops' backends",
                 results, argv=["benchmarks/end_to_end.py", *argv], device=gpu, cuda=torch.version.cuda,
                 triton=_triton_version())  # fmt: skip
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
