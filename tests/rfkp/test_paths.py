"""Output path checks shared by the commands: run before any work, so that nothing is lost or half-written."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from rfkp.cli.paths import check_output_file, check_output_folder, refuse_overwriting_inputs


def test_an_output_that_names_an_input_or_another_output_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "gt.json"
    data.write_text("{}")
    with pytest.raises(ValueError, match="--json .*gt.json is also --data"):
        refuse_overwriting_inputs({"--json": tmp_path / "sub" / ".." / "gt.json"}, {"--data": data})
    link = tmp_path / "link.json"
    link.hardlink_to(data)
    with pytest.raises(ValueError, match="is also --data"):  # the same file under another name
        refuse_overwriting_inputs({"--json": link}, {"--data": data})
    with pytest.raises(ValueError, match="--plot .* is also --json"):
        refuse_overwriting_inputs({"--json": tmp_path / "a", "--plot": tmp_path / "a"}, {})
    refuse_overwriting_inputs({"--json": tmp_path / "b.json", "--plot": None}, {"--data": data, "--val": None})
    (tmp_path / "loop_a").symlink_to(tmp_path / "loop_b")
    (tmp_path / "loop_b").symlink_to(tmp_path / "loop_a")
    refuse_overwriting_inputs({"--out": tmp_path / "x.onnx"}, {"--weights": tmp_path / "loop_a"})  # no RuntimeError


def test_files_and_folders_about_to_be_written(tmp_path: Path) -> None:
    assert check_output_file(tmp_path / "new" / "deeper" / "x.json", "--json") == tmp_path / "new" / "deeper" / "x.json"
    with pytest.raises(IsADirectoryError, match="is a folder"):
        check_output_file(tmp_path, "--json")
    (tmp_path / "f").write_text("")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        check_output_file(tmp_path / "f" / "x.json", "--json")
    with pytest.raises(NotADirectoryError, match="is a file; give a folder"):
        check_output_folder(tmp_path / "f", "--out")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc as a folder nobody can write in")
def test_a_folder_one_cannot_write_in_is_refused() -> None:
    with pytest.raises(PermissionError, match="cannot write in /proc"):
        check_output_file("/proc/rfkp-results.json", "--json")
    with pytest.raises(PermissionError, match="cannot write in /proc"):
        check_output_folder("/proc/rfkp-run/sub", "--out")
    with pytest.raises(PermissionError, match="--out /proc: cannot write in /proc"):  # an existing folder too
        check_output_folder("/proc", "--out")
