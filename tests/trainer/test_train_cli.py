"""`rfkp train` on bad input: a precise message and exit status 1 before any training step."""

from __future__ import annotations

import json
import time

import pytest
import torch
from PIL import Image

from rfkp.cli.main import main
from trainer.data.synthetic import make_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("train_cli")
    return root, make_dataset(root, "train", 4, seed=0)


def _train(root, train_json, *extra: str, out=None) -> list[str]:  # noqa: ANN001
    return ["train", "--data", str(train_json), "--images", str(root / "images"), "--out", str(out or root / "run"),
            "--variant", "tiny", "--set", "resolution=64", "--epochs", "1", "--no-progress", "--no-tensorboard",
            *extra]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--sigmas", "missing.json"], "sigmas file not found"),
        (["--set", "no_such_field=1"], "unknown model config keys: ['no_such_field']"),
        (["--set", "resolution"], "--set expects KEY=VALUE"),
        (["--flip-pairs", "{not json"], "--flip-pairs: not valid JSON"),
        (["--side-tokens", "LH-RH"], "--side-tokens: expected LEFT:RIGHT"),
        (["--side-tokens", "a:b:c"], "--side-tokens: expected LEFT:RIGHT"),
        (["--set", "coco_keypoint_offset=0"], "--set coco_keypoint_offset: training sets it"),
        (["--resolutions", "70"], "resolution 70 is not a positive multiple"),
        (["--resolutions", "8192"], "resolution 8192 is above the largest supported input side 4096"),
        (["--resume"], "no training state to resume from"),
        (["--val", "missing_val.json"], "not found"),
        (["--loss-weight", "kp=2"], "--loss-weight expects TERM=VALUE with TERM one of"),
        (["--loss-weight", "kp_l1=much"], "--loss-weight kp_l1: 'much' is not a number"),
        (["--loss-weight", "kp_nll=-1"], "--loss-weight kp_nll: must be a finite number >= 0, got -1"),
        (["--match-cost", "ce=2"], "--match-cost expects TERM=VALUE with TERM one of ['cls', 'bbox'"),
        (["--match-cost", "giou=x"], "--match-cost giou: 'x' is not a number"),
        (["--loss-weight", "kp_nll=nan"], "--loss-weight kp_nll: must be a finite number >= 0, got nan"),
        (["--match-cost", "cls=inf"], "--match-cost cls: must be a finite number >= 0, got inf"),
        (["--calibrate"], "--calibrate needs --val"),
        (["--flip-pairs", "[[0, 1]]"], '--flip-pairs: expected a JSON object {category id or name or "*": [[i, j], ...]}'),
        (["--flip-pairs", '{"*": [0, 1]}'], "--flip-pairs '*': expected a list of [i, j] pairs"),
        (["--flip-pairs", '{"cat": [[0, 1]]}'],
         "--flip-pairs: train.json has no category 'cat'; the keys are a category id or name (1 ('triangle')"),
        *[(["--set", f"{key}={value}"], f"--set {key}: the classes, category ids, keypoint names and skeletons come "
           "from the training file") for key, value in (("class_names", '["a"]'), ("keypoint_names", "[]"),
                                                       ("skeletons", "[]"), ("num_classes", "1"),
                                                       ("num_keypoints_per_class", "[3]"), ("category_ids", "[7]"))],
    ],
)
def test_bad_input_gets_a_precise_error(data, capsys, extra: list[str], message: str) -> None:
    root, train_json = data
    assert main(_train(root, train_json, *extra)) == 1
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--layer-decay", "nan", "argument --layer-decay: expected a finite number, got 'nan'"),
        ("--layer-decay", "0", "argument --layer-decay: expected a number in (0, 1], got 0"),
        ("--lr-backbone", "inf", "argument --lr-backbone: expected a finite number, got 'inf'"),
        ("--lr", "0", "argument --lr: expected a finite number > 0, got 0"),
        ("--clip-grad", "-1", "argument --clip-grad: expected a finite number >= 0, got -1"),
        ("--warmup-steps", "-5", "argument --warmup-steps: expected an integer >= 0, got -5"),
        ("--ema-tau", "-1", "argument --ema-tau: expected a finite number >= 0, got -1"),
        ("--ema-decay", "1", "argument --ema-decay: expected a number in [0, 1), got 1"),
        ("--save-every", "-1", "argument --save-every: expected an integer >= 0, got -1"),
        ("--seed", "-1", "argument --seed: expected an integer in [0, 2**32), got -1"),
        ("--seed", str(2**32), f"argument --seed: expected an integer in [0, 2**32), got {2**32}"),
        ("--max-steps", "0", "argument --max-steps: expected an integer >= 1, got 0"),
        ("--max-steps", "-1", "argument --max-steps: expected an integer >= 1, got -1"),
        ("--epochs", "0", "argument --epochs: expected an integer >= 1, got 0"),
        ("--workers", "-1", "argument --workers: expected an integer >= 0, got -1"),
        ("--nas-full-fraction", "2", "argument --nas-full-fraction: expected a number in [0, 1], got 2"),
        ("--variant", "huge", "argument --variant: invalid choice: 'huge'"),
        ("--init", "", "argument --init: expected a path, got an empty string (an unset variable?)"),
        ("--resolutions", "320,x", "argument --resolutions: expected comma-separated integers >= 1, got '320,x'"),
        ("--nas-windows", "-1", "argument --nas-windows: expected comma-separated integers >= 1, got '-1'"),
    ],
)
def test_hyperparameters_out_of_range_are_refused_at_parse_time(data, capsys, tmp_path, option: str, value: str,
                                                                 message: str) -> None:
    root, train_json = data
    with pytest.raises(SystemExit) as exit_info:
        main(_train(root, train_json, option, value, out=tmp_path / "run"))
    assert exit_info.value.code == 2
    assert f"rfkp train: error: {message}" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_sigmas_that_are_not_an_object_are_refused_before_training(data, capsys, tmp_path) -> None:
    root, train_json = data
    sigmas = tmp_path / "sigmas.json"
    sigmas.write_text("[0.05, 0.05]")
    assert main(_train(root, train_json, "--sigmas", str(sigmas), out=tmp_path / "run")) == 1
    assert "expected a JSON object" in capsys.readouterr().err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_sigma_entries_are_checked_against_the_data_before_training(data, capsys, tmp_path) -> None:
    root, train_json = data
    sigmas = tmp_path / "sigmas.json"
    for content, message in [
        ({"triangle": "x"}, "sigmas.json: entry 'triangle': expected a sigma (a finite number > 0) or a list of them"),
        ({"kite": [0.05, "x", 0.05, 0.05, 0.05]}, "sigmas.json: entry 'kite': expected a sigma"),
        ({"kite": [0.05, 0.05]}, "sigmas.json: category 2 ('kite'): 2 sigmas given for 5 keypoints"),
        ({"cat": 0.05}, "sigmas.json: sigma overrides for unknown categories ['cat']"),
    ]:
        sigmas.write_text(json.dumps(content))
        argv = _train(root, train_json, "--val", str(train_json), "--sigmas", str(sigmas), out=tmp_path / "run")
        assert main(argv) == 1, content
        assert message in capsys.readouterr().err, content
        assert not (tmp_path / "run").exists()


