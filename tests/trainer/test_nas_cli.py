"""``rfkp search`` end to end on a tiny random-initialised model, and its errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from rfkp.api import RFDETRKeypoint
from rfkp.checkpoint import read_checkpoint
from rfkp.cli.main import main as rfkp_main
from rfkp.variants import tiny
from tests.conftest import shared_path
from trainer.nas.pareto import CSV_COLUMNS


@pytest.fixture(autouse=True)
def _one_cpu_thread():
    """Intra-op threads spin badly on a shared, busy CPU; one thread keeps these runs short and steady."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _setup(tmp_path: Path, dtype: torch.dtype | None = None) -> tuple[list[str], dict[str, Any]]:
    """The common arguments (tiny 128 px model on the mirror-mouse validation set, its checkpoint written in
    ``dtype``) and the ground truth."""
    val = shared_path("data", "mirror-mouse", "val.json")
    coco = json.loads(val.read_text())
    cats = sorted(coco["categories"], key=lambda c: c["id"])
    cfg = tiny(
        resolution=128,
        num_classes=len(cats),
        num_keypoints_per_class=[len(c["keypoints"]) for c in cats],
        class_names=[c["name"] for c in cats],
        keypoint_names=[c["keypoints"] for c in cats],
    )
    weights = tmp_path / "tiny.pth"
    RFDETRKeypoint.from_config(cfg, device="cpu").save_checkpoint(weights, dtype=dtype)
    argv = ["search", "--weights", str(weights), "--data", str(val), "--images", str(val.parent / "images")]
    return [*argv, "--out", str(tmp_path / "out"), "--device", "cpu"], coco


