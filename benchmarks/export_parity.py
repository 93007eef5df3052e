"""The portable ONNX export on ONNX Runtime (CPU) against ``predict()`` and against the same module in PyTorch.

    python benchmarks/export_parity.py [--weights CKPT] [--image IMG ...] [--out benchmarks/results/F.json]

Defaults: the peer fixture's checkpoint and image (576 px, K = 17) and the real images in ../shared/data.
Prints and records the largest differences after pairing rows (boxes and keypoints in input pixels).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import onnxruntime as ort
import torch
from result_file import result_path, write_result

from rfkp import RFDETRKeypoint
from rfkp.export import INPUT_NAME, OUTPUT_NAMES, ExportedDetector, export_onnx
from rfkp.export.compare import in_input_pixels, max_differences

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"
FIXTURE = SHARED / "fixtures" / "rfdetr-keypoint-preview-random"


def default_images() -> list[Path]:
    images = [FIXTURE / "image.jpg"]
    images += sorted((SHARED / "data" / "coco-sample" / "images").glob("*.jpg"))[:2]
    images += sorted((SHARED / "data" / "mirror-mouse" / "images").glob("*.png"))[:2]
    return [p for p in images if p.is_file()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=FIXTURE / "checkpoint.pth")
    parser.add_argument("--image", type=Path, nargs="*")
    parser.add_argument("--out", type=result_path, default=Path(__file__).resolve().parent / "results" / "export_parity_onnxruntime_cpu.json")
    args = parser.parse_args()
    model = RFDETRKeypoint.from_checkpoint(args.weights, device="cpu")
    resolution = model.config.resolution
    images = args.image or default_images()
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / "model.onnx", dynamic_batch=len(images))
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        pixels, _ = model.preprocess([str(p) for p in images])
        outputs = dict(zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), {INPUT_NAME: pixels.numpy()})))
    with torch.no_grad():
        torch_out = dict(zip(OUTPUT_NAMES, (t.numpy() for t in ExportedDetector(model)(pixels))))
    detections = model.predict([str(p) for p in images], threshold=0.0)
    rows = {}
    for i, (image, dets) in enumerate(zip(images, detections)):
        ort_rows = {name: value[i] for name, value in outputs.items()}
        torch_rows = {name: value[i] for name, value in torch_out.items()}
        rows[image.name] = {
            "onnxruntime_vs_predict": max_differences(in_input_pixels(dets, resolution), ort_rows),
            "onnxruntime_vs_torch_module": max_differences(torch_rows, ort_rows),
            "detections": len(dets),
        }
        print(image.name, rows[image.name]["onnxruntime_vs_predict"])
    worst = {key: max(r["onnxruntime_vs_predict"][key] for r in rows.values())
             for key in next(iter(rows.values()))["onnxruntime_vs_predict"]}
    print("worst over images (ONNX Runtime vs predict):", worst)
    write_result(args.out, "portable ONNX export on ONNX Runtime CPU vs predict() (input pixels, rows paired)",
                 {"per_image": rows, "worst_vs_predict": worst}, weights=str(args.weights.name),
                 note="predict() orders rows by rescored score, the graph by class probability before rescoring, "
                      "so rows are paired by content; rows_reordered against the PyTorch module counts near-ties "
                      "that ONNX Runtime's sigmoid orders differently",
                 resolution=resolution, onnxruntime=ort.__version__)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
