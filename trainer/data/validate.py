"""Loading and validating COCO keypoint JSON with precise errors.

Every error names the file and the image id, annotation id or category at fault and says what is wrong.
"""

from __future__ import annotations

import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trainer.data.errors import CocoFormatError
from trainer.data.schema import DatasetSchema, infer_schema
from trainer.data.values import ID_EXPECTED, is_coco_id, is_finite_number, is_int, short_repr
from trainer.jsonfile import load_json

_IMAGE_KEYS = ("id", "file_name", "width", "height")
_ANNOTATION_KEYS = ("id", "image_id", "category_id", "bbox", "keypoints")
_VISIBILITY = (0, 1, 2)


def load_coco_json(path: str | Path) -> dict[str, Any]:
    """Read a COCO JSON file into a dict.

    Raises:
        FileNotFoundError: the file does not exist. IsADirectoryError: it is a folder.
        CocoFormatError: the text is not JSON (with line and column) or the root is not an object.
    """
    path = Path(path)
    try:
        data = load_json(path, "COCO annotation")
    except ValueError as err:  # malformed JSON or not UTF-8, with the position
        raise CocoFormatError(str(err)) from err
    if not isinstance(data, dict):
        raise CocoFormatError(f"{path.name}: the JSON root must be an object, got {type(data).__name__}")
    return data


def _check_images(images: Any, source: str) -> dict[int, Mapping[str, Any]]:
    if not isinstance(images, list):
        raise CocoFormatError(f"{source}: 'images' must be a list")
    by_id: dict[int, Mapping[str, Any]] = {}
    for position, image in enumerate(images):
        if not isinstance(image, Mapping):
            raise CocoFormatError(f"{source}: images[{position}] must be an object")
        where = f"{source}: image id {short_repr(image.get('id', f'? (images[{position}])'))}"
        for key in _IMAGE_KEYS:
            if key not in image:
                raise CocoFormatError(f"{where}: missing key '{key}'")
        if not is_coco_id(image["id"]):
            raise CocoFormatError(f"{where}: 'id' must be {ID_EXPECTED}, got {short_repr(image['id'])}")
        if image["id"] in by_id:
            raise CocoFormatError(f"{where}: duplicate image id")
        if not isinstance(image["file_name"], str) or not image["file_name"]:
            raise CocoFormatError(f"{where}: 'file_name' must be a non-empty string")
        for key in ("width", "height"):
            if not is_int(image[key]) or image[key] <= 0:
                raise CocoFormatError(f"{where}: '{key}' must be a positive integer, got {image[key]!r}")
        by_id[image["id"]] = image
    return by_id


def _check_keypoints(
    ann: Mapping[str, Any], num_keypoints: int, where: str, category: str, image: Mapping[str, Any]
) -> None:
    values = ann["keypoints"]
    if not isinstance(values, list) or any(isinstance(v, list) for v in values):
        got = "nested lists" if isinstance(values, list) else f"a {type(values).__name__}"
        raise CocoFormatError(
            f"{where}: 'keypoints' must be a flat list of {3 * num_keypoints} numbers (x, y, v for each of "
            f"{num_keypoints} keypoints of {category}), got {got}"
        )
    if len(values) != 3 * num_keypoints:
        raise CocoFormatError(
            f"{where}: 'keypoints' has {len(values)} values, expected {3 * num_keypoints} "
            f"(3 x {num_keypoints} keypoints of {category})"
        )
    labelled = 0
    for k in range(num_keypoints):
        x, y, v = values[3 * k : 3 * k + 3]
        if not (is_finite_number(x) and is_finite_number(y)):
            raise CocoFormatError(
                f"{where}: keypoint {k} has non-numeric or non-finite coordinates ({x!r}, {y!r})"
            )
        if v not in _VISIBILITY or isinstance(v, bool):
            raise CocoFormatError(f"{where}: keypoint {k} has visibility {v!r}; it must be 0, 1 or 2")
        width, height = image["width"], image["height"]
        # labelled points may lie a little outside the image (occluded at the border), not an image away
        if v > 0 and not (-width <= x <= 2 * width and -height <= y <= 2 * height):
            raise CocoFormatError(
                f"{where}: keypoint {k} at ({x}, {y}) lies far outside the {width}x{height} image "
                "(more than the image's size beyond its border)"
            )
        labelled += v > 0
    if "num_keypoints" not in ann:
        return
    count = ann["num_keypoints"]
    if not (is_int(count) or (isinstance(count, float) and count.is_integer())):
        raise CocoFormatError(f"{where}: 'num_keypoints' must be an integer, got {short_repr(count)}")
    if count != labelled:
        raise CocoFormatError(
            f"{where}: 'num_keypoints' is {ann['num_keypoints']!r} but {labelled} keypoints have v > 0"
        )


