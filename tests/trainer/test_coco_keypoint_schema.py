"""Schema inference and left/right flip pairs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.data.errors import CocoFormatError
from trainer.data.flip_pairs import (
    flip_permutation,
    infer_flip_pairs,
    name_tokens,
    resolve_flip_pairs,
    sided_but_unpaired,
)
from trainer.data.schema import infer_schema

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def _load(relative: str) -> dict:
    path = DATA / relative
    if not path.is_file():
        pytest.skip(f"shared test data not found at {path}")
    return json.loads(path.read_text())


def test_name_tokens_split_separators_case_and_digits() -> None:
    assert name_tokens("left_eye") == ("left", "eye")
    assert name_tokens("LeftEye") == ("left", "eye")
    assert name_tokens("L-Eye") == ("l", "eye")
    assert name_tokens("paw1LH_top") == ("paw", "1", "lh", "top")


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["nose", "left_eye", "right_eye"], [(1, 2)]),
        (["RightHand", "head", "LeftHand"], [(0, 2)]),
        (["ear_l", "ear_r", "tail"], [(0, 1)]),
        (["L_wing", "R_wing", "beak"], [(0, 1)]),
        (["left_right_thing", "right_right_thing"], []),  # two side tokens: ambiguous, left unpaired
        (["left_eye", "right_ear"], []),  # no mirror name
        (["paw1LH", "paw4RH"], []),  # sides not spelled as tokens: needs explicit pairs
    ],
)
def test_infer_flip_pairs_from_names(names: list[str], expected: list[tuple[int, int]]) -> None:
    assert infer_flip_pairs(names) == expected


def test_side_tokens_given_explicitly() -> None:
    names = ["paw_LH", "paw_LF", "paw_RF", "paw_RH", "nose"]
    assert infer_flip_pairs(names) == []
    assert infer_flip_pairs(names, [("LH", "RH"), ("LF", "RF")]) == [(0, 3), (1, 2)]


def test_resolve_explicit_pairs_by_name_and_index() -> None:
    names = ["paw1LH_top", "paw2LF_top", "paw3RF_top", "paw4RH_top", "nose_top"]
    assert resolve_flip_pairs(names, [("paw4RH_top", "paw1LH_top"), (1, 2)]) == [(0, 3), (1, 2)]
    with pytest.raises(ValueError, match="unknown keypoint name 'paw9'"):
        resolve_flip_pairs(names, [("paw9", "nose_top")])
    with pytest.raises(ValueError, match="index 7 out of range for 5 keypoints"):
        resolve_flip_pairs(names, [(0, 7)])
    with pytest.raises(ValueError, match="with itself"):
        resolve_flip_pairs(names, [(2, 2)])
    with pytest.raises(ValueError, match="already in another pair"):
        resolve_flip_pairs(names, [(0, 3), (3, 1)])


def test_sided_names_without_a_partner_are_found() -> None:
    mouse = ["paw1LH_top", "paw2LF_top", "paw3RF_top", "paw4RH_top", "tailBase_top", "nose_top"]
    assert infer_flip_pairs(mouse) == []  # the digits differ: nothing is inferred
    assert sided_but_unpaired(mouse, []) == mouse[:4]
    assert sided_but_unpaired(mouse, [(0, 3), (1, 2)]) == []
    person = ["nose", "left_eye", "right_eye", "left_ear"]  # the ear's partner is missing
    assert sided_but_unpaired(person, infer_flip_pairs(person)) == ["left_ear"]
    assert sided_but_unpaired(["LED_marker", "REF", "Rostrum", "tail", "hindLR"], []) == ["hindLR"]


def test_flip_permutation_swaps_pairs_only() -> None:
    assert flip_permutation(5, [(0, 3), (1, 2)]) == [3, 2, 1, 0, 4]


def test_schema_of_coco_person() -> None:
    schema = infer_schema(_load("coco-sample/person_keypoints.json"), "person_keypoints.json")
    (person,) = schema.categories
    assert schema.num_keypoints_per_class == [17]
    assert person.name == "person" and person.category_id == 1
    assert person.keypoint_names[:3] == ("nose", "left_eye", "right_eye")
    assert person.skeleton[0] == (15, 13)  # COCO's [16, 14], now 0-based
    assert person.flip_pairs == ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))


def test_schema_of_two_mouse_categories_with_explicit_pairs() -> None:
    coco = _load("mirror-mouse/train.json")
    inferred = infer_schema(coco)
    assert inferred.class_names == ["mirror_mouse_side", "mirror_mouse_bottom"]
    assert inferred.num_keypoints_per_class == [7, 7]
    assert all(c.flip_pairs == () for c in inferred.categories)  # LH/RH names are not inferable
    explicit = infer_schema(coco, flip_pairs={"*": [(0, 3), (1, 2)]})
    assert [c.flip_pairs for c in explicit.categories] == [((0, 3), (1, 2))] * 2
    by_name = infer_schema(coco, flip_pairs={2: [("paw1LH_bot", "paw4RH_bot")]})
    assert [c.flip_pairs for c in by_name.categories] == [(), ((0, 3),)]


def test_flip_pairs_by_category_id_as_json_gives_it() -> None:
    """JSON object keys are strings: ``--flip-pairs '{"2": ...}'`` names category id 2."""
    coco = {"categories": [{"id": 1, "name": "a", "keypoints": ["p", "q"]}, {"id": 2, "name": "b", "keypoints": ["p", "q"]}]}
    schema = infer_schema(coco, flip_pairs={"2": [[0, 1]]})
    assert [c.flip_pairs for c in schema.categories] == [(), ((0, 1),)]


def test_categories_sorted_by_id_and_keypoint_count_inferred() -> None:
    coco = {
        "categories": [{"id": 7, "name": "b"}, {"id": 3, "name": "a", "keypoints": ["x"], "skeleton": []}],
        "annotations": [{"category_id": 7, "keypoints": [1, 2, 2, 3, 4, 1]}],
    }
    schema = infer_schema(coco)
    assert schema.category_ids == [3, 7]
    assert schema.categories[1].keypoint_names == ("kp0", "kp1")
    assert schema.class_index(7) == 1
    with pytest.raises(KeyError, match="unknown category id 5"):
        schema.class_index(5)


@pytest.mark.parametrize(
    ("categories", "message"),
    [
        ([], "'categories' must be a non-empty list"),
        ([{"name": "a", "keypoints": ["x"]}], "category #0: missing key 'id'"),
        ([{"id": 1, "name": "a", "keypoints": []}], r"category id 1 \('a'\): 'keypoints' is empty"),
        ([{"id": 1, "name": "a", "keypoints": ["x", "x"]}], "keypoint names must be unique"),
        (
            [{"id": 1, "name": "a", "keypoints": ["x"]}, {"id": 1, "name": "b", "keypoints": ["y"]}],
            "duplicate",
        ),
        (
            [{"id": 1, "name": "a", "keypoints": ["x", "y"], "skeleton": [[1, 3]]}],
            r"edge \[1, 3\] is out of range",
        ),
        ([{"id": 1, "name": "a"}], "keypoint count cannot be inferred"),
    ],
)
def test_bad_categories_are_named(categories: list, message: str) -> None:
    with pytest.raises(CocoFormatError, match=message):
        infer_schema({"categories": categories, "annotations": []}, "f.json")
