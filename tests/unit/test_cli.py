"""The CLI answers --help for every command without heavy imports."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline.cli import COMMANDS

HEAVY = ("torch", "ray", "deepspeed", "mlflow", "transformers", "peft", "webdataset", "albumentations")


def test_help_imports_nothing_heavy():
    code = (
        "import sys\n"
        "from pipeline.cli import build_parser\n"
        "build_parser()\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help(command):
    out = subprocess.run(
        [sys.executable, "-m", "pipeline", command, "--help"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert "usage: python -m pipeline " + command in out.stdout


def test_instruct_data_writes_a_set_the_trainer_reads(sample_data_root, tmp_path):
    from pipeline.cli import main
    from train.instruct import read_instruction_set

    assert main(["instruct-data", "--data", str(sample_data_root), "--out", str(tmp_path / "set")]) == 0
    items = read_instruction_set(tmp_path / "set")
    assert len(items) == 4 * 6  # one item per train/good image of the fixture's 4 categories
