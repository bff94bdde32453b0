"""Registry errors (bad reference: exit 2; failing store: exit 3), the promotion lock and its
compare-and-set, and the version's description, on a real sqlite MLflow store."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from support import fake_checkpoint

import pipeline.registry as registry
from pipeline.cli import main
from pipeline.core.errors import BAD_INPUT, UNAVAILABLE
from pipeline.model_download import resolve_model
from pipeline.promotion_lock import (
    CLOCK_SKEW_S,
    HeldLock,
    LockLostError,
    LockTimeoutError,
    promotion_lock,
    ticket_name,
    tickets,
)
from pipeline.registry import RegistryConfig, alias_version, register_and_promote
from pipeline.registry_errors import ModelReferenceError, RegistryError


def _metrics(image_auroc: float) -> dict:
    return {"mean": {"image_auroc": image_auroc, "pixel_auroc": 0.8, "accuracy": 0.75}}


@pytest.fixture(scope="module")
def store_root(tmp_path_factory):
    """One sqlite store for the module; each test registers under its own model name."""
    import mlflow

    root = tmp_path_factory.mktemp("registry-promotion")
    yield root
    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture()
def store(store_root, tmp_path, monkeypatch) -> Path:
    from pipeline.core.mlflow_store import configure_mlflow

    monkeypatch.setenv("ANOMALYGPT_CACHE", str(tmp_path / "cache"))
    configure_mlflow(store_root / "runs", "promotion-test")
    return store_root / "runs"


@pytest.fixture()
def name(request) -> str:
    return request.node.name.replace("_", "-")


def _register(tmp_path: Path, name: str, seed: int, value: float, **kw) -> dict:
    import mlflow

    ckpt = tmp_path / f"ckpt{seed}"
    if not ckpt.exists():
        fake_checkpoint(ckpt, seed)
    with mlflow.start_run(nested=mlflow.active_run() is not None):
        return register_and_promote(ckpt, _metrics(value), "eval-a", RegistryConfig(model_name=name), **kw)


def test_error_classes_carry_their_exit_codes():
    bad_reference = ModelReferenceError("x")
    assert bad_reference.exit_code == BAD_INPUT and isinstance(bad_reference, ValueError)
    assert RegistryError("x").exit_code == UNAVAILABLE


def test_champion_that_changed_while_comparing_is_compared_again(store, tmp_path, name, monkeypatch):
    """Another pipeline promotes a better model between this run's comparison ("no champion yet")
    and its registry writes: this run must compare again and leave the better one champion."""
    real_log = registry.log_pyfunc
    rival: dict = {}

    def log_while_a_rival_promotes(checkpoint_dir):
        info = real_log(checkpoint_dir)
        if not rival:
            rival["summary"] = None  # the rival's own logging goes straight through
            rival["summary"] = _register(tmp_path, name, seed=2, value=0.9)
        return info

    monkeypatch.setattr(registry, "log_pyfunc", log_while_a_rival_promotes)
    late = _register(tmp_path, name, seed=1, value=0.7)

    assert rival["summary"]["promoted"] and rival["summary"]["version"] == "1"
    assert late["version"] == "2" and not late["promoted"]
    assert late["champion_version"] == "1"
    assert late["tags"]["promotion_champion_image_auroc"] == "0.900000"
    assert late["tags"]["promotion_reason"] == "0.7000 does not beat 0.9000"


def test_registration_describes_data_metrics_and_decision(store, tmp_path, name):
    from mlflow import MlflowClient

    data = {"dataset root": "/data/mvtec", "categories": ["brick", "coin"], "test images": 52}
    _register(tmp_path, name, seed=1, value=0.9, data=data)
    _register(tmp_path, name, seed=2, value=0.6, data=data)
    client = MlflowClient()
    first = client.get_model_version(name, "1").description
    assert "- dataset root: /data/mvtec" in first and "- categories: brick, coin" in first
    assert "- test images: 52" in first
    assert "Image-AUROC 0.9000, Pixel-AUROC 0.8000, accuracy 0.7500" in first
    assert "**Promotion**: promoted to champion: no champion yet" in first
    second = client.get_model_version(name, "2").description
    assert "not promoted, v1 stays champion: 0.6000 does not beat 0.9000" in second
    # The lock is released once the writes are done, and the run's ticket is the newest.
    assert [t.released for t in tickets(client, name)] == [True]


def _newest(client, name):
    return tickets(client, name)[-1]


def test_a_lock_left_by_a_killed_run_is_taken_over_when_its_lease_runs_out(store, name):
    from mlflow import MlflowClient

    client = MlflowClient()
    expired = f"{time.time() - CLOCK_SKEW_S - 1:.3f}"
    client.create_registered_model(
        ticket_name(name, 1), tags={"owner": "host pid 1 (killed)", "expires": expired}
    )
    start = time.monotonic()
    with promotion_lock(client, name, lease=5, poll=0.05) as held:
        assert held.number == 2 and _newest(client, name).owner == held.owner
        held.check()
    assert time.monotonic() - start < 5
    after = tickets(client, name)
    assert [t.number for t in after] == [2] and after[0].released  # older tickets deleted, newest kept


def test_a_live_holder_keeps_the_lock_past_its_lease_by_renewing_it(store, name):
    from mlflow import MlflowClient

    client = MlflowClient()
    with promotion_lock(client, name, lease=1.5, poll=0.05) as held:
        time.sleep(4.0)  # more than two leases: renewed every 0.5 s
        assert _newest(client, name).expires > time.time()
        busy = r"another run \(.*\) has held the promotion lock"
        with (
            pytest.raises(LockTimeoutError, match=busy),
            promotion_lock(client, name, lease=1.5, wait=1.0 + CLOCK_SKEW_S, poll=0.1),
        ):
            pass
        held.check()  # nobody took it over
    assert _newest(client, name).released


def test_a_holder_that_stalled_past_its_lease_is_fenced_off(store, name, monkeypatch):
    """A holder whose lease ran out (renewal stopped: a frozen process) is taken over; it finds the
    newer ticket at check() and writes nothing, and its release leaves the new holder's ticket alone."""
    from mlflow import MlflowClient

    client = MlflowClient()
    monkeypatch.setattr(HeldLock, "_renew_until_released", lambda self: None)  # the stalled holder
    monkeypatch.setattr("pipeline.promotion_lock.CLOCK_SKEW_S", 0.0)
    with promotion_lock(client, name, lease=0.5, poll=0.05) as stalled:
        time.sleep(0.7)
        with promotion_lock(client, name, lease=0.5, poll=0.05) as taker:
            assert taker.number == stalled.number + 1
            with pytest.raises(LockLostError, match="lost the promotion lock"):
                stalled.check()
    assert _newest(client, name).number == taker.number and _newest(client, name).released


