"""Record a training run's outcome in benchmarks/results: the command, the settings, the per-epoch curve and
the final validation report (OKS AP/AR per category, 1/2/3-sigma coverage) of the chosen checkpoint.

    python benchmarks/training_result.py --run RUN_DIR --report report.json --out benchmarks/results/NAME.json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
from pathlib import Path

import torch
from result_file import portable_argv, result_path, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="run directory of rfkp train")
    parser.add_argument("--report", type=Path, required=True, help="rfkp eval --json output for the checkpoint")
    parser.add_argument("--checkpoint", help="which checkpoint the report is about (name or path)")
    parser.add_argument("--out", type=result_path, required=True)
    args = parser.parse_args()
    history = [json.loads(line) for line in (args.run / "metrics.jsonl").read_text().splitlines() if line]
    command = json.loads((args.run / "command.json").read_text())
    settings = json.loads((args.run / "train_settings.json").read_text())
    elapsed = history[-1]["time"] - history[0]["time"] if len(history) > 1 else None
    curve = [{k: v for k, v in row.items() if k != "time"} for row in history]
    report = json.loads(args.report.read_text())
    write_result(
        args.out,
        "training run and validation of its checkpoint",
        {"validation": report, "curve": curve},
        checkpoint=portable_argv([args.checkpoint])[0] if args.checkpoint else None,  # no machine folders
        train_command=shlex.join(["rfkp", *portable_argv(command["argv"][1:])]),
        settings=settings,
        model_config=command["config"],
        epochs=len(history),
        train_seconds_after_first_epoch=elapsed,
        threads=torch.get_num_threads(),
        cpus=os.cpu_count(),
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
