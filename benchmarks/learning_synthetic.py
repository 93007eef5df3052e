"""The CI learning check, run once to record its figures: ``rfkp train`` on the synthetic two-class data with
the recipe of ``trainer.data.synthetic.LEARNING_OPTIONS``, then ``rfkp eval`` of best.pt on held-out images.

    python benchmarks/learning_synthetic.py [--out benchmarks/results/learning_synthetic_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from result_file import result_path, write_result

from rfkp.cli.main import main as rfkp
from trainer.data.synthetic import LEARNING_OPTIONS, learning_check_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=result_path, default=Path(__file__).resolve().parent / "results" / "learning_synthetic_cpu.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train_json, val_json = learning_check_data(root)
        start = time.perf_counter()
        if rfkp(["train", "--data", str(train_json), "--images", str(root / "images"), "--val", str(val_json),
                 "--out", str(root / "run"), *LEARNING_OPTIONS]) != 0:
            raise SystemExit("training failed")
        seconds = time.perf_counter() - start
        if rfkp(["eval", "--weights", str(root / "run" / "best.pt"), "--data", str(val_json), "--images",
                 str(root / "images"), "--json", str(root / "report.json")]) != 0:
            raise SystemExit("evaluation failed")
        report = json.loads((root / "report.json").read_text())
        curve = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [row["train_loss"] for row in curve]
    write_result(
        args.out,
        "CI learning check: tiny model trained on synthetic data (K=3 and K=5, occlusion, keypoints outside "
        "the image), evaluated on 16 held-out images",
        {"validation": report, "train_loss_per_epoch": losses, "train_seconds": round(seconds, 1)},
        options=LEARNING_OPTIONS,
        threads=torch.get_num_threads(),
    )
    print(f"OKS AP {report['overall']['AP']:.3f}, 2-sigma coverage {report['calibration']['visible']['2_sigma']:.3f}, "
          f"loss {losses[0]:.2f} -> {losses[-1]:.2f}, {seconds:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
