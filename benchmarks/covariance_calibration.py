"""Record an ``rfkp calibrate`` run as a result file (device, versions, date, command) plus its reliability plot.

Usage (arguments after ``--`` go to ``rfkp calibrate`` unchanged; ``--json`` and ``--plot`` are set here):
    python benchmarks/covariance_calibration.py --out benchmarks/results/mouse_covariance_calibration.json \
        -- --weights W --data val.json --images DIR --out calibrated.pt [--by class]
The plot is written next to the result file, with the suffix ``.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from result_file import result_path, write_result

from rfkp.cli.main import main as rfkp_main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=result_path, required=True, help="result JSON to write")
    args = p.parse_args(argv[:split])
    plot = args.out.with_suffix(".png")
    with tempfile.TemporaryDirectory() as tmp:
        report_path = Path(tmp) / "report.json"
        status = rfkp_main(["calibrate", *argv[split + 1 :], "--json", str(report_path), "--plot", str(plot)])
        if status:
            return status
        report = json.loads(report_path.read_text())
    report["plot"] = plot.name
    write_result(args.out, "rfkp calibrate: covariance factors fitted on held-out images, coverage of the "
                 "1/2/3-sigma ellipses before, after and cross-validated over images", report)  # fmt: skip
    print(f"result: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
