"""`rfkp demo`: run the default model on the bundled sample image and save the picture and the JSON."""

from __future__ import annotations

import argparse
import json
from importlib import resources
from pathlib import Path


def sample_image_path() -> Path:
    return Path(str(resources.files("rfkp") / "assets" / "sample_mouse.png"))


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="predict on the bundled sample image", description=__doc__)
    p.add_argument("--weights", help="checkpoint (default: the project's default model)")
    p.add_argument("--out", default="rfkp_demo", help="output folder (default: rfkp_demo)")
    p.add_argument("--threshold", type=float, default=0.3)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from rfkp.api import RFDETRKeypoint
    from rfkp.viz import draw_detections

    model = RFDETRKeypoint.from_checkpoint(args.weights) if args.weights else RFDETRKeypoint.default()
    if model.is_random_init:
        print("NOTE: no trained checkpoint ships yet; this is a RANDOM-INITIALISED model, detections are noise.")
    image = sample_image_path()
    dets = model.predict(image, threshold=args.threshold)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    draw_detections(image, dets).save(out / "sample_keypoints.png")
    (out / "sample_detections.json").write_text(json.dumps(dets.to_dict(), indent=1))
    print(f"{len(dets)} detections on {image.name}; wrote {out}/sample_keypoints.png and sample_detections.json")
    return 0