def _check_bbox(bbox: Any, where: str) -> None:
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(is_finite_number(b) for b in bbox)):
        raise CocoFormatError(
            f"{where}: 'bbox' must be [x, y, width, height] with 4 finite numbers, got {bbox!r}"
        )
    if any(b < 0 for b in bbox):
        raise CocoFormatError(
            f"{where}: 'bbox' {bbox} has a negative value; x, y, width and height must be >= 0"
        )


def validate_coco(coco: Mapping[str, Any], schema: DatasetSchema, source: str = "<coco>") -> None:
    """Check images and annotations of a parsed COCO keypoint dict against its schema.

    Raises:
        CocoFormatError: the first problem found, naming the image or annotation id.
    """
    for key in ("images", "annotations", "categories"):
        if key not in coco:
            raise CocoFormatError(f"{source}: missing top-level key '{key}'")
    images = _check_images(coco["images"], source)
    annotations = coco["annotations"]
    if not isinstance(annotations, list):
        raise CocoFormatError(f"{source}: 'annotations' must be a list")
    categories = {c.category_id: c for c in schema.categories}
    seen: set[int] = set()
    for position, ann in enumerate(annotations):
        if not isinstance(ann, Mapping):
            raise CocoFormatError(f"{source}: annotations[{position}] must be an object")
        where = f"{source}: annotation id {short_repr(ann.get('id', f'? (annotations[{position}])'))}"
        if "image_id" in ann:
            where += f" (image id {short_repr(ann['image_id'])})"
        for key in _ANNOTATION_KEYS:
            if key not in ann:
                raise CocoFormatError(f"{where}: missing key '{key}'")
        for key in ("id", "image_id", "category_id"):  # references may be integral floats, as pycocotools takes
            if not is_coco_id(ann[key], integral_floats=key != "id"):
                raise CocoFormatError(f"{where}: '{key}' must be {ID_EXPECTED}, got {short_repr(ann[key])}")
        if ann["id"] in seen:
            raise CocoFormatError(f"{where}: duplicate annotation id")
        seen.add(ann["id"])
        if ann["image_id"] not in images:
            raise CocoFormatError(f"{where}: unknown image id {ann['image_id']!r}")
        if ann["category_id"] not in categories:
            raise CocoFormatError(
                f"{where}: unknown category id {ann['category_id']!r}; known ids are {sorted(categories)}"
            )
        category = categories[ann["category_id"]]
        _check_bbox(ann["bbox"], where)
        _check_keypoints(
            ann, category.num_keypoints, where, f"category {category.category_id} {category.name!r}",
            images[ann["image_id"]],
        )
        if "iscrowd" in ann and ann["iscrowd"] not in (0, 1):
            raise CocoFormatError(f"{where}: 'iscrowd' must be 0 or 1, got {ann['iscrowd']!r}")
        if "area" in ann and not (is_finite_number(ann["area"]) and ann["area"] >= 0):
            raise CocoFormatError(f"{where}: 'area' must be a finite number >= 0, got {ann['area']!r}")


def require_labelled_keypoints(coco: Mapping[str, Any], source: str, purpose: str) -> None:
    """Refuse a (validated) file in which no annotation is an instance with a labelled keypoint: training would
    learn nothing and OKS AP would be -1. Crowd annotations (ignore regions for pycocotools, left out of the
    training targets) and boxes without area inside their image (also left out: boxes are clipped to the
    image) do not count. ``purpose`` completes the message.

    Raises:
        CocoFormatError: naming the file and what it was meant for.
    """
    sizes = {im["id"]: (im["width"], im["height"]) for im in coco["images"]}

    def has_area(ann: Mapping[str, Any]) -> bool:
        box = ann.get("bbox")
        if box is None:
            return True
        if len(box) != 4 or ann["image_id"] not in sizes:
            return False
        x, y, w, h = box
        width, height = sizes[ann["image_id"]]
        return min(x + w, width) > max(x, 0) and min(y + h, height) > max(y, 0)

    def usable(ann: Mapping[str, Any]) -> bool:
        return not ann.get("iscrowd", 0) and has_area(ann) and any(v > 0 for v in ann["keypoints"][2::3])

    if not any(usable(ann) for ann in coco["annotations"]):
        count = len(coco["annotations"])
        raise CocoFormatError(
            f"{source}: none of its {count} annotations has a labelled keypoint (v > 0) on an instance that is "
            f"not a crowd and has a box with area inside its image; {purpose}"
        )


