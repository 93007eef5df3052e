"""The keypoint schema of a COCO file: categories, their keypoint names, skeletons and flip pairs.

Class indices follow the categories sorted by COCO category id: class ``c`` of the model is the ``c``-th
category by id. Skeleton edges are stored 0-based (COCO files store them 1-based).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trainer.data.errors import CocoFormatError
from trainer.data.flip_pairs import FlipPairSpec, flip_permutation, infer_flip_pairs, resolve_flip_pairs
from trainer.data.values import ID_EXPECTED, is_coco_id, is_int, short_repr

#: Key of ``flip_pairs`` that applies to every category without its own entry.
ALL_CATEGORIES = "*"


@dataclass(frozen=True)
class CategorySchema:
    """One keypointed category.

    Attributes:
        category_id: the COCO category id.
        name: the category name.
        keypoint_names: ``K`` names, in the order of the annotation ``keypoints`` triplets.
        skeleton: 0-based keypoint index edges.
        flip_pairs: 0-based ``(i, j)`` left/right pairs, ``i < j``.
    """

    category_id: int
    name: str
    keypoint_names: tuple[str, ...]
    skeleton: tuple[tuple[int, int], ...]
    flip_pairs: tuple[tuple[int, int], ...]

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoint_names)

    @property
    def flip_permutation(self) -> list[int]:
        """``flipped[i] = original[perm[i]]`` for a horizontal flip."""
        return flip_permutation(self.num_keypoints, self.flip_pairs)


@dataclass(frozen=True)
class DatasetSchema:
    """All categories of a file, in class-index order (sorted by category id)."""

    categories: tuple[CategorySchema, ...]

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.categories]

    @property
    def category_ids(self) -> list[int]:
        return [c.category_id for c in self.categories]

    @property
    def num_keypoints_per_class(self) -> list[int]:
        return [c.num_keypoints for c in self.categories]

    @property
    def max_keypoints(self) -> int:
        return max(self.num_keypoints_per_class)

    def shared_names(self) -> dict[str, list[int]]:
        """Category names held by several categories, with their ids (classes are matched to categories by
        name, so a model cannot tell these apart)."""
        ids: dict[str, list[int]] = {}
        for c in self.categories:
            ids.setdefault(c.name, []).append(c.category_id)
        return {name: found for name, found in ids.items() if len(found) > 1}

    def class_index(self, category_id: int) -> int:
        """The class index of a COCO category id. Raises ``KeyError`` for an unknown id."""
        for index, category in enumerate(self.categories):
            if category.category_id == category_id:
                return index
        raise KeyError(f"unknown category id {category_id}; known ids are {self.category_ids}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (saved with training runs)."""
        return {
            "categories": [
                {
                    "id": c.category_id,
                    "name": c.name,
                    "keypoints": list(c.keypoint_names),
                    "skeleton": [list(e) for e in c.skeleton],
                    "flip_pairs": [list(p) for p in c.flip_pairs],
                }
                for c in self.categories
            ]
        }


