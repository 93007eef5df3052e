"""`rfkp predict` and `rfkp demo` end to end (real files, in-process main)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rfkp import RFDETRKeypoint
from rfkp.cli.main import main
from rfkp.variants import tiny


def test_predict_writes_pictures_and_json(tmp_path: Path) -> None:
    weights = tmp_path / "tiny.pt"
    RFDETRKeypoint.from_config(tiny(), device="cpu").save_checkpoint(weights)
    img = tmp_path / "frame.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(img)
    out = tmp_path / "out"
    rc = main(["predict", str(img), "--weights", str(weights), "--threshold", "0.0", "--out", str(out)])
    assert rc == 0
    data = json.loads((out / "detections.json").read_text())
    assert str(img) in data and len(data[str(img)]["score"]) == 40  # 20 queries x 2 classes
    assert Image.open(out / "frame_keypoints.png").size == (80, 60)


def test_predict_reports_a_missing_image(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    weights = tmp_path / "tiny.pt"
    RFDETRKeypoint.from_config(tiny(), device="cpu").save_checkpoint(weights)
    rc = main(["predict", str(tmp_path / "nope.jpg"), "--weights", str(weights), "--out", str(tmp_path)])
    assert rc == 1
    assert "nope.jpg" in capsys.readouterr().err


def test_predict_keeps_the_good_images_when_some_fail(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    weights = tmp_path / "tiny.pt"
    RFDETRKeypoint.from_config(tiny(), device="cpu").save_checkpoint(weights)
    folder, other = tmp_path / "cams", tmp_path / "other"
    folder.mkdir()
    other.mkdir()
    rng = np.random.default_rng(1)
    for path in (folder / "a.png", folder / "b.jpg", other / "a.png"):
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(path)
    (folder / "notes.txt").write_text("not an image")  # not picked up from the folder
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out"
    rc = main(["predict", str(folder), str(other / "a.png"), str(tmp_path / "gone.jpg"), "--weights", str(weights),
               "--threshold", "0.0", "--out", str(out)])  # fmt: skip
    assert rc == 1
    err = capsys.readouterr().err
    assert "broken.png: error: could not decode" in err and "gone.jpg: error:" in err
    data = json.loads((out / "detections.json").read_text())
    assert sorted(data) == sorted([str(folder / "a.png"), str(folder / "b.jpg"), str(other / "a.png")])
    errors = json.loads((out / "errors.json").read_text())
    assert sorted(errors) == [str(folder / "broken.png"), str(tmp_path / "gone.jpg")]
    # the two a.png do not overwrite each other's picture
    assert {p.name for p in out.glob("*.png")} == {"a_keypoints.png", "a_2_keypoints.png", "b_keypoints.png"}
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", str(empty), "--weights", str(weights), "--out", str(out)]) == 1
    assert "no image files" in capsys.readouterr().err


def test_predict_refuses_bad_options_before_loading_anything(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    img = tmp_path / "frame.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
    missing_weights = str(tmp_path / "missing.pt")  # would fail if it were read: the options fail first
    with pytest.raises(SystemExit):
        main(["predict", str(img), "--weights", missing_weights, "--device", "bogus"])
    assert "unknown device 'bogus'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            main(["predict", str(img), "--weights", missing_weights, "--device", "cuda:0"])
        assert "CUDA is not available" in capsys.readouterr().err
    taken = tmp_path / "taken"
    taken.write_text("a file, not a folder")
    assert main(["predict", str(img), "--weights", missing_weights, "--out", str(taken)]) == 1
    assert "is not a folder" in capsys.readouterr().err
    assert taken.read_text() == "a file, not a folder"
    assert main(["predict", str(img), "--url", "127.0.0.1:1", "--weights", missing_weights]) == 1
    assert "--weights, --resolution and --device do not apply" in capsys.readouterr().err


def test_predict_stops_once_when_no_server_answers(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    pytest.importorskip("tritonclient.grpc")
    from rfkp.serving.launcher import free_port

    images = []
    for i in range(3):
        images.append(tmp_path / f"frame{i}.png")
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(images[-1])
    out = tmp_path / "out"
    url = f"127.0.0.1:{free_port()}"  # nothing listens there
    assert main(["predict", *map(str, images), "--url", url, "--timeout", "10", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("no rfkp server answers") == 1 and "frame0.png" not in err
    assert not out.exists()


def test_pictures_never_overwrite_each_other_and_reruns_start_clean(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    weights = tmp_path / "tiny.pt"
    RFDETRKeypoint.from_config(tiny(), device="cpu").save_checkpoint(weights)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    images = [tmp_path / "a" / "img01.png", tmp_path / "b" / "img01.png", tmp_path / "img01_2.png"]
    for i, path in enumerate(images):
        Image.fromarray(np.full((24, 32, 3), 40 * i, np.uint8)).save(path)
    out = tmp_path / "out"
    missing = str(tmp_path / "gone.png")
    assert main(["predict", *map(str, images), missing, "--weights", str(weights), "--out", str(out)]) == 1
    assert len(list(out.glob("*_keypoints.png"))) == 3  # img01, img01_2 and img01_2_2: none overwritten
    assert (out / "errors.json").is_file()
    assert main(["predict", str(images[0]), "--weights", str(weights), "--out", str(out)]) == 0
    assert not (out / "errors.json").exists()  # the earlier run's failures are not this run's
    capsys.readouterr()
    assert main(["predict", missing, "--weights", str(weights), "--out", str(tmp_path / "none")]) == 1
    assert "no image could be read: wrote" in capsys.readouterr().out  # not "wrote ... annotated images"
    # writing into the folder of the inputs: a second run does not take the first run's pictures as inputs
    for _ in range(2):
        assert main(["predict", str(tmp_path / "a"), "--weights", str(weights), "--out", str(tmp_path / "a")]) == 0
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["detections.json", "img01.png", "img01_keypoints.png"]
    capsys.readouterr()
    for option in (["--threshold", "2"], ["--resolution", "0"], ["--timeout", "nan"]):
        with pytest.raises(SystemExit):
            main(["predict", str(images[0]), "--weights", str(weights), "--out", str(tmp_path / "never"), *option])
        assert "expected" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_server_urls_are_host_and_port() -> None:
    from rfkp.client import check_url

    for good in ("127.0.0.1:8001", "localhost:1", "[::1]:65535"):
        assert check_url(good) == good
    for bad in ("127.0.0.1", "127.0.0.1:99999", "grpc://127.0.0.1:8001", ":8001", "host:port"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            check_url(bad)
    with pytest.raises(ValueError, match=r"an IPv6 server address goes in brackets, e.g. \[::1\]:8001"):
        check_url("::1:8001")
    with pytest.raises(ValueError, match="only an IPv6 address goes in brackets"):
        check_url("[localhost]:80")
    for bad in (" localhost:8001", "local host:8001", "localhost/x:8001"):
        with pytest.raises(ValueError, match="without spaces or a path"):
            check_url(bad)
    from rfkp.client import _check_timeout

    assert _check_timeout(np.float32(2.5)) == 2.5 and _check_timeout(None) is None
    for bad in (True, 0, -1.0, float("nan"), "5"):
        with pytest.raises(ValueError, match="timeout must be"):
            _check_timeout(bad)


def test_demo_runs_on_the_bundled_sample(tmp_path: Path) -> None:
    assert main(["demo", "--local", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "sample_keypoints.png").exists()
    assert json.loads((tmp_path / "detections.json").read_text())["image_size"] == [406, 396]


def test_demo_with_missing_weights_leaves_nothing(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "out"
    for mode in ([], ["--local"]):
        assert main(["demo", "--weights", str(tmp_path / "nope.pt"), "--out", str(out), *mode]) == 1
        assert "checkpoint not found" in capsys.readouterr().err
    assert not out.exists()  # no server run folder, no pictures


@pytest.mark.parametrize("command", ["predict", "demo", "serve", "export"])
def test_an_empty_weights_path_is_refused_not_taken_for_the_default(command: str, capsys) -> None:
    from rfkp.cli.main import main

    extra = {"predict": ["image.jpg"], "export": ["--out", "x.onnx"]}.get(command, [])
    with pytest.raises(SystemExit) as exc:
        main([command, "--weights", "", *extra])
    assert exc.value.code == 2
    assert "argument --weights: expected a path, got an empty string" in capsys.readouterr().err


def test_demo_without_a_server_is_one_line(tmp_path, capsys, monkeypatch) -> None:
    pytest.importorskip("tritonclient.grpc")
    from rfkp.cli.main import main
    from rfkp.serving import deploy
    from rfkp.serving.embedded import TritonNotFoundError

    def no_server(choice: str) -> None:
        raise TritonNotFoundError("no tritonserver found (stand-in for a machine without one)")

    monkeypatch.setattr(deploy, "find_installation", no_server)
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 1
    err = capsys.readouterr().err
    assert "rfkp demo: error: the served demo failed: no tritonserver found" in err and "--local" in err


def test_a_command_whose_extra_is_missing_says_so(monkeypatch, capsys) -> None:
    """A subcommand module that cannot be imported (its extra not installed) keeps its command, which explains
    itself when run; before, the command vanished ("invalid choice") with no word about the missing extra."""
    from rfkp.cli import main as cli_main

    monkeypatch.setattr(cli_main, "SUBCOMMANDS", [*cli_main.SUBCOMMANDS,
                                                  ("rfkp_no_such_module", "add_parser", "ghost", "training")])
    assert cli_main.main(["ghost", "--data", "x.json"]) == 1
    err = capsys.readouterr().err
    assert "rfkp ghost: error: this command is unavailable here (ModuleNotFoundError: No module named" in err
    assert "pip install 'rfkp[training]'" in err
    with pytest.raises(SystemExit):
        cli_main.main(["--help"])
    assert "ghost" in capsys.readouterr().out