def load_labelled_coco(
    coco_json: str | Path | Mapping[str, Any], purpose: str
) -> tuple[dict[str, Any], DatasetSchema, str]:
    """A COCO keypoint file (or dict) read, its schema inferred, validated, and required to hold a labelled
    keypoint (``purpose`` completes that message, see `require_labelled_keypoints`): what every command that
    evaluates on a file does first.

    Returns:
        ``(coco, schema, source)``, ``source`` the file name used in messages ("<coco>" for a dict).
    """
    if isinstance(coco_json, Mapping):
        coco, source = dict(coco_json), "<coco>"
    else:
        coco, source = load_coco_json(coco_json), Path(coco_json).name
    schema = infer_schema(coco, source)
    validate_coco(coco, schema, source)
    require_labelled_keypoints(coco, source, purpose)
    return coco, schema, source


def check_image_files(coco: Mapping[str, Any], images_dir: str | Path, source: str = "<coco>") -> None:
    """Check that every image's file exists under ``images_dir``.

    Raises:
        FileNotFoundError: ``images_dir`` is not a folder.
        CocoFormatError: naming the first image id whose file is missing.
    """
    root = Path(images_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    for image in coco["images"]:
        path = root / image["file_name"]
        try:  # stat, not is_file(): Python 3.14's is_file() returns False where stat raises (a name too long)
            found = stat.S_ISREG(path.stat().st_mode)
        except (FileNotFoundError, NotADirectoryError):
            found = False
        except OSError as err:  # a name too long for the file system, say
            raise CocoFormatError(
                f"{source}: image id {image['id']}: file {short_repr(image['file_name'])} cannot be looked up: "
                f"{err.strerror or err}"
            ) from None
        if not found:
            raise CocoFormatError(
                f"{source}: image id {image['id']}: file {short_repr(image['file_name'])} not found in {root}"
            )


#: EXIF orientations that turn the image by 90 degrees (``rfkp.io.load_image`` applies them: width and height swap).
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)


def _orientation(image: Any) -> int | None:
    """The EXIF orientation of an opened PIL image from what its header holds (``getexif`` would decode a PNG
    whose EXIF is not in the header: that case is left to the size check after decoding)."""
    from PIL import Image

    exif = image.info.get("exif")
    if not exif:
        return None
    parsed = Image.Exif()
    try:
        parsed.load(exif)
    except Exception:  # noqa: BLE001 - malformed EXIF: no orientation, as the image loader reads it
        return None
    return parsed.get(0x0112)


def check_image_sizes(coco: Mapping[str, Any], images_dir: str | Path, source: str = "<coco>") -> None:
    """Check from each image file's header (no pixels decoded) that PIL can open it and that its size, after
    the EXIF orientation ``load_image`` applies, is the ``width`` x ``height`` of the file. Run after
    ``check_image_files``; a file whose pixel data is corrupt past its header still fails when decoded.

    Raises:
        CocoFormatError: naming the first image id whose file is not an image, has another size, or is larger
            than the image loader accepts (``rfkp.io.MAX_PIXELS``).
    """
    from PIL import Image, UnidentifiedImageError

    from rfkp.io import MAX_PIXELS

    root = Path(images_dir)
    for image in coco["images"]:
        where = f"{source}: image id {image['id']}: file {short_repr(image['file_name'])}"
        try:
            with Image.open(root / image["file_name"]) as opened:
                width, height = opened.size
                if _orientation(opened) in _TRANSPOSING_ORIENTATIONS:
                    width, height = height, width
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as err:
            raise CocoFormatError(f"{where} is not a readable image: {err}") from None
        if width * height > MAX_PIXELS:
            raise CocoFormatError(f"{where} is {width}x{height}, more than the {MAX_PIXELS} pixels images may have")
        if (width, height) != (image["width"], image["height"]):
            raise CocoFormatError(
                f"{where} is {width}x{height} but the annotation says {image['width']}x{image['height']}"
            )