def test_one_step_run_writes_a_loadable_checkpoint(data, capsys, tmp_path) -> None:
    root, train_json = data
    run = tmp_path / "run"  # not the shared folder: the --resume case above expects it to hold no state
    assert main(_train(root, train_json, "--max-steps", "1", "--loss-weight", "kp_l1=5",
                      "--match-cost", "giou=3", out=run)) == 0
    assert "run directory" in capsys.readouterr().out
    assert (run / "checkpoint.pt").is_file()
    settings = json.loads((run / "train_settings.json").read_text())
    assert settings["loss_weights"]["kp_l1"] == 5.0
    assert settings["match_costs"]["giou"] == 3.0 and settings["match_costs"]["bbox"] == 5.0


def test_calibrate_after_training_writes_calibrated_weights(data, capsys, tmp_path) -> None:
    """One step is far from a useful model; a very wide OKS sigma still matches its detections to the ground
    truth, which is all the calibration needs."""
    root, train_json = data
    sigmas = tmp_path / "sigmas.json"
    categories = json.loads(train_json.read_text())["categories"]
    sigmas.write_text(json.dumps({c["name"]: 50.0 for c in categories}))
    run = tmp_path / "run"
    argv = _train(root, train_json, "--batch-size", "4", "--val", str(train_json), "--sigmas", str(sigmas),
                  "--calibrate", "--device", "cpu", out=run)  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "covariance factors" in out and "calibrated weights" in out
    report = json.loads((run / "calibration.json").read_text())
    assert report["weights"] == "best.pt" and (run / "best_calibrated.pt").is_file() and (run / "calibration.png").is_file()

    from rfkp import RFDETRKeypoint

    scales = RFDETRKeypoint.from_checkpoint(run / "best_calibrated.pt", device="cpu").config.covariance_scale
    assert scales == [c["covariance_scale"] for c in report["classes"]]


