"""Every validation error of a COCO keypoint file names the image or annotation and what is wrong."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer.data.coco import CocoKeypointDataset
from trainer.data.errors import CocoFormatError
from trainer.data.schema import infer_schema
from trainer.data.validate import load_coco_json, validate_coco

VALID = {
    "images": [
        {"id": 10, "file_name": "a.png", "width": 8, "height": 6},
        {"id": 11, "file_name": "b.png", "width": 8, "height": 6},
    ],
    "categories": [
        {"id": 1, "name": "thing", "keypoints": ["left_x", "right_x", "mid"], "skeleton": [[1, 3]]}
    ],
    "annotations": [
        {
            "id": 100,
            "image_id": 10,
            "category_id": 1,
            "bbox": [1, 1, 4, 3],
            "keypoints": [2, 2, 2, 4, 3, 1, 0, 0, 0],
            "num_keypoints": 2,
            "iscrowd": 0,
            "area": 12.0,
        }
    ],
}


def _write(tmp_path: Path, coco: dict) -> Path:
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(coco))
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((6, 8), np.uint8)).save(images / name)
    return path


def _validate(coco: dict) -> None:
    validate_coco(coco, infer_schema(coco, "ann.json"), "ann.json")


def test_valid_file_passes(tmp_path: Path) -> None:
    path = _write(tmp_path, VALID)
    dataset = CocoKeypointDataset(path, tmp_path / "images")
    assert len(dataset) == 2
    integral = copy.deepcopy(VALID)
    integral["annotations"][0]["num_keypoints"] = 2.0  # what pandas writes; pycocotools compares it as 2
    _validate(integral)


def test_malformed_json_gives_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"images": [\n  {"id": 1,}\n]}')
    with pytest.raises(CocoFormatError, match=r"broken.json: malformed JSON at line 2 column 12"):
        load_coco_json(path)
    path.write_text("[1, 2]")
    with pytest.raises(CocoFormatError, match="the JSON root must be an object, got list"):
        load_coco_json(path)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_coco_json(tmp_path / "missing.json")


def _ann(coco: dict) -> dict:
    return coco["annotations"][0]


CASES: list[tuple[str, Callable[[dict], None], str]] = [
    ("no images key", lambda c: c.pop("images"), "missing top-level key 'images'"),
    ("image key", lambda c: c["images"][1].pop("file_name"), "image id 11: missing key 'file_name'"),
    (
        "image size",
        lambda c: c["images"][0].update(width=0),
        "image id 10: 'width' must be a positive integer",
    ),
    ("dup image", lambda c: c["images"][1].update(id=10), "image id 10: duplicate image id"),
    ("ann key", lambda c: _ann(c).pop("bbox"), r"annotation id 100 \(image id 10\): missing key 'bbox'"),
    ("ann kps key", lambda c: _ann(c).pop("keypoints"), "annotation id 100 .*missing key 'keypoints'"),
    (
        "kps length",
        lambda c: _ann(c).update(keypoints=[2, 2, 2, 4, 3, 1]),
        r"annotation id 100 \(image id 10\): 'keypoints' has 6 values, expected 9 \(3 x 3 keypoints of "
        r"category 1 'thing'\)",
    ),
    (
        "nested kps",
        lambda c: _ann(c).update(keypoints=[[2, 2, 2], [4, 3, 1], [0, 0, 0]]),
        r"annotation id 100 \(image id 10\): 'keypoints' must be a flat list of 9 numbers \(x, y, v for each of 3 "
        r"keypoints of category 1 'thing'\), got nested lists",
    ),
    ("kps type", lambda c: _ann(c).update(keypoints="2 2 2"), "'keypoints' must be a flat list of 9 numbers .*got a str"),
    ("visibility", lambda c: _ann(c)["keypoints"].__setitem__(5, 3), "keypoint 1 has visibility 3"),
    ("kp value", lambda c: _ann(c)["keypoints"].__setitem__(0, "x"), "keypoint 0 has non-numeric"),
    (
        "num_keypoints",
        lambda c: _ann(c).update(num_keypoints=3),
        "'num_keypoints' is 3 but 2 keypoints have v > 0",
    ),
    ("num_keypoints type", lambda c: _ann(c).update(num_keypoints="2"), "'num_keypoints' must be an integer, got '2'"),
    ("num_keypoints bool", lambda c: _ann(c).update(num_keypoints=True), "'num_keypoints' must be an integer, got True"),
    ("bbox negative", lambda c: _ann(c).update(bbox=[1, 1, -4, 3]), r"annotation id 100.*'bbox' .* negative"),
    ("bbox short", lambda c: _ann(c).update(bbox=[1, 1, 4]), "'bbox' must be \\[x, y, width, height\\]"),
    (
        "unknown category",
        lambda c: _ann(c).update(category_id=5),
        r"annotation id 100.*unknown category id 5",
    ),
    (
        "unknown image",
        lambda c: _ann(c).update(image_id=99),
        r"annotation id 100 \(image id 99\): unknown image id",
    ),
    ("dup ann", lambda c: c["annotations"].append(copy.deepcopy(_ann(c))), "annotation id 100.*duplicate"),
    ("iscrowd", lambda c: _ann(c).update(iscrowd=2), "'iscrowd' must be 0 or 1"),
    ("area", lambda c: _ann(c).update(area=-1), "'area' must be a finite number >= 0"),
    ("huge area", lambda c: _ann(c).update(area=10**400), "'area' must be a finite number >= 0"),
    ("huge kp", lambda c: _ann(c)["keypoints"].__setitem__(0, 10**400), "keypoint 0 has non-numeric or non-finite"),
    ("long bad image id", lambda c: c["images"][0].update(id=["x" * 5000]), r"image id \['xxx.*\.\.\.'\]: 'id' must be"),
    ("list image_id", lambda c: _ann(c).update(image_id=[10]), r"'image_id' must be an integer in the int64 range, got \[10\]"),
    ("fractional image_id", lambda c: _ann(c).update(image_id=10.5), "'image_id' must be an integer in the int64"),
    ("dict category_id", lambda c: _ann(c).update(category_id={"a": 1}), "'category_id' must be an integer"),
    ("bool ann id", lambda c: _ann(c).update(id=True), "'id' must be an integer in the int64 range, got True"),
    ("float ann id", lambda c: _ann(c).update(id=100.0), "'id' must be an integer in the int64 range, got 100.0"),
    ("huge category id", lambda c: c["categories"][0].update(id=2**64), "category #0: 'id' must be an integer in"),
    ("huge image id", lambda c: c["images"][1].update(id=2**64 + 5), "'id' must be an integer in the int64 range"),
    (
        "kp far outside",
        lambda c: _ann(c)["keypoints"].__setitem__(0, 1e30),
        r"keypoint 0 at \(1e\+30, 2\) lies far outside the 8x6 image",
    ),
    (
        "category name",
        lambda c: c["categories"][0].update(name=None),
        "category #0: 'name' must be a non-empty string, got None",
    ),
]


@pytest.mark.parametrize(("name", "mutate", "message"), CASES, ids=[c[0] for c in CASES])
def test_validation_errors(name: str, mutate: Callable[[dict], None], message: str) -> None:
    coco = copy.deepcopy(VALID)
    mutate(coco)
    with pytest.raises(CocoFormatError, match=message):
        _validate(coco)


def test_missing_image_file_names_the_image(tmp_path: Path) -> None:
    path = _write(tmp_path, VALID)
    (tmp_path / "images" / "b.png").unlink()
    with pytest.raises(CocoFormatError, match=r"ann.json: image id 11: file 'b.png' not found"):
        CocoKeypointDataset(path, tmp_path / "images")


def test_image_size_disagreeing_with_annotation(tmp_path: Path) -> None:
    coco = copy.deepcopy(VALID)
    coco["images"][0]["width"] = 9
    path = _write(tmp_path, coco)  # refused from the header, before training
    with pytest.raises(CocoFormatError, match="image id 10: file 'a.png' is 8x6 but the annotation says 9x6"):
        CocoKeypointDataset(path, tmp_path / "images")
    dataset = CocoKeypointDataset(_write(tmp_path, VALID), tmp_path / "images")
    Image.fromarray(np.zeros((6, 9), np.uint8)).save(tmp_path / "images" / "a.png")  # replaced after loading
    with pytest.raises(ValueError, match="image id 10: file 'a.png' is 9x6 but the annotation says 8x6"):
        dataset[0]


def test_image_headers_are_read_with_their_exif_orientation(tmp_path: Path) -> None:
    path = _write(tmp_path, VALID)
    exif = Image.Exif()
    exif[0x0112] = 6  # turned by 90 degrees: load_image gives 6 wide, 8 high
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(tmp_path / "images" / "a.png", exif=exif)
    with pytest.raises(CocoFormatError, match="image id 10: file 'a.png' is 6x8 but the annotation says 8x6"):
        CocoKeypointDataset(path, tmp_path / "images")
    (tmp_path / "images" / "a.png").write_bytes(b"not an image")
    with pytest.raises(CocoFormatError, match="image id 10: file 'a.png' is not a readable image: cannot identify"):
        CocoKeypointDataset(path, tmp_path / "images")
    # a malformed EXIF block: no orientation, as the image loader reads it (the file decodes)
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(tmp_path / "images" / "a.jpg", exif=b"Exif\x00\x00garbage!")
    from rfkp.io import load_image

    assert load_image(tmp_path / "images" / "a.jpg").shape == (6, 8, 3)
    coco = json.loads(path.read_text())
    coco["images"][0]["file_name"] = "a.jpg"
    path.write_text(json.dumps(coco))
    assert len(CocoKeypointDataset(path, tmp_path / "images")) == 2


def test_images_larger_than_the_loader_takes_are_refused_when_the_data_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rfkp.io

    path = _write(tmp_path, VALID)
    monkeypatch.setattr(rfkp.io, "MAX_PIXELS", 47)  # the images are 8x6 = 48 pixels
    with pytest.raises(CocoFormatError, match="is 8x6, more than the 47 pixels images may have"):
        CocoKeypointDataset(path, tmp_path / "images")


def test_an_undecodable_image_names_its_id(tmp_path: Path) -> None:
    dataset = CocoKeypointDataset(_write(tmp_path, VALID), tmp_path / "images")
    image = tmp_path / "images" / "b.png"
    image.write_bytes(image.read_bytes()[:40])  # a header without pixels
    with pytest.raises(ValueError, match="ann.json: image id 11: could not decode image file .*b.png"):
        dataset[1]


def test_keypoints_just_outside_the_image_and_unlabelled_ones_anywhere_pass() -> None:
    coco = copy.deepcopy(VALID)
    _ann(coco)["keypoints"] = [-3.5, 10.0, 1, 15.0, -5.0, 2, 1e9, 1e9, 0]  # within one image size of the border
    _validate(coco)


def test_long_file_names_are_cut_and_name_the_image(tmp_path: Path) -> None:
    from trainer.data.validate import check_image_files

    coco = copy.deepcopy(VALID)
    coco["images"][1]["file_name"] = "x" * 5000 + ".png"
    _write(tmp_path, coco)
    with pytest.raises(CocoFormatError, match=r"ann.json: image id 11: file 'xxx.*' cannot be looked up") as exc:
        check_image_files(coco, tmp_path / "images", "ann.json")
    assert len(str(exc.value)) < 300


def test_files_without_labelled_keypoints_are_refused_for_training_and_evaluation() -> None:
    from trainer.data.validate import require_labelled_keypoints

    coco = copy.deepcopy(VALID)
    require_labelled_keypoints(coco, "ann.json", "nothing to do")
    image = next(im for im in coco["images"] if im["id"] == _ann(coco)["image_id"])
    outside = [[image["width"] + 5, 10, 20, 20], [-30, 10, 20, 20], [10, image["height"], 20, 20]]
    # ignored by pycocotools / left out of training (boxes are clipped to their image)
    for unusable in ({"iscrowd": 1}, {"bbox": [10, 10, 0, 20]}, *({"bbox": box} for box in outside)):
        changed = copy.deepcopy(coco)
        _ann(changed).update(unusable)
        with pytest.raises(CocoFormatError, match=r"none of its 1 annotations .* not a crowd and has a box with area"):
            require_labelled_keypoints(changed, "ann.json", "nothing to do")
    _ann(coco)["keypoints"] = [0, 0, 0] * 3
    for kept in (coco["annotations"], []):
        coco["annotations"] = kept
        with pytest.raises(CocoFormatError, match=r"ann.json: none of its \d annotations has a labelled keypoint"):
            require_labelled_keypoints(coco, "ann.json", "nothing to do")


def test_integral_float_references_are_taken_as_pycocotools_takes_them() -> None:
    coco = copy.deepcopy(VALID)
    _ann(coco).update(image_id=10.0, category_id=1.0)  # what pandas writes
    _validate(coco)


def test_categories_sharing_a_name_cannot_be_matched_to_a_class() -> None:
    from trainer.evaluation.results import class_categories

    coco = copy.deepcopy(VALID)
    coco["categories"].append({**coco["categories"][0], "id": 2})
    schema = infer_schema(coco, "ann.json")  # a valid file (results files match categories by id)
    assert schema.shared_names() == {"thing": [1, 2]}
    with pytest.raises(ValueError, match=r"dataset categories \[1, 2\] share the name 'thing'"):
        class_categories(["thing"], schema, [3])
