"""Parity of rfkp with a fixture written by the public peer's fixture tool (any skeleton).

Usage: python benchmarks/peer_parity.py FIXTURE_DIR [--out benchmarks/results/NAME.json]
FIXTURE_DIR holds checkpoint.pth, raw_outputs.pt and (optionally) predict_outputs.pt + image.jpg.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from result_file import result_path, write_result

from rfkp import RFDETRKeypoint
from rfkp.postprocess import decode_detections


def compare(fixture: Path, image: Path | None) -> dict:
    model = RFDETRKeypoint.from_checkpoint(fixture / "checkpoint.pth", device="cpu")
    ref = torch.load(fixture / "raw_outputs.pt", weights_only=True)
    out = model.forward_raw(ref["input"])
    res = {k: (out[k] - ref[k]).abs().max().item() for k in ("pred_logits", "pred_boxes", "pred_keypoints")}
    res["num_keypoints_per_class"] = model.config.num_keypoints_per_class
    pred_file = fixture / "predict_outputs.pt"
    if pred_file.exists() and image is not None:
        p = torch.load(pred_file, weights_only=True)
        x, sizes = model.preprocess([image])
        dec = {k: v[0] for k, v in decode_detections(
            model.forward_raw(x), sizes, num_keypoints_per_class=model.config.num_keypoints_per_class,
            alpha=model.config.rescore_alpha).items()}
        kp = ~torch.isnan(p["precision_cholesky"][:, 0, 0])
        res["labels_equal"] = bool(torch.equal(dec["labels"], p["class_id"]))
        res["boxes_px"] = (dec["boxes"] - p["xyxy"]).abs().max().item()
        res["scores"] = (dec["scores"] - p["detection_confidence"]).abs().max().item()
        k = p["xy"].shape[1]
        res["keypoints_px"] = (dec["keypoints"][kp, :k] - p["xy"][kp]).abs().nan_to_num(0).max().item()
        res["cholesky"] = (dec["cholesky"][kp, :k] - p["precision_cholesky"][kp]).abs().nan_to_num(0).max().item()
        res["rows_with_keypoints"] = int(kp.sum())
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("fixture", type=Path)
    ap.add_argument("--image", type=Path, help="the image the fixture's predict outputs were made from "
                    "(default: the fixture's image.jpg when it has one)")
    ap.add_argument("--out", type=result_path)
    ap.add_argument("--note", help="how the fixture was made (recorded in the result file)")
    args = ap.parse_args()
    image = args.image
    if image is None and (args.fixture / "image.jpg").is_file():  # the fixture layout's image (see its README)
        image = args.fixture / "image.jpg"
    res = compare(args.fixture, image)
    for key, value in res.items():
        print(f"{key:24s} {value}")
    if args.out:
        extra = {"fixture": args.note} if args.note else {}
        write_result(args.out, "max abs difference rfkp vs peer rfdetr 1.11.2 (fp32, CPU)", res, **extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