def test_calibrate_that_finds_nothing_to_fit_leaves_the_run_standing(data, capsys, tmp_path) -> None:
    root, train_json = data
    run = tmp_path / "run"
    sigmas = tmp_path / "sigmas.json"
    categories = json.loads(train_json.read_text())["categories"]
    sigmas.write_text(json.dumps({c["name"]: 1e-6 for c in categories}))  # nothing reaches OKS 0.5
    argv = _train(root, train_json, "--batch-size", "4", "--val", str(train_json), "--sigmas", str(sigmas),
                  "--calibrate", "--device", "cpu", out=run)  # fmt: skip
    assert main(argv) == 0
    assert "no calibration: no detection matched a ground truth" in capsys.readouterr().err
    assert (run / "best.pt").is_file() and not (run / "best_calibrated.pt").exists()


def test_calibrate_without_a_validated_best_says_so(data, capsys, tmp_path) -> None:
    root, train_json = data
    argv = _train(root, train_json, "--max-steps", "1", "--batch-size", "2", "--val", str(train_json), "--calibrate",
                  "--device", "cpu", out=tmp_path / "run")  # stopped inside the first epoch (4 images, 2 batches)
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "no calibration: the run wrote no best.pt (it stopped before its first validation)" in err
    assert "last.pt (EMA; no best.pt: the run stopped before its first validation)" in out
    assert (tmp_path / "run" / "last.pt").is_file() and not (tmp_path / "run" / "best.pt").exists()


def _weights(path):  # noqa: ANN001, ANN202
    from rfkp.checkpoint import read_checkpoint

    return read_checkpoint(path)["model"]


def test_stopping_at_max_steps_writes_the_weights(data, capsys, tmp_path) -> None:
    root, train_json = data
    run = tmp_path / "run"
    assert main(_train(root, train_json, "--epochs", "3", "--batch-size", "2", "--max-steps", "1", out=run)) == 0
    assert f"weights: {run / 'last.pt'} (EMA), also as {run / 'best.pt'} (no --val to select by)" in capsys.readouterr().out
    from rfkp import RFDETRKeypoint

    RFDETRKeypoint.from_checkpoint(run / "last.pt", device="cpu")
    last, best = _weights(run / "last.pt"), _weights(run / "best.pt")
    assert all(torch.equal(last[k], best[k]) for k in last)


def test_without_val_best_follows_the_last_epoch(data, tmp_path) -> None:
    root, train_json = data
    run = tmp_path / "run"
    assert main(_train(root, train_json, "--epochs", "2", out=run)) == 0  # best.pt used to stay at epoch 1
    last, best = _weights(run / "last.pt"), _weights(run / "best.pt")
    assert all(torch.equal(last[k], best[k]) for k in last)


def test_resuming_a_validated_run_without_val_keeps_its_best(data, tmp_path) -> None:
    root, train_json = data
    run = tmp_path / "run"
    assert main(_train(root, train_json, "--val", str(train_json), out=run)) == 0
    validated = (run / "best.pt").read_bytes()
    assert main(_train(root, train_json, "--epochs", "2", "--resume", out=run)) == 0
    assert (run / "best.pt").read_bytes() == validated  # chosen by validation AP: not replaced by the last epoch
    last, best = _weights(run / "last.pt"), _weights(run / "best.pt")
    assert not all(torch.equal(last[k], best[k]) for k in last)


