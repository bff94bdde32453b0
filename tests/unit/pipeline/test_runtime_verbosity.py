"""The quiet console's switch: what configure_environment sets, what Ray workers are given."""

from __future__ import annotations

import logging
import os
import warnings

import pytest

from pipeline.core import runtime
from pipeline.core.runtime import (
    QUIET_ENV_DEFAULTS,
    VERBOSE_ENV,
    configure_environment,
    library_log_level,
    set_verbose,
    worker_env,
)


@pytest.fixture
def fresh_env(monkeypatch):
    """No verbosity or quiet setting inherited from the shell or an earlier test."""
    for key in (*QUIET_ENV_DEFAULTS, VERBOSE_ENV):
        monkeypatch.setenv(key, "")  # recorded: whatever the test sets is undone afterwards
        monkeypatch.delenv(key)
    return monkeypatch


def test_quiet_by_default_with_the_users_own_values_kept(fresh_env):
    fresh_env.setenv("TRANSFORMERS_VERBOSITY", "info")
    configure_environment()
    assert os.environ["TRANSFORMERS_VERBOSITY"] == "info"  # a user's value wins
    for key in set(QUIET_ENV_DEFAULTS) - {"TRANSFORMERS_VERBOSITY"}:
        assert os.environ[key] == QUIET_ENV_DEFAULTS[key]
    assert library_log_level() == logging.WARNING
    assert worker_env() == {**QUIET_ENV_DEFAULTS, "TRANSFORMERS_VERBOSITY": "info"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.filterwarnings("always")  # what the test runner does; the quiet filters go first
        configure_environment()
        warnings.warn("`is_gradient_checkpointing` is deprecated and will go", FutureWarning, stacklevel=1)
        warnings.warn("a config warning of ours", UserWarning, stacklevel=1)
        warnings.warn("something else is deprecated", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["a config warning of ours", "something else is deprecated"]


def test_the_quiet_warning_filters_read_like_pythonwarnings():
    filters = QUIET_ENV_DEFAULTS["PYTHONWARNINGS"].split(",")
    assert len(filters) == len(runtime.QUIET_WARNINGS)
    for entry, message in zip(filters, runtime.QUIET_WARNINGS, strict=True):
        action, text, category = entry.split(":")  # -W action:message:category; no ':' in the text
        assert (action, text, category) == ("ignore", message, "FutureWarning")


def test_verbose_sets_nothing_quiet_and_travels_to_the_workers(fresh_env):
    set_verbose(True)
    configure_environment()
    assert not set(QUIET_ENV_DEFAULTS) & set(os.environ)
    assert library_log_level() == logging.INFO
    assert worker_env() == {VERBOSE_ENV: "1"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.filterwarnings("always")
        configure_environment()
        warnings.warn("`is_gradient_checkpointing` is deprecated", FutureWarning, stacklevel=1)
    assert len(caught) == 1


def test_set_verbose_false_leaves_an_exported_verbose_on(fresh_env):
    fresh_env.setenv(VERBOSE_ENV, "1")
    set_verbose(False)
    assert runtime.verbose()
    fresh_env.setenv(VERBOSE_ENV, "0")
    assert not runtime.verbose()
