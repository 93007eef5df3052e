"""``KeypointDetections``: the public result type, one per image."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rfkp.config import COCO_PIXEL_OFFSET

__all__ = ["COVARIANCE_KEY", "FINDABLE_KEY", "VISIBLE_KEY", "KeypointDetections"]

#: Extra fields of COCO result rows (``to_coco_results``), read by ``rfkp eval --detections``.
COVARIANCE_KEY = "keypoint_covariance"
FINDABLE_KEY = "keypoint_findable"
VISIBLE_KEY = "keypoint_visible"

_JSON_INF = float(np.finfo(np.float64).max)
_ARRAY_FIELDS = ("xyxy", "class_id", "score", "keypoints", "covariance", "findable", "visible")
_DTYPES = {
    "xyxy": np.float32,
    "class_id": np.int64,
    "score": np.float32,
    "keypoints": np.float32,
    "covariance": np.float32,
    "findable": np.float32,
    "visible": np.float32,
}


def _strict_json_lists(array: np.ndarray) -> list[Any]:
    """Nested lists that strict JSON can hold: NaN as None, +-infinity as +-the largest float64 (finite in JSON,
    infinite again once ``from_dict`` casts it to float32)."""
    if array.dtype.kind != "f":
        return array.tolist()
    values = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=_JSON_INF, neginf=-_JSON_INF)
    return np.where(np.isnan(array), None, values.astype(object)).tolist()


@dataclass(eq=False)
class KeypointDetections:
    """Keypoint detections of one image, all in pixel coordinates of the source image.

    Coordinates: origin at the top-left corner of the image, x right, y down, pixel centres at +0.5 (the
    centre of the top-left pixel is (0.5, 0.5)) for models rfkp trained; an rfdetr checkpoint's keypoints keep
    the convention it was trained on, COCO's pixel indices (see ``coco_keypoint_offset``); for an image with EXIF orientation, of the image as displayed
    (rotated as the orientation says). Boxes lie within the image; keypoints are not clamped to it (a
    keypoint the model places outside, e.g. of a partly visible object, keeps its position). N detections,
    K = max keypoint count over classes.

    Attributes:
        xyxy: (N, 4) float32 boxes (x1, y1, x2, y2).
        class_id: (N,) int64 class index into ``class_names``.
        score: (N,) float32 detection score in [0, 1] (already rescored by keypoint uncertainty).
        keypoints: (N, K, 2) float32 keypoint (x, y).
        covariance: (N, K, 2, 2) float32 keypoint covariance in pixels squared.
        findable: (N, K) float32 probability that the keypoint is in the image (visible or occluded).
        visible: (N, K) float32 probability that the keypoint is visible.
        class_names: name of each class index.
        keypoint_names: per class index, its keypoint names (an empty list for classes without keypoints);
            class c has K_c = len(keypoint_names[c]) keypoints, occupying slots 0..K_c-1.
        skeletons: per class index, its skeleton edges as 0-based keypoint index pairs.
        image_size: (H, W) of the source image in pixels.
        category_ids: the COCO category id of each class index, when the model knows them (trained by
            ``rfkp train`` on a COCO file); None: the class index is used.
        coco_keypoint_offset: what ``keypoints`` exceed COCO keypoint coordinates (pixel indices) by, as the
            model was trained: 0.5 for rfkp-trained models (the convention above), 0.0 for rfdetr checkpoints,
            whose keypoints are in COCO's convention. ``to_coco_results`` subtracts it.

    Inactive slots: for a detection of class c, slots K_c..K-1 do not exist and are NaN in ``keypoints``,
    ``covariance``, ``findable`` and ``visible`` (validated on construction).
    """

    xyxy: np.ndarray
    class_id: np.ndarray
    score: np.ndarray
    keypoints: np.ndarray
    covariance: np.ndarray
    findable: np.ndarray
    visible: np.ndarray
    class_names: list[str]
    keypoint_names: list[list[str]]
    skeletons: list[list[tuple[int, int]]]
    image_size: tuple[int, int]
    category_ids: list[int] | None = None
    coco_keypoint_offset: float = COCO_PIXEL_OFFSET

    def __post_init__(self) -> None:
        for name in _ARRAY_FIELDS:
            value = np.asarray(getattr(self, name))
            if name == "class_id" and value.size and value.dtype.kind not in "iu":
                if value.dtype.kind != "f" or not np.array_equal(value, np.round(value)):
                    raise ValueError(f"class_id must hold integers, got dtype {value.dtype}")
            setattr(self, name, np.ascontiguousarray(value, dtype=_DTYPES[name]))
        self.class_names = [str(n) for n in self.class_names]
        self.keypoint_names = [[str(n) for n in names] for names in self.keypoint_names]
        self.skeletons = [[(int(a), int(b)) for a, b in edges] for edges in self.skeletons]
        if len(self.image_size) != 2 or min(int(s) for s in self.image_size) <= 0:
            raise ValueError(f"image_size must be (H, W) with positive sizes, got {self.image_size}")
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        if self.category_ids is not None:
            ids = list(self.category_ids) if isinstance(self.category_ids, (list, tuple, np.ndarray)) else None
            if ids is None or not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in ids):
                raise ValueError(f"category_ids must be a list of integers, got {self.category_ids!r:.100}")
            if len(set(ids)) != len(ids):  # two classes would be written as one COCO category
                raise ValueError(f"category_ids must be distinct, got {ids}")
            self.category_ids = [int(i) for i in ids]
        offset = self.coco_keypoint_offset
        if isinstance(offset, bool) or not isinstance(offset, (int, float, np.number)) or not np.isfinite(offset):
            raise ValueError(f"coco_keypoint_offset must be a finite number, got {offset!r:.100}")
        self.coco_keypoint_offset = float(offset)
        self._validate_metadata()
        self._validate_shapes()
        self._validate_values()

    def _validate_metadata(self) -> None:
        num_classes = len(self.class_names)
        if self.category_ids is not None and len(self.category_ids) != num_classes:
            raise ValueError(f"category_ids must have one entry per class ({num_classes}), got {self.category_ids}")
        for name in ("keypoint_names", "skeletons"):
            if len(getattr(self, name)) != num_classes:
                raise ValueError(
                    f"{name} must have one entry per class ({num_classes}), got {len(getattr(self, name))}"
                )
        for c, edges in enumerate(self.skeletons):
            k_c = len(self.keypoint_names[c])
            for a, b in edges:
                if not (0 <= a < k_c and 0 <= b < k_c) or a == b:
                    raise ValueError(
                        f"skeleton edge ({a}, {b}) of class {c} ({self.class_names[c]!r}) is not a pair of "
                        f"distinct keypoint indices in [0, {k_c})"
                    )

    def _validate_shapes(self) -> None:
        n = self.xyxy.shape[0] if self.xyxy.ndim else -1
        k = max((len(names) for names in self.keypoint_names), default=0)
        expected = {
            "xyxy": (n, 4),
            "class_id": (n,),
            "score": (n,),
            "keypoints": (n, k, 2),
            "covariance": (n, k, 2, 2),
            "findable": (n, k),
            "visible": (n, k),
        }
        for name, shape in expected.items():
            got = getattr(self, name).shape
            if got != shape:
                raise ValueError(
                    f"{name} must have shape {shape} (N={n}, K={k} = max keypoints over classes), got {got}"
                )

    def _validate_values(self) -> None:
        if self.class_id.size and (self.class_id.min() < 0 or self.class_id.max() >= len(self.class_names)):
            raise ValueError(
                f"class_id values must lie in [0, {len(self.class_names)}), got "
                f"[{self.class_id.min()}, {self.class_id.max()}]"
            )
        if not np.isfinite(self.xyxy).all():
            raise ValueError("xyxy must be finite")
        if ((self.xyxy[:, 2] < self.xyxy[:, 0]) | (self.xyxy[:, 3] < self.xyxy[:, 1])).any():
            raise ValueError("xyxy boxes must have x2 >= x1 and y2 >= y1")
        if self.score.size and not ((self.score >= 0) & (self.score <= 1)).all():
            raise ValueError("score must lie in [0, 1]")
        active = self.active_mask()
        for name in ("keypoints", "covariance", "findable", "visible"):
            values = getattr(self, name)
            flat = values.reshape(*values.shape[:2], int(np.prod(values.shape[2:])))
            if not np.isnan(flat[~active]).all():
                raise ValueError(f"{name}: inactive keypoint slots (index >= the class's K) must be NaN")
            if np.isnan(flat[active]).any():
                raise ValueError(f"{name}: active keypoint slots must not be NaN")
            if name != "covariance" and np.isinf(flat[active]).any():  # an infinite variance is a valid answer
                raise ValueError(f"{name}: active keypoint slots must be finite")
        for name in ("findable", "visible"):
            values = getattr(self, name)[active]
            if values.size and not ((values >= 0) & (values <= 1)).all():
                raise ValueError(f"{name} probabilities must lie in [0, 1]")

    def active_mask(self) -> np.ndarray:
        """(N, K) bool: True where the keypoint slot exists for the detection's class."""
        counts = np.array([len(names) for names in self.keypoint_names], dtype=np.int64)
        k = self.keypoints.shape[1]
        per_detection = counts[self.class_id] if len(self) else np.zeros(0, np.int64)
        return np.arange(k)[None, :] < per_detection[:, None]

    def __len__(self) -> int:
        return int(self.xyxy.shape[0])

    def __repr__(self) -> str:
        """One line: the count, image size, detections per class and the score range (the arrays are long)."""
        counts = np.bincount(self.class_id, minlength=len(self.class_names)) if len(self) else []
        per_class = ", ".join(f"{self.class_names[c]}: {n}" for c, n in enumerate(counts) if n)
        scores = f", scores {self.score.min():.3f}..{self.score.max():.3f}" if len(self) else ""
        h, w = self.image_size
        return f"KeypointDetections({len(self)} in {w}x{h}{' (' + per_class + ')' if per_class else ''}{scores})"

    def __getitem__(self, index: int | slice | np.ndarray | Sequence[int]) -> KeypointDetections:
        """Select detections by an int (kept as N=1), a slice, a (N,) bool mask or a 1-D index array (numpy or
        torch). The result owns copies of its arrays: changing it leaves these detections as they are."""
        if hasattr(index, "ndim") and index.ndim == 0 and not isinstance(index, (bool, np.bool_)):
            index = index.item()  # a 0-d array or tensor is its one value
        if isinstance(index, (bool, np.bool_)):
            raise IndexError("a single bool is not a detection index; select with an int or a (N,) bool mask")
        if isinstance(index, (int, np.integer)):
            position = int(index)
            if not -len(self) <= position < len(self):
                raise IndexError(f"detection index {position} out of range for {len(self)} detections")
            index = slice(position % len(self), position % len(self) + 1)
        elif not isinstance(index, slice):
            index = np.asarray(index.cpu() if hasattr(index, "cpu") else index)
            if index.ndim != 1:
                raise IndexError(f"index arrays must be 1-D, got shape {index.shape}")
            if index.dtype == bool:
                if index.shape != (len(self),):
                    raise IndexError(f"bool mask must have shape ({len(self)},), got {index.shape}")
            elif index.size == 0 or index.dtype.kind in "iu":
                index = index.astype(np.int64)
            else:
                raise IndexError(f"index arrays must be integer or bool, got {index.dtype}")
        arrays = {name: getattr(self, name)[index].copy() for name in _ARRAY_FIELDS}
        return KeypointDetections(**arrays, **self._metadata())

    def _metadata(self) -> dict[str, Any]:
        return {
            "class_names": list(self.class_names),
            "keypoint_names": [list(names) for names in self.keypoint_names],
            "skeletons": [list(edges) for edges in self.skeletons],
            "image_size": self.image_size,
            "category_ids": None if self.category_ids is None else list(self.category_ids),
            "coco_keypoint_offset": self.coco_keypoint_offset,
        }

    def num_keypoints(self, class_id: int) -> int:
        """K_c, the number of keypoints of class ``class_id``."""
        if not 0 <= class_id < len(self.class_names):
            raise ValueError(f"class_id {class_id} out of range for {len(self.class_names)} classes")
        return len(self.keypoint_names[class_id])

    @classmethod
    def empty(
        cls,
        *,
        class_names: Sequence[str],
        keypoint_names: Sequence[Sequence[str]],
        image_size: tuple[int, int],
        skeletons: Sequence[Sequence[tuple[int, int]]] | None = None,
    ) -> KeypointDetections:
        """No detections (N = 0) with the given metadata; ``skeletons`` defaults to no edges."""
        k = max((len(names) for names in keypoint_names), default=0)
        return cls(
            xyxy=np.zeros((0, 4), np.float32),
            class_id=np.zeros(0, np.int64),
            score=np.zeros(0, np.float32),
            keypoints=np.zeros((0, k, 2), np.float32),
            covariance=np.zeros((0, k, 2, 2), np.float32),
            findable=np.zeros((0, k), np.float32),
            visible=np.zeros((0, k), np.float32),
            class_names=list(class_names),
            keypoint_names=[list(names) for names in keypoint_names],
            skeletons=[list(e) for e in skeletons] if skeletons is not None else [[] for _ in class_names],
            image_size=image_size,
        )

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON-serialisable dict of lists, NaN written as None / null and infinities (a covariance that
        overflowed) as +-1.797e308; inverse of :meth:`from_dict` (None read as NaN, 1.797e308 as infinity)."""
        out: dict[str, Any] = {name: _strict_json_lists(getattr(self, name)) for name in _ARRAY_FIELDS}
        out["class_names"] = list(self.class_names)
        out["keypoint_names"] = [list(names) for names in self.keypoint_names]
        out["skeletons"] = [[[a, b] for a, b in edges] for edges in self.skeletons]
        out["image_size"] = list(self.image_size)
        out["category_ids"] = None if self.category_ids is None else list(self.category_ids)
        out["coco_keypoint_offset"] = self.coco_keypoint_offset
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KeypointDetections:
        """Rebuild from :meth:`to_dict` output (None read back as NaN)."""
        keys = (*_ARRAY_FIELDS, "class_names", "keypoint_names", "skeletons", "image_size")
        missing = [key for key in keys if key not in data]
        if missing:
            raise ValueError(f"detections dict lacks keys {missing}")
        k = max((len(names) for names in data["keypoint_names"]), default=0)
        trailing = {"xyxy": (4,), "keypoints": (k, 2), "covariance": (k, 2, 2), "findable": (k,), "visible": (k,)}
        arrays = {}
        for name in _ARRAY_FIELDS:
            with np.errstate(over="ignore"):  # the written +-1.797e308 become the infinities they stand for
                array = np.array(data[name], dtype=_DTYPES[name])
            arrays[name] = array.reshape(0, *trailing.get(name, ())) if array.size == 0 else array
        return cls(
            **arrays,
            class_names=list(data["class_names"]),
            keypoint_names=[list(names) for names in data["keypoint_names"]],
            skeletons=[[(int(a), int(b)) for a, b in edges] for edges in data["skeletons"]],
            image_size=(int(data["image_size"][0]), int(data["image_size"][1])),
            category_ids=data.get("category_ids"),
            coco_keypoint_offset=COCO_PIXEL_OFFSET if data.get("coco_keypoint_offset") is None
            else data["coco_keypoint_offset"],  # validated on construction
        )

    def to_coco_results(
        self,
        image_id: int,
        category_ids: Sequence[int] | Mapping[int, int] | None = None,
        visible_threshold: float = 0.5,
        findable_threshold: float = 0.5,
        uncertainty: bool = True,
    ) -> list[dict[str, Any]]:
        """COCO results rows, one per detection.

        Each row: ``image_id``, ``category_id`` (``category_ids[class_id]``; by default the model's own
        ``self.category_ids``, else the class index), ``bbox``
        ``[x, y, w, h]``, ``score`` and, for classes with keypoints, ``keypoints`` ``[x1, y1, v1, ...]`` over
        the class's K_c keypoints only, where ``v = 2`` if visible >= ``visible_threshold``, else 1 if
        findable >= ``findable_threshold``, else 0. Rows of classes without keypoints have no ``keypoints``
        key. Boxes are unchanged (COCO boxes also put the image's top-left corner at 0); keypoints are moved
        to COCO's pixel-index convention by subtracting ``coco_keypoint_offset``. With ``uncertainty`` (the
        default) keypoint rows also carry ``keypoint_covariance`` (K_c x 2 x 2, pixels^2),
        ``keypoint_findable`` and ``keypoint_visible`` (K_c probabilities): the fields `rfkp eval
        --detections` measures calibration from; pycocotools ignores them.
        """
        if isinstance(image_id, (bool, np.bool_)) or not isinstance(image_id, (int, np.integer)):
            raise ValueError(f"image_id must be an integer (COCO's image ids are), got {image_id!r:.100}")
        image_id = int(image_id)  # a numpy integer would not survive json.dumps
        if category_ids is None:
            category_ids = self.category_ids
        rows = []
        for i in range(len(self)):
            c = int(self.class_id[i])
            try:
                category = category_ids[c] if category_ids is not None else c
            except (KeyError, IndexError) as err:
                raise ValueError(f"category_ids has no entry for class index {c}") from err
            if isinstance(category, (bool, np.bool_)) or not isinstance(category, (int, np.integer)):
                raise ValueError(f"category_ids[{c}] must be an integer, got {category!r:.100}")
            category = int(category)
            x1, y1, x2, y2 = (float(v) for v in self.xyxy[i])
            row: dict[str, Any] = {
                "image_id": image_id,
                "category_id": category,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": float(self.score[i]),
            }
            k_c = len(self.keypoint_names[c])
            if k_c:
                flags = np.where(
                    self.visible[i, :k_c] >= visible_threshold,
                    2,
                    np.where(self.findable[i, :k_c] >= findable_threshold, 1, 0),
                )
                row["keypoints"] = [
                    value
                    for (x, y), v in zip((self.keypoints[i, :k_c] - self.coco_keypoint_offset).tolist(),
                                         flags.tolist())
                    for value in (x, y, int(v))
                ]
                if uncertainty:
                    row[COVARIANCE_KEY] = self.covariance[i, :k_c].astype(np.float64).tolist()
                    row[FINDABLE_KEY] = self.findable[i, :k_c].astype(np.float64).tolist()
                    row[VISIBLE_KEY] = self.visible[i, :k_c].astype(np.float64).tolist()
            rows.append(row)
        return rows

    def to_supervision(self, visible_threshold: float = 0.5) -> Any:
        """``supervision.KeyPoints`` view of these detections (needs ``pip install supervision``).

        ``xy`` is ``keypoints`` with inactive slots at (0, 0) (supervision's "missing" convention),
        ``keypoint_confidence`` the findable probability (0 for inactive slots), ``detection_confidence`` the
        score, ``visible`` ``visible >= visible_threshold``; ``data`` holds ``xyxy``, ``class_name``,
        ``covariance`` (NaN in inactive slots) and ``visible_probability``.
        """
        try:
            import supervision
        except ImportError as err:
            raise ImportError(
                "KeypointDetections.to_supervision needs the supervision package: pip install supervision"
            ) from err
        active = self.active_mask()
        return supervision.KeyPoints(
            xy=np.where(active[..., None], self.keypoints, 0.0).astype(np.float32),
            class_id=self.class_id.astype(int),
            keypoint_confidence=np.where(active, self.findable, 0.0).astype(np.float32),
            detection_confidence=self.score.copy(),
            visible=active & (np.nan_to_num(self.visible, nan=0.0) >= visible_threshold),
            data={
                "xyxy": self.xyxy.copy(),
                "class_name": np.array([self.class_names[c] for c in self.class_id], dtype=object),
                "covariance": self.covariance.copy(),
                "visible_probability": self.visible.copy(),
            },
        )