def test_a_lock_held_too_long_is_unavailable_naming_the_holder(store, name):
    from mlflow import MlflowClient

    client = MlflowClient()
    far = f"{time.time() + 3600:.3f}"
    client.create_registered_model(ticket_name(name, 1), tags={"owner": "host pid 7", "expires": far})
    held = r"another run \(host pid 7\) has held the promotion lock"
    with pytest.raises(LockTimeoutError, match=held), promotion_lock(client, name, wait=0.3, poll=0.05):
        pass
    assert _newest(client, name).owner == "host pid 7" and not _newest(client, name).released  # not ours
    assert LockTimeoutError("x").exit_code == UNAVAILABLE


@pytest.mark.parametrize("ref", ["models:/", "models:/anomalygpt", "models:/anomalygpt@", "models:/x/abc",
                                 "models:/x@champion/3"])  # fmt: skip
def test_malformed_model_uris_are_bad_input(store, ref):
    with pytest.raises(ModelReferenceError, match=r"not a model URI; write models:/NAME@ALIAS"):
        resolve_model(ref)


def test_unknown_models_aliases_versions_and_runs_are_bad_input(store, tmp_path, name):
    _register(tmp_path, name, seed=1, value=0.7)
    with pytest.raises(ModelReferenceError, match=rf"no registered model 'nope' in sqlite:.*{name}"):
        resolve_model("models:/nope@champion")
    with pytest.raises(ModelReferenceError, match=r"has no version 7 .*its aliases: challenger, champion"):
        resolve_model(f"models:/{name}/7")
    with pytest.raises(ModelReferenceError, match=r"no version of .* has alias 'best'"):
        resolve_model(f"models:/{name}@best")
    with pytest.raises(ModelReferenceError, match=r"runs:/0123456789abcdef0123456789abcdef/model: .*RUN_ID"):
        resolve_model("runs:/0123456789abcdef0123456789abcdef/model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelReferenceError, match=r"holds no model.safetensors \+ config.yaml; pass"):
        resolve_model(tmp_path / "empty")


def test_a_failing_store_is_unavailable_not_a_missing_alias(store, monkeypatch):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    def fail(self, name, alias):
        raise MlflowException("database is locked", error_code="TEMPORARILY_UNAVAILABLE")

    monkeypatch.setattr(MlflowClient, "get_model_version_by_alias", fail)
    with pytest.raises(RegistryError, match=r"reading alias 'champion' of 'x' failed \(database is locked\)"):
        alias_version(MlflowClient(), "x", "champion")
    with pytest.raises(RegistryError, match="database is locked"):
        resolve_model("models:/x@champion")


@pytest.fixture()
def image(sample_data_root) -> str:
    return str(next((sample_data_root / "brick" / "test" / "good").iterdir()))


def test_ask_exits_2_for_a_bad_model_reference_and_3_for_an_unreachable_server(
    store, image, tmp_path, monkeypatch, capsys
):
    args = ["ask", "--store", str(store), "--image", image, "--question", "anomaly?", "--out", str(tmp_path)]
    assert main([*args, "--model", "models:/nope@champion"]) == BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: model models:/nope@champion: no registered model 'nope'")
    assert "MLFLOW_TRACKING_URI" in err
    assert main([*args, "--model", "models:/anomalygpt"]) == BAD_INPUT
    assert "write models:/NAME@ALIAS" in capsys.readouterr().err
    (tmp_path / "run-without-checkpoint").mkdir()
    assert main([*args, "--model", str(tmp_path / "run-without-checkpoint")]) == BAD_INPUT
    assert "holds no model.safetensors + config.yaml" in capsys.readouterr().err

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    args = ["ask", "--model", "models:/anomalygpt@champion", "--image", image, "--question", "anomaly?"]
    assert main([*args, "--out", str(tmp_path)]) == UNAVAILABLE
    assert f"MLflow server http://127.0.0.1:{port} is unreachable" in capsys.readouterr().err


def test_a_store_failing_while_the_lock_is_taken_is_unavailable(store, name, monkeypatch):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from pipeline.promotion_lock import LockUnavailableError

    def fail(self, *args, **kwargs):
        raise MlflowException("database is locked", error_code="TEMPORARILY_UNAVAILABLE")

    monkeypatch.setattr(MlflowClient, "create_registered_model", fail)
    with (
        pytest.raises(
            LockUnavailableError, match=r"taking the promotion lock failed \(database is locked\)"
        ) as exc,
        promotion_lock(MlflowClient(), name, poll=0.05),
    ):
        pass
    assert exc.value.exit_code == UNAVAILABLE
