"""The short-lived process's collector rules: what is loaded for good is frozen, the collector is
back on afterwards (also after an error), and the CLI's entry point freezes before it exits."""

from __future__ import annotations

import gc
import subprocess
import sys

import pytest

from pipeline.core.runtime import loading_for_good


@pytest.fixture
def restore_gc():
    """Unfreeze and re-enable after the test, so the rest of the session collects as usual."""
    yield
    gc.unfreeze()
    gc.enable()


class _Loaded:
    """An object that lives in a reference cycle, as loaded modules and models do."""

    def __init__(self) -> None:
        self.me = self


def test_loading_for_good_pauses_the_collector_and_freezes_what_it_loaded(restore_gc):
    gc.unfreeze()
    with loading_for_good():
        assert not gc.isenabled()
        loaded = _Loaded()
    assert gc.isenabled()
    assert gc.get_freeze_count() > 0
    assert gc.is_tracked(loaded)
    assert all(o is not loaded for o in gc.get_objects())  # frozen: in no generation the collector walks


def test_loading_for_good_turns_the_collector_back_on_after_an_error(restore_gc):
    with pytest.raises(RuntimeError), loading_for_good():
        raise RuntimeError("model load failed")
    assert gc.isenabled()


def test_the_entry_point_exits_with_mains_code_and_freezes_first():
    code = (
        "import atexit, gc, sys\n"
        "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0))\n"
        "sys.argv = ['pipeline', 'ask', '--image', 'missing.png']\n"
        "from pipeline.cli import run\n"
        "run()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr  # a missing image is bad input
    assert proc.stdout.strip() == "frozen True"
