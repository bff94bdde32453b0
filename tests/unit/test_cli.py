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