def test_search_cli_writes_the_results(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv, coco = _setup(tmp_path)
    axes = ["--resolutions", "96,128", "--patch-sizes", "16", "--windows", "2", "--dec-layers", "2"]
    assert (
        rfkp_main(
            [*argv, *axes, "--num-queries", "5,20", "--max-configs", "3", "--runs", "2", "--warmup", "1"]
        )
        == 0
    )
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["pareto.csv", "pareto.png", "search.csv", "search.json"]
    with (out / "search.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 3
    keys = {(int(r["resolution"]), int(r["num_queries"])) for r in rows}
    assert (128, 20) in keys and keys <= {(96, 5), (96, 20), (128, 5), (128, 20)}  # the full model is kept
    with (out / "pareto.csv").open(newline="") as f:
        front = list(csv.DictReader(f))
    assert front and all(r["pareto"] == "True" for r in front)
    assert len(front) == sum(r["pareto"] == "True" for r in rows)
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    meta = json.loads((out / "search.json").read_text())
    assert meta["device"].startswith("CPU") and meta["torch"] and meta["date"] and meta["cpu_threads"] == 1
    assert meta["command"].startswith("rfkp search --weights") and "--max-configs 3" in meta["command"]
    assert meta["space"] == {"resolutions": [96, 128], "patch_sizes": [16], "num_windows": [2],
                             "dec_layers": [2], "num_queries": [5, 20]}  # fmt: skip
    assert len(meta["results"]) == 3 and len(meta["pareto"]) == len(front)
    for r in meta["results"]:
        assert r["num_detections"] <= len(coco["images"]) * r["num_queries"] * 2
        assert set(r["ap_per_category"]) == {"mirror_mouse_side", "mirror_mouse_bottom"}
    table = capsys.readouterr().out
    assert "ms med" in table and "wrote search.csv" in table
    assert len(table.strip().splitlines()) == 2 + len(front)


def test_search_cli_errors_exit_1_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv, _ = _setup(tmp_path)
    cases = [
        (["--resolutions", "100"], "resolution 100 is not a multiple of patch_size x num_windows"),
        (["--resolutions", "8192"], "resolution 8192 is above the largest supported input side 4096"),
        (["--budget-ms", "5", "--save-choice", "picked/"], "--save-choice picked/ names a folder"),
        (["--budget-ms", "5", "--save-choice", "_OUT_"], "is --out"),
        (["--dec-layers", "3"], "dec_layers 3 exceeds the model's 2 decoder layers"),
        (["--num-queries", "40"], "num_queries 40 exceeds the model's 20 queries"),
        (["--sigmas", str(tmp_path / "none.json")], "sigmas file not found"),
    ]
    out = argv[argv.index("--out") + 1]
    for extra, message in cases:
        extra = [out if e == "_OUT_" else e for e in extra]
        assert rfkp_main([*argv, *extra]) == 1, extra
        assert message in capsys.readouterr().err
    weights = argv.index("--weights") + 1
    missing = list(argv)
    missing[weights] = str(tmp_path / "missing.pth")
    assert rfkp_main(missing) == 1
    assert "rfkp search: error: checkpoint not found" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    broken = list(argv)
    broken[argv.index("--data") + 1] = str(bad)
    assert rfkp_main([*broken, "--resolutions", "128", "--dec-layers", "1", "--num-queries", "5"]) == 1
    assert "bad.json: malformed JSON" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [("--runs", "0", "expected an integer >= 1, got 0"), ("--warmup", "-1", "expected an integer >= 0, got -1"),
     ("--max-configs", "0", "expected an integer >= 1, got 0"), ("--runs", "2.5", "expected an integer, got '2.5'"),
     ("--sigmas", " ", "expected a path, got an empty string"),
     ("--resolutions", "128,abc", "expected comma-separated integers >= 1, got '128,abc'"),
     ("--num-queries", "0", "expected comma-separated integers >= 1, got '0'")],
)
def test_search_counts_are_checked_while_parsing(tmp_path: Path, capsys: pytest.CaptureFixture, option: str,
                                                 value: str, message: str) -> None:
    argv = ["search", "--weights", str(tmp_path / "w.pth"), "--data", str(tmp_path / "v.json"), "--images",
            str(tmp_path), "--out", str(tmp_path / "out"), option, value]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        rfkp_main(argv)
    assert exit_info.value.code == 2
    assert f"rfkp search: error: argument {option}: {message}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_search_outputs_and_threshold_are_checked_before_the_search(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv, coco = _setup(tmp_path)
    small = ["--resolutions", "128", "--dec-layers", "1", "--num-queries", "5", "--runs", "1", "--warmup", "0"]
    taken = tmp_path / "taken"
    taken.write_text("a file")
    data_copy = tmp_path / "copy" / "search.json"
    data_copy.parent.mkdir()
    data_copy.write_text(json.dumps(coco))
    images = argv[argv.index("--images") + 1]
    for extra, message in [
        (["--out", str(taken)], f"--out {taken} is a file; give a folder"),
        (["--out", str(taken / "sub")], f"--out {taken / 'sub'}: {taken} is a file, not a folder"),
        (["--out", str(data_copy.parent), "--data", str(data_copy), "--images", images],
         f"--out {data_copy} is also --data: it would be overwritten"),
    ]:
        assert rfkp_main([*argv, *small, *extra]) == 1, extra
        assert message in capsys.readouterr().err, extra
    assert json.loads(data_copy.read_text()) == coco and taken.read_text() == "a file"
    for option, value, message in [("--threshold", "2", "expected a number in [0, 1], got 2"),
                                   ("--threshold", "nan", "expected a finite number, got 'nan'"),
                                   ("--seed", "-1", "expected an integer in [0, 2**32), got -1")]:  # fmt: skip
        with pytest.raises(SystemExit):
            rfkp_main([*argv, *small, option, value])
        assert f"rfkp search: error: argument {option}: {message}" in capsys.readouterr().err
    sigmas = tmp_path / "sigmas.json"
    sigmas.write_text('{"mirror_mouse_side": "x"}')
    assert rfkp_main([*argv, *small, "--sigmas", str(sigmas)]) == 1
    assert "sigmas.json: entry 'mirror_mouse_side': expected a sigma" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_search_picks_within_a_latency_budget_and_saves_the_choice(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv, _ = _setup(tmp_path, dtype=torch.float16)
    axes = ["--resolutions", "96,128", "--patch-sizes", "16", "--windows", "2", "--dec-layers", "1,2",
            "--num-queries", "20", "--runs", "2", "--warmup", "1"]  # fmt: skip
    saved = tmp_path / "picked.pt"
    assert rfkp_main([*argv, *axes, "--save-choice", str(saved)]) == 1  # needs the budget, refused first
    assert "--save-choice writes the choice --budget-ms picks" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert rfkp_main([*argv, *axes, "--budget-ms", "100000", "--save-choice", str(saved)]) == 0
    out = capsys.readouterr().out
    meta = json.loads((tmp_path / "out" / "search.json").read_text())
    results = meta["results"]
    best = max(r["ap"] for r in results)
    picked = min((r for r in results if r["ap"] == best), key=lambda r: r["latency_ms_median"])
    key = f"r{picked['resolution']}-p16-w2-d{picked['dec_layers']}-q20"
    assert meta["budget"] == {"ms": 100000.0, "picked": key} and f"within 100000 ms: {key}" in out
    cfg = RFDETRKeypoint.from_checkpoint(saved, device="cpu").config
    assert (cfg.resolution, cfg.dec_layers) == (picked["resolution"], picked["dec_layers"])
    floats = {t.dtype for t in read_checkpoint(saved)["model"].values() if t.is_floating_point()}
    assert floats == {torch.float16}  # the fp16 checkpoint's choice is fp16 too, not twice its size
    assert rfkp_main([*argv, *axes, "--budget-ms", "0.000001"]) == 1
    assert "no choice runs within 1e-06 ms here (the fastest took" in capsys.readouterr().err


def test_noisy_latencies_are_the_ones_with_a_wide_spread() -> None:
    from trainer.nas.search import SearchResult
    from trainer.nas.space import ArchChoice
    from trainer.search_cli import noisy_latencies

    def result(median: float, p90: float) -> SearchResult:
        return SearchResult(ArchChoice(96, 16, 2, 1, 5), 0.5, 0.5, 0.5, float("nan"), median, p90)

    steady, busy = result(10.0, 19.0), result(10.0, 25.0)
    assert noisy_latencies([steady, busy]) == [busy]


def test_pick_within_budget() -> None:
    from trainer.nas.pareto import pick_within_budget
    from trainer.nas.search import SearchResult
    from trainer.nas.space import ArchChoice

    def result(ap: float, ms: float, queries: int) -> SearchResult:
        return SearchResult(ArchChoice(96, 16, 2, 1, queries), ap, ap, ap, float("nan"), ms, ms)

    results = [result(0.5, 10, 1), result(0.7, 30, 2), result(0.7, 20, 3), result(-1.0, 1, 4),
               result(float("nan"), 2, 5), result(0.9, 50, 6)]  # fmt: skip
    assert pick_within_budget(results, 25).choice.num_queries == 3  # most accurate within 25 ms
    assert pick_within_budget(results, 30).choice.num_queries == 3  # equal AP: the faster
    assert pick_within_budget(results, 10).choice.num_queries == 1  # undefined APs are never picked
    assert pick_within_budget(results, 5) is None
