"""Run a model over every image of a COCO file and return COCO keypoint result rows."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from rfkp.io import ImageDecodeError
from trainer.data.schema import DatasetSchema
from trainer.evaluation.results import class_categories, detections_to_results


@contextlib.contextmanager
def naming_dataset_images(images: Sequence[Mapping[str, Any]]) -> Iterator[None]:
    """An image error raised while a batch of dataset ``images`` is read names the image by its COCO id and
    file, not by its position in the batch."""
    try:
        yield
    except (ValueError, TypeError) as exc:
        index = getattr(exc, "image_index", None)
        cause = exc.__cause__ if index is not None else exc
        if index is None and len(images) == 1 and isinstance(exc, ImageDecodeError):
            index = 0
        if index is None or not isinstance(cause, (ValueError, TypeError)):
            raise
        image = images[index]
        raise type(cause)(f"image id {image['id']} ({image['file_name']!r:.80}): {cause}") from cause


def predict_rows(
    model: Any,
    coco: Mapping[str, Any],
    images_dir: str | Path,
    schema: DatasetSchema,
    *,
    threshold: float = 0.001,
    resolution: int | None = None,
    batch_size: int = 4,
    progress: bool = False,
    **arch: int | None,
) -> list[dict[str, Any]]:
    """Detections of ``model`` (an ``RFDETRKeypoint``) on every image of ``coco``, as COCO result rows.

    ``arch`` holds the NAS knobs passed to ``predict`` (patch_size, num_windows, dec_layers, num_queries).
    """
    categories = class_categories(model.config.class_names, schema, model.config.num_keypoints_per_class)
    images = sorted(coco["images"], key=lambda im: im["id"])
    step = max(1, batch_size)
    chunks = [images[i : i + step] for i in range(0, len(images), step)]
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc="evaluate", unit="batch", leave=False)
    rows: list[dict[str, Any]] = []
    for chunk in chunks:
        paths = [str(Path(images_dir) / im["file_name"]) for im in chunk]
        with naming_dataset_images(chunk):
            detections = model.predict(paths, threshold=threshold, resolution=resolution, **arch)
        for image, dets in zip(chunk, detections):
            rows.extend(detections_to_results(dets, image["id"], categories))
    return rows