def _keypoint_names(category: Mapping[str, Any], annotations: Sequence[Any], where: str) -> list[str]:
    names = category.get("keypoints")
    if names is not None:
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise CocoFormatError(f"{where}: 'keypoints' must be a list of non-empty keypoint names")
        if len(set(names)) != len(names):
            raise CocoFormatError(f"{where}: keypoint names must be unique, got {names}")
        if not names:
            raise CocoFormatError(
                f"{where}: 'keypoints' is empty; every category needs at least one keypoint"
            )
        return list(names)
    lengths = {
        len(a["keypoints"])
        for a in annotations
        if isinstance(a, Mapping)
        and a.get("category_id") == category["id"]
        and isinstance(a.get("keypoints"), list)
    }
    if len(lengths) != 1 or next(iter(lengths)) == 0 or next(iter(lengths)) % 3:
        found = sorted(lengths) if lengths else "no annotations with keypoints"
        raise CocoFormatError(
            f"{where}: no 'keypoints' name list, and the keypoint count cannot be inferred from its annotations "
            f"(keypoints array lengths: {found}); add the 'keypoints' list to the category"
        )
    return [f"kp{i}" for i in range(next(iter(lengths)) // 3)]


def _skeleton(category: Mapping[str, Any], num_keypoints: int, where: str) -> tuple[tuple[int, int], ...]:
    raw = category.get("skeleton", [])
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise CocoFormatError(
            f"{where}: 'skeleton' must be a list of [a, b] pairs (1-based keypoint indices)"
        )
    edges: list[tuple[int, int]] = []
    for edge in raw:
        if not (isinstance(edge, list) and len(edge) == 2 and all(is_int(i) for i in edge)):
            raise CocoFormatError(f"{where}: skeleton edge {edge!r} must be a pair of integers")
        if not all(1 <= i <= num_keypoints for i in edge):
            raise CocoFormatError(
                f"{where}: skeleton edge {edge!r} is out of range; indices are 1-based in 1..{num_keypoints}"
            )
        edges.append((edge[0] - 1, edge[1] - 1))
    return tuple(edges)


def _flip_spec_for(
    flip_pairs: Mapping[int | str, FlipPairSpec] | None, category_id: int, name: str
) -> FlipPairSpec | None:
    if not flip_pairs:
        return None
    for key in (category_id, str(category_id), name, ALL_CATEGORIES):  # JSON gives ids as strings
        if key in flip_pairs:
            return flip_pairs[key]
    return None


def infer_schema(
    coco: Mapping[str, Any],
    source: str = "<coco>",
    flip_pairs: Mapping[int | str, FlipPairSpec] | None = None,
    side_tokens: Sequence[tuple[str, str]] = (),
) -> DatasetSchema:
    """Infer the schema from a COCO keypoint dict.

    Args:
        coco: the parsed JSON (``categories`` and, when a category lacks its ``keypoints`` list, ``annotations``).
        source: the file name used in error messages.
        flip_pairs: explicit flip pairs by category id (an int or its string, as JSON keys are), category name
            or ``"*"`` (all categories); index or name pairs. Categories without an entry get pairs inferred
            from keypoint names.
        side_tokens: extra side-token pairs for inference, e.g. ``[("lf", "rf"), ("lh", "rh")]``.

    Raises:
        CocoFormatError: missing or malformed categories, naming the category at fault.
    """
    categories = coco.get("categories")
    if not isinstance(categories, list) or not categories:
        raise CocoFormatError(f"{source}: 'categories' must be a non-empty list")
    annotations = coco.get("annotations") if isinstance(coco.get("annotations"), list) else []
    seen_ids: set[int] = set()
    out: list[CategorySchema] = []
    for position, category in enumerate(categories):
        where = f"{source}: category #{position}"
        if not isinstance(category, Mapping):
            raise CocoFormatError(f"{where}: must be an object")
        for key in ("id", "name"):
            if key not in category:
                raise CocoFormatError(f"{where}: missing key '{key}'")
        if not is_coco_id(category["id"]):
            raise CocoFormatError(f"{where}: 'id' must be {ID_EXPECTED}, got {short_repr(category['id'])}")
        if not isinstance(category["name"], str) or not category["name"].strip():
            raise CocoFormatError(f"{where}: 'name' must be a non-empty string, got {short_repr(category['name'])}")
        where = f"{source}: category id {category['id']} ({short_repr(category['name'])})"
        if category["id"] in seen_ids:
            raise CocoFormatError(f"{where}: duplicate category id")
        seen_ids.add(category["id"])
        names = _keypoint_names(category, annotations, where)
        skeleton = _skeleton(category, len(names), where)
        spec = _flip_spec_for(flip_pairs, category["id"], str(category["name"]))
        try:
            pairs = (
                resolve_flip_pairs(names, spec) if spec is not None else infer_flip_pairs(names, side_tokens)
            )
        except ValueError as err:
            raise CocoFormatError(f"{where}: {err}") from err
        out.append(
            CategorySchema(
                category_id=category["id"],
                name=str(category["name"]),
                keypoint_names=tuple(names),
                skeleton=skeleton,
                flip_pairs=tuple(pairs),
            )
        )
    out.sort(key=lambda c: c.category_id)
    return DatasetSchema(categories=tuple(out))
