"""``search``: the evaluation plumbing (an oracle model scores AP 1), the knobs reaching the network."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rfkp.api import RFDETRKeypoint
from rfkp.detections import KeypointDetections
from rfkp.variants import tiny
from tests.conftest import shared_path
from trainer.data.targets import COCO_PIXEL_OFFSET
from trainer.nas import search as search_module
from trainer.nas.search import SearchResult, measure_latency, search
from trainer.nas.space import ArchChoice


@pytest.fixture(autouse=True)
def _one_cpu_thread():
    """Intra-op threads spin badly on a shared, busy CPU; one thread keeps these runs short and steady."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _mouse() -> tuple[Path, Path, dict]:
    val = shared_path("data", "mirror-mouse", "val.json")
    return val, val.parent / "images", json.loads(val.read_text())


def _mouse_config(coco: dict, **overrides: Any) -> Any:
    cats = sorted(coco["categories"], key=lambda c: c["id"])
    return tiny(num_classes=len(cats), num_keypoints_per_class=[len(c["keypoints"]) for c in cats],
                class_names=[c["name"] for c in cats], keypoint_names=[c["keypoints"] for c in cats],
                **overrides)  # fmt: skip


class OracleModel:
    """Stands in for ``RFDETRKeypoint``: its 'network' returns the image id, its postprocess the ground truth.

    Records every preprocess resolution and every set of knobs given to ``forward_raw``.
    """

    def __init__(self, coco: dict) -> None:
        self.config = _mouse_config(coco)
        self.device = torch.device("cpu")
        self.id_by_file = {im["file_name"]: im["id"] for im in coco["images"]}
        self.size_by_id = {im["id"]: (im["height"], im["width"]) for im in coco["images"]}
        self.class_by_category = {
            c["id"]: i for i, c in enumerate(sorted(coco["categories"], key=lambda c: c["id"]))
        }
        self.anns = coco["annotations"]
        self.preprocessed: list[tuple[int, int]] = []
        self.forwards: list[dict[str, int]] = []

    def preprocess(self, paths: list[str], resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.preprocessed.append((resolution, len(paths)))
        ids = torch.tensor([self.id_by_file[Path(p).name] for p in paths], dtype=torch.float32)
        sizes = torch.tensor([self.size_by_id[int(i)] for i in ids])
        return ids[:, None, None, None].expand(-1, 3, resolution, resolution), sizes

    def forward_raw(self, x: torch.Tensor, **arch: int) -> dict[str, torch.Tensor]:
        self.forwards.append(arch)
        return {"ids": x[:, 0, 0, 0]}

    def postprocess(self, raw: dict, sizes: torch.Tensor, threshold: float) -> list[KeypointDetections]:
        return [self._truth(int(i), tuple(s.tolist())) for i, s in zip(raw["ids"], sizes)]

    def _truth(self, image_id: int, size: tuple[int, int]) -> KeypointDetections:
        anns = [a for a in self.anns if a["image_id"] == image_id]
        k = self.config.max_keypoints
        kps = np.array([np.reshape(a["keypoints"], (-1, 3))[:, :2] for a in anns]).reshape(-1, k, 2)
        xyxy = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]).reshape(-1, 4)
        return KeypointDetections(
            xyxy=xyxy, class_id=[self.class_by_category[a["category_id"]] for a in anns],
            score=np.full(len(anns), 0.9), keypoints=kps + COCO_PIXEL_OFFSET,
            covariance=np.tile(np.eye(2) * 4.0, (len(anns), k, 1, 1)), findable=np.ones((len(anns), k)),
            visible=np.ones((len(anns), k)), class_names=self.config.class_names,
            keypoint_names=self.config.keypoint_names, skeletons=self.config.skeletons, image_size=size,
        )  # fmt: skip


def test_search_scores_perfect_detections_1_and_preprocesses_once_per_resolution(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    val, images, coco = _mouse()
    monkeypatch.setattr(search_module, "PREDICT_BATCH", 5)  # 12 images: batches of 5, 5, 2
    model = OracleModel(coco)
    choices = [ArchChoice(256, 16, 2, 2, 20), ArchChoice(192, 16, 1, 1, 5), ArchChoice(256, 16, 1, 2, 10)]
    oracle: Any = model
    results = search(oracle, val, images, choices, latency_runs=3, warmup=2, progress=False)
    assert [r.choice for r in results] == choices  # input order, though grouped by resolution inside
    for r in results:
        assert r.ap == pytest.approx(1.0) and r.ap50 == pytest.approx(1.0) and r.ar == pytest.approx(1.0)
        assert r.coverage_2sigma == pytest.approx(1.0)  # zero error lies inside every ellipse
        assert r.ap_per_category == {"mirror_mouse_side": pytest.approx(1.0),
                                     "mirror_mouse_bottom": pytest.approx(1.0)}  # fmt: skip
        assert r.num_detections == len(coco["annotations"])
        assert 0 < r.latency_ms_median <= r.latency_ms_p90 and r.device.startswith("CPU")
    assert model.preprocessed == [(256, 5), (256, 5), (256, 2), (192, 5), (192, 5), (192, 2)]
    # per choice: 3 evaluation batches, then 2 warm-up and 3 timed runs, all with that choice's knobs
    expected = [c.arch_kwargs() for c in (choices[0], choices[2], choices[1]) for _ in range(3 + 2 + 3)]
    assert model.forwards == expected


def test_search_rejects_bad_choices_and_data_before_running(tmp_path: Path) -> None:
    val, images, coco = _mouse()
    model = OracleModel(coco)
    oracle: Any = model
    with pytest.raises(ValueError, match="dec_layers must be in"):
        search(oracle, val, images, [ArchChoice(256, 16, 2, 3, 20)], progress=False)
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        search(oracle, val, tmp_path / "none", [ArchChoice(256, 16, 2, 2, 20)], progress=False)
    assert model.forwards == []


def test_knobs_reach_the_network_and_latency_is_measured() -> None:
    val, images, coco = _mouse()
    model = RFDETRKeypoint.from_config(_mouse_config(coco, resolution=128), device="cpu")
    full = ArchChoice.full(model.config)
    few = ArchChoice(96, 16, 1, 1, 5)
    results = search(model, coco, images, [full, few], latency_runs=2, warmup=1, progress=False)
    by_choice = {r.choice: r for r in results}
    assert all(isinstance(r, SearchResult) for r in results)
    # 5 queries x 2 classes at most per image; the full model keeps more (random weights score above 0.001)
    assert 0 < by_choice[few].num_detections <= 12 * 5 * 2 < by_choice[full].num_detections
    # the full choice detects what predict() detects at the configured size
    paths = [str(images / im["file_name"]) for im in coco["images"]]
    assert sum(len(d) for d in model.predict(paths, threshold=0.001)) == by_choice[full].num_detections
    x, sizes = model.preprocess([str(images / coco["images"][0]["file_name"])], 128)
    median, p90 = measure_latency(model, x, sizes, full, runs=3, warmup=1, threshold=0.5)
    assert 0 < median <= p90
    with pytest.raises(ValueError, match="runs >= 1"):
        measure_latency(model, x, sizes, full, runs=0, warmup=1, threshold=0.5)
