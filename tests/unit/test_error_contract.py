"""The CLI's error contract: one `error: <message>` line and a documented exit code per kind of failure.

Most cases run `python -m pipeline ...` in a subprocess with commands that fail before any real work
(config loading, argument checks), so each takes well under a second. The rest call
`pipeline.cli.main` in-process with the stage function replaced by one that raises.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import main

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs" / "tiny.yaml")
NO_DAC = ("setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--")
"""Run as root without the capabilities that let root write through a folder's mode bits."""


def cli(*argv: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*prefix, sys.executable, "-m", "pipeline", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def train_args(tmp_path: Path, config: str = TINY) -> list[str]:
    """`train` arguments that stop at config loading (the shard folder is never reached)."""
    return ["train", "--config", config, "--shards", str(tmp_path / "shards"), "--out", str(tmp_path / "o")]


def test_help_lists_the_exit_codes():
    proc = cli("--help")
    assert proc.returncode == 0, proc.stderr
    for line in ("1    a bug", "2    bad input", "3    busy or unreachable", "4    cannot write", "130"):
        assert line in proc.stdout
    assert "--debug" in proc.stdout


def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrain:\n  lr: [1, 2\n  epochs: 3\n")
    proc = cli(*train_args(tmp_path, str(bad)))
    assert proc.returncode == 2, proc.stderr
    assert f"error: {bad}, line 4, column 9: invalid YAML: " in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1  # one line


def test_set_without_equals_names_the_set(tmp_path):
    proc = cli(*train_args(tmp_path), "--set", "train.max_steps")
    assert proc.returncode == 2, proc.stderr
    assert "error: --set 'train.max_steps': expected key=value" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_set_with_unknown_key_names_the_set_not_the_file(tmp_path):
    proc = cli(*train_args(tmp_path), "--set", "train.nope=1")
    assert proc.returncode == 2, proc.stderr
    assert "error: --set train.nope=1: unknown key 'train.nope' (allowed under train: " in proc.stderr
    assert "tiny.yaml" not in proc.stderr


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (
            "train.max_steps=many",
            "--set train.max_steps=many: train.max_steps must be an integer, got 'many'",
        ),
        ("seed.x=1", "--set seed.x=1: 'seed' is a single value, not a section"),
        ("train.epochs=[1", "--set train.epochs=[1: the value is not valid YAML"),
    ],
)
def test_set_with_a_bad_value_names_the_set(tmp_path, item, message):
    proc = cli(*train_args(tmp_path), "--set", item)
    assert proc.returncode == 2, proc.stderr
    assert f"error: {message}" in proc.stderr
    assert "tiny.yaml" not in proc.stderr


def test_debug_adds_the_traceback(tmp_path):
    proc = cli("--debug", *train_args(tmp_path), "--set", "train.nope=1")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("Traceback (most recent call last):")
    assert "pipeline.core.config.ConfigError: --set train.nope=1" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith("error: --set train.nope=1: unknown key")


def test_missing_config_file_is_bad_input(tmp_path):
    proc = cli(*train_args(tmp_path, str(tmp_path / "absent.yaml")))
    assert proc.returncode == 2, proc.stderr
    assert f"error: config file not found: {tmp_path / 'absent.yaml'}" in proc.stderr
    assert "Traceback" not in proc.stderr


def _read_only_prefix(folder: Path) -> tuple[str, ...]:
    """How to run a command that cannot write into ``folder`` (mode 0o555).

    A normal user is stopped by the mode bits. Root is not (CAP_DAC_OVERRIDE), and /proc is no
    substitute: creating anything there fails with ENOENT (a missing path, exit 2), not a write
    error. So as root the command runs under ``setpriv`` with DAC_OVERRIDE, DAC_READ_SEARCH and
    FOWNER dropped from the bounding set: still uid 0 (it reads the repository and venv as owner),
    but the mode bits apply. A probe write checks that this really blocks writes.
    """
    if os.geteuid() != 0:
        return ()
    if shutil.which("setpriv") is None:
        pytest.skip("running as root, where chmod does not stop writes, and setpriv is not installed")
    probe = [*NO_DAC, sys.executable, "-c", f"open({str(folder / 'probe')!r}, 'w')"]
    proc = subprocess.run(probe, capture_output=True, text=True, timeout=30)
    if "PermissionError" not in proc.stderr:
        pytest.skip(f"running as root and setpriv could not drop CAP_DAC_OVERRIDE: {proc.stderr.strip()}")
    return NO_DAC


