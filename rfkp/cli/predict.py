"""`rfkp predict IMAGE... --weights PATH`: annotated images and a JSON of the detections."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="detect keypoints in images", description=__doc__)
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--weights", help="rfkp or rfdetr keypoint checkpoint (default: the project's default model)")
    p.add_argument("--url", help="HOST:PORT of a running rfkp server (gRPC) instead of local weights")
    p.add_argument("--threshold", type=float, default=0.5, help="minimum rescored score (default 0.5)")
    p.add_argument("--resolution", type=int, help="input resolution (multiple of patch size x windows)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--out", default="rfkp_predictions", help="output folder (default: rfkp_predictions)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from rfkp.viz import draw_detections

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.url:
        from rfkp.client import KeypointClient

        client = KeypointClient(args.url)
        detections = [client.predict(Path(p), threshold=args.threshold) for p in args.images]
    else:
        from rfkp.api import RFDETRKeypoint

        model = (
            RFDETRKeypoint.from_checkpoint(args.weights, args.device)
            if args.weights
            else RFDETRKeypoint.default(args.device)
        )
        if model.is_random_init:
            print("warning: no --weights given and no trained default ships: using a RANDOM-INITIALISED model")
        detections = [model.predict(p, threshold=args.threshold, resolution=args.resolution) for p in args.images]
    results = {}
    for path, dets in zip(args.images, detections):
        stem = Path(path).stem
        draw_detections(path, dets).save(out / f"{stem}_keypoints.png")
        results[str(path)] = dets.to_dict()
        print(f"{path}: {len(dets)} detections")
    (out / "detections.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {out / 'detections.json'} and annotated images to {out}/")
    return 0