def test_an_out_that_holds_a_run_needs_resume(data, capsys, tmp_path) -> None:
    root, train_json = data
    run = tmp_path / "run"
    assert main(_train(root, train_json, out=run)) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    capsys.readouterr()
    assert main(_train(root, train_json, out=run)) == 1
    assert (f"--out {run} already holds a run (checkpoint.pt, last.pt, best.pt, metrics.jsonl): pass --resume to "
            "continue it, or choose another --out") in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert main(_train(root, train_json, "--epochs", "2", "--resume", out=run)) == 0
    assert (run / "metrics.jsonl").read_text().count("\n") == 2


def test_a_failed_start_leaves_no_empty_out_behind(capsys, tmp_path) -> None:
    empty_json = make_dataset(tmp_path, "empty", 0, seed=0)
    out = tmp_path / "new" / "run"
    assert main(_train(tmp_path, empty_json, out=out)) == 1
    assert "empty.json: none of its 0 annotations has a labelled keypoint" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--out", "{data}"], "--out {data} is a file; give a folder"),
        (["--out", "{root}", "--init", "{root}/last.pt", "--resume"], "--out {root}/last.pt is also --init"),
    ],
)
def test_run_files_are_checked_before_the_data_is_read(data, capsys, tmp_path, extra: list[str], message: str) -> None:
    root, train_json = data
    (tmp_path / "last.pt").write_bytes(b"not read")
    values = {"data": train_json, "root": tmp_path}
    argv = _train(root, train_json, *[e.format(**values) for e in extra])
    assert main(argv) == 1
    assert message.format(**values) in capsys.readouterr().err
    assert (tmp_path / "last.pt").read_bytes() == b"not read"


def test_an_image_that_fails_in_a_worker_gives_its_own_message(tmp_path, capsys) -> None:
    train_json = make_dataset(tmp_path, "train", 2, seed=0)
    image = tmp_path / "images" / "train_001.png"
    image.write_bytes(image.read_bytes()[:200])  # the header reads, the pixels do not
    assert main(_train(tmp_path, train_json, "--workers", "1", "--batch-size", "2", out=tmp_path / "run")) == 1
    err = capsys.readouterr().err
    assert "rfkp train: error: train.json: image id 2: could not decode image file" in err and "train_001.png" in err
    assert "DataLoader worker" not in err and len(err.strip().splitlines()) == 1


def test_an_image_of_another_size_is_refused_before_training(tmp_path, capsys) -> None:
    train_json = make_dataset(tmp_path, "train", 2, seed=0)
    Image.new("RGB", (10, 12)).save(tmp_path / "images" / "train_001.png")
    assert main(_train(tmp_path, train_json, "--workers", "1", out=tmp_path / "run")) == 1
    err = capsys.readouterr().err
    assert "train.json: image id 2: file 'train_001.png' is 10x12 but the annotation says 128x128" in err
    assert not (tmp_path / "run").exists()


def test_a_val_file_of_other_categories_is_refused_before_training(data, tmp_path, capsys) -> None:
    root, train_json = data
    coco = json.loads(train_json.read_text())
    for category in coco["categories"]:
        category["name"] += "_renamed"  # same skeletons: validation would match no class and score nothing
    val = root / "val_renamed.json"
    val.write_text(json.dumps(coco))
    out = tmp_path / "run"
    assert main(_train(root, train_json, "--val", str(val), out=out)) == 1
    assert "val_renamed.json and train.json describe different categories" in capsys.readouterr().err
    assert not out.exists()


def test_deeply_nested_json_is_a_message_not_a_traceback(data, tmp_path, capsys) -> None:
    root, train_json = data
    sigmas = tmp_path / "deep.json"
    sigmas.write_text("[" * 100_000 + "]" * 100_000)
    assert main(_train(root, train_json, "--sigmas", str(sigmas), out=tmp_path / "run")) == 1
    assert "deep.json: JSON nested too deeply to read" in capsys.readouterr().err


