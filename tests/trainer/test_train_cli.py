"""`rfkp train` on bad input: a precise message and exit status 1 before any training step."""

from __future__ import annotations

import json

import pytest

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
        (["--variant", "huge"], "unknown variant 'huge'"),
        (["--resolutions", "70"], "resolution 70 is not a positive multiple"),
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
    ],
)
def test_bad_input_gets_a_precise_error(data, capsys, extra: list[str], message: str) -> None:
    root, train_json = data
    assert main(_train(root, train_json, *extra)) == 1
    assert message in capsys.readouterr().err


def test_sigmas_that_are_not_an_object_are_refused_before_training(data, capsys, tmp_path) -> None:
    root, train_json = data
    sigmas = tmp_path / "sigmas.json"
    sigmas.write_text("[0.05, 0.05]")
    assert main(_train(root, train_json, "--sigmas", str(sigmas), out=tmp_path / "run")) == 1
    assert "expected a JSON object" in capsys.readouterr().err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


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
    argv = _train(root, train_json, "--max-steps", "1", "--val", str(train_json), "--calibrate", "--device", "cpu", out=tmp_path / "run")
    assert main(argv) == 0
    assert "no calibration: the run wrote no best.pt (it stopped before its first validation)" in capsys.readouterr().err