def test_read_only_output_folder_exits_4(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        prefix = _read_only_prefix(folder)
        proc = cli("sample-data", "--out", str(folder / "x"), "--size", "32", prefix=prefix)
    finally:
        folder.chmod(0o755)
    assert proc.returncode == 4, proc.stderr
    # EACCES is "access": the same errno answers a read of a file without read permission.
    assert f"error: cannot access {folder / 'x'}: Permission denied" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (
            OSError(errno.EROFS, "Read-only file system", "/data/x"),
            "cannot write /data/x: Read-only file system",
        ),
        (OSError(errno.ENOSPC, "No space left on device"), "cannot write: No space left on device"),
    ],
)
def test_os_write_errors_exit_4(tmp_path, monkeypatch, capsys, error, message):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr("synth.demo_dataset.write_sample_dataset", fail)
    assert main(["sample-data", "--out", str(tmp_path / "x")]) == 4
    assert capsys.readouterr().err == f"error: {message}\n"


def test_other_os_errors_are_bugs(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr("synth.demo_dataset.write_sample_dataset", fail)
    with pytest.raises(OSError, match="Input/output error"):
        main(["sample-data", "--out", str(tmp_path / "x")])


def _raise_from_run_pipeline(monkeypatch, error: Exception) -> None:
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr("pipeline.orchestrate.run_pipeline", fail)


@pytest.mark.parametrize("command", ["run", "retrain"])
@pytest.mark.parametrize(
    ("error_class", "code"),
    [
        ("synth.datasets.DatasetError", 2),
        ("synth.shard_format.ShardError", 2),
        ("train.shard_reader.DataError", 2),
        ("pipeline.lock.LockBusy", 3),
        ("pipeline.registry_errors.RegistryError", 3),
    ],
)
def test_run_and_retrain_errors_have_their_exit_code(
    tmp_path, monkeypatch, capsys, command, error_class, code
):
    import importlib

    module, _, name = error_class.rpartition(".")
    error = getattr(importlib.import_module(module), name)(f"{name} at {tmp_path}: the reason")
    _raise_from_run_pipeline(monkeypatch, error)
    (tmp_path / "data").mkdir()
    argv = [command, "--config", TINY, "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run")]
    assert main(argv) == code
    assert capsys.readouterr().err == f"error: {name} at {tmp_path}: the reason\n"


def _as_ray_get_raises(error: Exception, chained_by_ray_data: bool = False) -> Exception:
    """``error`` as it reaches the driver from a Ray task: ``ray.get`` raises the task's error as a
    ``RayTaskError(<its class>)`` (built by Ray's own code, as in a worker); Ray Data chains that
    under its ``UserCodeException``."""
    import ray.exceptions

    wrapped = ray.exceptions.RayTaskError("write_shard", "Traceback (remote)", error).as_instanceof_cause()
    if not chained_by_ray_data:
        return wrapped
    try:
        raise ray.exceptions.UserCodeException("UDF failed") from wrapped
    except ray.exceptions.UserCodeException as outer:
        return outer


@pytest.mark.parametrize("chained_by_ray_data", [False, True])
@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        (
            OSError(errno.ENOSPC, "No space left on device", "/data/shards/shard-000003.tar"),
            4,
            "cannot write /data/shards/shard-000003.tar: No space left on device",
        ),
        (
            OSError(errno.EACCES, "Permission denied", "/data/x"),
            4,
            "cannot access /data/x: Permission denied",
        ),
        ("synth.datasets.DatasetError", 2, "DatasetError: the reason"),
    ],
)
def test_errors_inside_ray_tasks_keep_their_exit_code(
    tmp_path, monkeypatch, capsys, error, code, message, chained_by_ray_data
):
    if isinstance(error, str):
        import importlib

        module, _, name = error.rpartition(".")
        error = getattr(importlib.import_module(module), name)(message)
    _raise_from_run_pipeline(monkeypatch, _as_ray_get_raises(error, chained_by_ray_data))
    (tmp_path / "data").mkdir()
    argv = ["run", "--config", TINY, "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run")]
    assert main(argv) == code
    assert capsys.readouterr().err == f"error: {message}\n"


def test_other_errors_inside_ray_tasks_stay_bugs(tmp_path, monkeypatch):
    """An unexpected error in a task is still a bug (exit 1, traceback), and so is Ray's own failure
    with nothing inside it."""
    import ray.exceptions

    (tmp_path / "data").mkdir()
    argv = ["run", "--config", TINY, "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run")]
    _raise_from_run_pipeline(monkeypatch, _as_ray_get_raises(OSError(errno.EIO, "Input/output error")))
    with pytest.raises(ray.exceptions.RayTaskError) as raised:
        main(argv)
    assert raised.value.cause.errno == errno.EIO
    _raise_from_run_pipeline(monkeypatch, ray.exceptions.RaySystemError("the raylet died"))
    with pytest.raises(ray.exceptions.RaySystemError, match="the raylet died"):
        main(argv)