def test_a_val_file_listing_the_categories_under_other_ids_is_accepted(data, tmp_path) -> None:
    root, train_json = data
    coco = json.loads(train_json.read_text())
    if len({c["name"] for c in coco["categories"]}) < 2 or len({len(c["keypoints"]) for c in coco["categories"]}) < 2:
        pytest.skip("needs two categories with different keypoint counts")
    ids = [c["id"] for c in coco["categories"]]
    swap = dict(zip(ids, reversed(ids)))  # same names and skeletons, ids exchanged: matched by name
    for category in coco["categories"]:
        category["id"] = swap[category["id"]]
    for ann in coco["annotations"]:
        ann["category_id"] = swap[ann["category_id"]]
    val = root / "val_swapped.json"
    val.write_text(json.dumps(coco))
    assert main(_train(root, train_json, "--val", str(val), out=tmp_path / "run")) == 0


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_an_interrupted_run_says_how_to_resume(data, capsys, tmp_path, monkeypatch, how: str) -> None:
    import os
    import signal

    from trainer.loop.trainer import Trainer

    def stopped(self):  # noqa: ANN001, ANN202
        self.save()  # as an epoch end would have
        if how == "ctrl-c":
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGTERM)  # a scheduler stopping the job: the handler must interrupt this
        time.sleep(10)
        pytest.fail("SIGTERM did not interrupt training")

    monkeypatch.setattr(Trainer, "fit", stopped)
    root, train_json = data
    previous = signal.getsignal(signal.SIGTERM)
    assert main(_train(root, train_json, out=tmp_path / "run")) == 130
    err = capsys.readouterr().err
    assert "rfkp train: interrupted; " in err and "checkpoint.pt holds the state" in err and "--resume" in err
    assert signal.getsignal(signal.SIGTERM) is previous  # the handler is put back


def test_an_interrupt_before_any_state_says_to_start_over(data, capsys, tmp_path, monkeypatch) -> None:
    from trainer.loop.trainer import Trainer

    def stopped(self):  # noqa: ANN001, ANN202
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "fit", stopped)
    root, train_json = data
    assert main(_train(root, train_json, out=tmp_path / "run")) == 130
    err = capsys.readouterr().err
    assert "no training state was saved yet: run the same command again (without --resume)" in err


def test_resume_takes_the_model_from_the_training_state(data, capsys, tmp_path) -> None:
    """--resume builds the run's own model from checkpoint.pt: --init and --variant need not be repeated (and
    are not read), while a --set that changes the model is refused naming the field."""
    root, train_json = data
    init = tmp_path / "init.pt"
    assert main(_train(root, train_json, out=tmp_path / "first")) == 0
    (tmp_path / "first" / "last.pt").rename(init)
    run = tmp_path / "run"
    assert main(_train(root, train_json, "--init", str(init), out=run)) == 0
    init.unlink()  # the init file has moved since: the resume must not need it
    argv = ["train", "--data", str(train_json), "--images", str(root / "images"), "--out", str(run), "--epochs", "2",
            "--no-progress", "--no-tensorboard", "--resume"]  # no --init, no --variant tiny, no --set
    assert main(argv) == 0
    assert (run / "metrics.jsonl").read_text().count("\n") == 2
    capsys.readouterr()
    assert main([*argv[:-1], "--epochs", "3", "--set", "resolution=96", "--resume"]) == 1
    err = capsys.readouterr().err
    assert "the training state was written for another model configuration: resolution 64 -> 96" in err


def test_init_reads_its_checkpoint_once_and_says_calibration_is_dropped(data, tmp_path, monkeypatch, caplog) -> None:
    """--init is read once (architecture and tensors: a peer checkpoint's warnings used to print twice), and
    covariance factors it carries are dropped with a line that says so."""
    import dataclasses
    import logging

    import rfkp.checkpoint as checkpoint
    from rfkp import RFDETRKeypoint

    root, train_json = data
    assert main(_train(root, train_json, out=tmp_path / "first")) == 0
    init = tmp_path / "calibrated.pt"
    model = RFDETRKeypoint.from_checkpoint(tmp_path / "first" / "last.pt", device="cpu")
    model.network.cfg = dataclasses.replace(model.config, covariance_scale=[[2.0] * k for k in
                                                                            model.config.num_keypoints_per_class])
    model.save_checkpoint(init)
    reads: list[str] = []
    real = checkpoint.read_checkpoint
    monkeypatch.setattr(checkpoint, "read_checkpoint", lambda path: reads.append(str(path)) or real(path))
    with caplog.at_level(logging.INFO, logger="trainer.train_cli"):
        assert main(_train(root, train_json, "--init", str(init), out=tmp_path / "run")) == 0
    assert reads.count(str(init)) == 1
    assert "carries covariance factors; they are dropped" in caplog.text
