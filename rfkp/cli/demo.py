"""`rfkp demo`: start the embedded Triton server with the default model, send the bundled sample image over gRPC,
print and save the result (`--local` runs the model in-process instead)."""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from pathlib import Path

from rfkp.cli.arguments import non_empty_path, probability


def sample_image_path() -> Path:
    return Path(str(resources.files("rfkp") / "assets" / "sample_mouse.png"))


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="predict on the bundled sample image", description=__doc__)
    p.add_argument("--weights", type=non_empty_path, help="checkpoint (default: the project's default model)")
    p.add_argument("--out", default="rfkp_demo", help="output folder (default: rfkp_demo)")
    p.add_argument("--threshold", type=probability, default=0.3, help="minimum rescored score (default 0.3)")
    p.add_argument("--local", action="store_true", help="run in-process instead of through the server")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from rfkp.api import RFDETRKeypoint
    from rfkp.viz import draw_detections

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a folder")
    if args.weights:  # a missing or unreadable checkpoint stops here, before a server or a folder is made
        from rfkp.checkpoint import read_checkpoint

        read_checkpoint(args.weights)
    if not args.local:
        try:
            from rfkp.client import RemoteError
            from rfkp.serving.demo import serve_and_predict
            from rfkp.serving.embedded import TritonNotFoundError
            from rfkp.serving.launcher import ServerStartError

            dets = serve_and_predict(sample_image_path(), out, weights=args.weights, threshold=args.threshold)
        except (ServerStartError, TritonNotFoundError, RemoteError, ImportError) as exc:  # no traceback
            print(f"rfkp demo: error: the served demo failed: {exc}\n(rfkp demo --local runs the model "
                  "in-process, without a server)", file=sys.stderr)  # fmt: skip
            return 1
        except KeyboardInterrupt:  # the server is stopped by serve_and_predict's clean-up
            print("rfkp demo: interrupted", file=sys.stderr)
            return 130
        draw_detections(sample_image_path(), dets).save(out / "sample_keypoints.png")
        print(f"wrote {out}/sample_keypoints.png")
        return 0

    model = RFDETRKeypoint.from_checkpoint(args.weights) if args.weights else RFDETRKeypoint.default()
    if model.is_random_init:
        print(
            "NOTE: this install lacks the bundled mouse checkpoint; this is a RANDOM-INITIALISED model, "
            "detections are noise."
        )
    image = sample_image_path()
    dets = model.predict(image, threshold=args.threshold)
    out.mkdir(parents=True, exist_ok=True)
    draw_detections(image, dets).save(out / "sample_keypoints.png")
    (out / "detections.json").write_text(json.dumps(dets.to_dict(), indent=1, allow_nan=False))
    print(f"{len(dets)} detections on {image.name}; wrote {out}/sample_keypoints.png and detections.json (as the served demo)")
    return 0
