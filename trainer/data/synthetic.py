"""A small synthetic COCO keypoint dataset for learning checks (CI and smoke tests): two classes with different K.

- ``triangle`` (K=3): a filled red triangle; its vertices are the keypoints.
- ``kite`` (K=5): a filled blue quadrilateral; its four corners and its centre are the keypoints.

Objects vary in size, position and rotation. Some keypoints are occluded (a grey patch drawn over them,
``v = 1``); objects may hang over the image border, and keypoints outside the image are unlabelled (``v = 0``).
The box is the extent of the object clipped to the image. Everything is drawn with PIL from a seeded generator.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = 128
CATEGORIES = [
    {"id": 1, "name": "triangle", "keypoints": ["apex", "left", "right"], "skeleton": [[1, 2], [2, 3], [3, 1]]},
    {"id": 2, "name": "kite", "keypoints": ["top", "left", "bottom", "right", "centre"],
     "skeleton": [[1, 2], [2, 3], [3, 4], [4, 1]]},
]


def _shape_points(kind: str, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    if kind == "triangle":
        angles = angle + np.array([-math.pi / 2, math.pi * 5 / 6, math.pi / 6])
        radii = np.full(3, radius)
    else:
        angles = angle + np.array([-math.pi / 2, math.pi, math.pi / 2, 0.0])
        radii = radius * np.array([1.0, 0.6, 1.0, 0.6])
    pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
    return pts


def _draw_instance(draw: ImageDraw.ImageDraw, rng: np.random.Generator, kind: str, cx: float, cy: float,
                   allow_occlusion: bool) -> dict:
    radius = float(rng.uniform(18, 30))
    angle = float(rng.uniform(-0.4, 0.4))
    outline = _shape_points(kind, cx, cy, radius, angle)
    colour = (220, 40, 40) if kind == "triangle" else (40, 60, 220)
    draw.polygon([tuple(p) for p in outline], fill=colour)
    points = outline if kind == "triangle" else np.concatenate([outline, outline.mean(0, keepdims=True)])
    visibility = np.full(len(points), 2)
    if allow_occlusion and rng.random() < 0.4:
        j = int(rng.integers(len(points)))
        x, y = points[j]
        draw.rectangle([x - 5, y - 5, x + 5, y + 5], fill=(128, 128, 128))
        visibility[j] = 1
    keypoints = []
    for (x, y), v in zip(points, visibility):
        inside = 0 <= x < SIZE and 0 <= y < SIZE
        # COCO keypoints are pixel indices (rfkp adds 0.5 for pixel centres)
        keypoints += [round(float(x) - 0.5, 2), round(float(y) - 0.5, 2), int(v)] if inside else [0, 0, 0]
    x0, y0 = np.clip(outline.min(0), 0, SIZE)
    x1, y1 = np.clip(outline.max(0), 0, SIZE)
    return {
        "category_id": 1 if kind == "triangle" else 2,
        "keypoints": keypoints,
        "num_keypoints": int(sum(1 for v in keypoints[2::3] if v > 0)),
        "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
        "area": float((x1 - x0) * (y1 - y0)),
        "iscrowd": 0,
    }


def make_dataset(root: Path, name: str, num_images: int, seed: int) -> Path:
    """Write ``root/images/<name>_*.png`` and ``root/<name>.json``; returns the JSON path."""
    rng = np.random.default_rng(seed)
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        image = Image.new("RGB", (SIZE, SIZE), (235, 235, 225))
        draw = ImageDraw.Draw(image)
        kinds = ["triangle", "kite"] if rng.random() < 0.5 else [str(rng.choice(["triangle", "kite"]))]
        slots = rng.permutation([(36.0, 40.0), (92.0, 88.0), (36.0, 92.0), (92.0, 36.0)])[: len(kinds)]
        for kind, (sx, sy) in zip(kinds, slots):
            # occasionally push an object over the border so some keypoints fall outside the image
            over = rng.random() < 0.15
            cx = sx + rng.uniform(-8, 8) + (rng.choice([-1, 1]) * 30 if over else 0)
            cy = sy + rng.uniform(-8, 8)
            ann = _draw_instance(draw, rng, kind, float(cx), float(cy), allow_occlusion=True)
            if ann["bbox"][2] > 2 and ann["bbox"][3] > 2 and ann["num_keypoints"] > 0:
                annotations.append({"id": len(annotations) + 1, "image_id": i + 1, **ann})
        file_name = f"{name}_{i:03d}.png"
        image.save(images_dir / file_name)
        images.append({"id": i + 1, "file_name": file_name, "width": SIZE, "height": SIZE})
    path = root / f"{name}.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return path


#: ``rfkp train`` options of the CI learning check on this data (tests/trainer/test_learning.py and
#: benchmarks/learning_synthetic.py run exactly these): the tiny variant at 128 px, 40 epochs on CPU.
LEARNING_EPOCHS = 40
LEARNING_OPTIONS = [
    "--variant", "tiny", "--set", "resolution=128", "--epochs", str(LEARNING_EPOCHS), "--batch-size", "4",
    "--lr", "4e-4", "--lr-backbone", "4e-4", "--warmup-steps", "20", "--ema-tau", "20",
    "--eval-every", str(LEARNING_EPOCHS), "--no-progress", "--no-tensorboard",
]  # fmt: skip


def learning_check_data(root: Path) -> tuple[Path, Path]:
    """The training (64 images) and validation (16 images) files of the learning check, written under root."""
    return make_dataset(root, "train", 64, seed=0), make_dataset(root, "val", 16, seed=1)
