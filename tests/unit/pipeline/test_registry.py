"""Registry promotion on a real sqlite MLflow store: champion only when better, tags, rollback, resolve."""

from __future__ import annotations

import math
import socket
import time
from pathlib import Path

import pytest
from support import fake_checkpoint

from pipeline.model_download import ABANDONED_AFTER_S, resolve_model
from pipeline.registry import RegistryConfig, checkpoint_digest, decide, register_and_promote
from pipeline.registry_errors import ModelReferenceError, RegistryError, ensure_reachable


def _metrics(value: float | None) -> dict:
    return {"setting": "unsupervised", "mean": {"image_auroc": value, "pixel_auroc": 0.5}}


class Registry:
    """A test's view of the store: its checkpoint folder and its own registered model name."""

    def __init__(self, path: Path, name: str) -> None:
        self.path, self.cfg = path, RegistryConfig(model_name=name)

    def register(self, seed: int, value: float | None, fp: str = "eval-a", **kw) -> dict:
        import mlflow

        ckpt = self.path / f"ckpt{seed}"
        if not ckpt.exists():
            fake_checkpoint(ckpt, seed)
        with mlflow.start_run():
            return register_and_promote(ckpt, _metrics(value), fp, self.cfg, **kw)

    def alias(self, alias: str) -> str:
        from mlflow import MlflowClient

        return str(MlflowClient().get_model_version_by_alias(self.cfg.model_name, alias).version)

    def versions(self) -> list[str]:
        from mlflow import MlflowClient

        found = MlflowClient().search_model_versions(f"name = '{self.cfg.model_name}'")
        return sorted(str(v.version) for v in found)

    def uri(self, suffix: str) -> str:
        return f"models:/{self.cfg.model_name}{suffix}"


@pytest.fixture(scope="module")
def store_root(tmp_path_factory):
    """One sqlite store for the module (creating one costs a schema migration, seconds on a busy
    machine); each test registers under its own model name."""
    import mlflow

    root = tmp_path_factory.mktemp("registry")
    yield root
    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture()
def reg(store_root, tmp_path, request, monkeypatch) -> Registry:
    from pipeline.core.mlflow_store import configure_mlflow

    monkeypatch.setenv("ANOMALYGPT_CACHE", str(tmp_path / "cache"))
    configure_mlflow(store_root / "runs", "registry-test")
    return Registry(tmp_path, request.node.name.replace("_", "-"))


def test_decide_rule():
    assert decide(0.7, None).promote
    assert decide(0.8, 0.7).promote
    assert not decide(0.7, 0.7).promote
    assert not decide(0.6, 0.7).promote
    assert not decide(0.75, 0.7, min_improvement=0.1).promote
    assert not decide(None, 0.7).promote
    assert not decide(math.nan, 0.7).promote
    assert decide(0.1, math.nan).promote


def test_better_challenger_promoted_worse_kept(reg):
    first = reg.register(1, 0.70)
    assert first["version"] == "1" and first["promoted"]
    assert first["tags"]["promotion_reason"] == "no champion yet"

    better = reg.register(2, 0.80)
    assert better["promoted"] and better["champion_version"] == "2"
    assert better["tags"]["promotion_challenger_image_auroc"] == "0.800000"
    assert better["tags"]["promotion_champion_image_auroc"] == "0.700000"
    assert better["tags"]["promotion_champion_version"] == "1"

    worse = reg.register(3, 0.75)
    assert not worse["promoted"]
    assert worse["tags"]["promotion_decision"] == "kept_champion"
    assert worse["tags"]["promotion_champion_image_auroc"] == "0.800000"
    assert reg.alias("champion") == "2"
    assert reg.alias("challenger") == "3"


def test_same_checkpoint_registers_once(reg):
    a = reg.register(1, 0.7)
    b = reg.register(1, 0.7)
    assert b["already_registered"] and b["version"] == a["version"]
    assert reg.versions() == ["1"]


def test_champion_rescored_on_new_data(reg):
    reg.register(1, 0.90, fp="old-data")
    seen = []

    def rescore(uri: str) -> dict:
        seen.append(uri)
        return _metrics(0.60)

    result = reg.register(2, 0.65, fp="new-data", rescore=rescore)
    assert seen == [reg.uri("/1")]
    assert result["promoted"]
    assert result["tags"]["promotion_champion_image_auroc"] == "0.600000"

    # Without a way to re-score, a champion from other data is kept.
    kept = reg.register(3, 0.99, fp="newer-data")
    assert not kept["promoted"] and "other data" in kept["tags"]["promotion_reason"]


def test_failed_registration_leaves_registry_as_it_was(reg, monkeypatch):
    from mlflow import MlflowClient

    reg.register(1, 0.7)
    real = MlflowClient.set_registered_model_alias

    def fail_on_champion(self, name, alias, version):
        if alias == "champion":
            raise RuntimeError("store went away")
        return real(self, name, alias, version)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", fail_on_champion)
    with pytest.raises(RuntimeError, match="store went away"):
        reg.register(2, 0.9)
    monkeypatch.undo()
    assert reg.versions() == ["1"]
    assert reg.alias("champion") == "1" and reg.alias("challenger") == "1"


def test_resolve_model_round_trip(reg):
    reg.register(1, 0.7)
    local = resolve_model(reg.uri("@champion"))
    original = reg.path / "ckpt1"
    assert checkpoint_digest(local) == checkpoint_digest(original)
    assert resolve_model(original) == original
    # Cached: a second resolve returns the same folder without downloading again.
    mtime = (local / "model.safetensors").stat().st_mtime_ns
    assert resolve_model(reg.uri("/1")) == local
    assert (local / "model.safetensors").stat().st_mtime_ns == mtime
    with pytest.raises(ModelReferenceError, match="no version"):
        resolve_model(reg.uri("@nope"))
    with pytest.raises(FileNotFoundError, match="not a checkpoint folder"):
        resolve_model(reg.path / "missing")


def test_unreachable_server_fails_fast(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(RegistryError, match="unreachable"):
        ensure_reachable(f"http://127.0.0.1:{port}")
    assert time.monotonic() - start < 5
    with pytest.raises(RegistryError, match=r"not writable|does not exist"):
        ensure_reachable(f"sqlite:///{tmp_path}/nowhere/mlflow.db")
    ensure_reachable(f"sqlite:///{tmp_path}/mlflow.db")


def test_resolve_cache_keeps_stores_apart(reg):
    from pipeline.core.mlflow_store import configure_mlflow

    reg.register(1, 0.7)
    first = resolve_model(reg.uri("@champion"))
    configure_mlflow(reg.path / "other-runs", "registry-test")  # another store, also with a v1
    reg.register(2, 0.7)
    second = resolve_model(reg.uri("@champion"))
    assert first != second
    assert checkpoint_digest(first) == checkpoint_digest(reg.path / "ckpt1")
    assert checkpoint_digest(second) == checkpoint_digest(reg.path / "ckpt2")
    assert sorted(p.name for p in second.iterdir()) == ["config.yaml", "model.safetensors"]


def test_concurrent_resolves_of_one_uri_share_one_complete_copy(reg, tmp_path):
    """Four resolves of the same version into one cache folder at once (a service's replicas
    starting together): each downloads into its own folder, one rename wins, and every caller
    gets the complete checkpoint; no download folder is left behind."""
    from concurrent.futures import ThreadPoolExecutor

    reg.register(1, 0.7)
    dst = tmp_path / "cache" / "champion"
    with ThreadPoolExecutor(4) as pool:
        resolved = list(pool.map(lambda _: resolve_model(reg.uri("@champion"), dst), range(4)))
    assert len(set(resolved)) == 1
    assert checkpoint_digest(resolved[0]) == checkpoint_digest(reg.path / "ckpt1")
    assert sorted(p.name for p in dst.parent.iterdir()) == ["champion"]


def test_a_download_left_by_a_killed_process_is_removed_by_the_next_one(reg, tmp_path):
    """A .partial folder whose files stopped changing hours ago (its process was killed) goes at the
    next download into the cache; one still being written stays."""
    import os
    import time

    reg.register(1, 0.7)
    cache = tmp_path / "cache"
    abandoned = cache / "champion.4242-deadbeef.partial" / "checkpoint"
    live = cache / "other.4343-cafecafe.partial" / "checkpoint"
    for folder in (abandoned, live):
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"half a download")
    hours_ago = time.time() - ABANDONED_AFTER_S - 60
    for path in [abandoned.parent, abandoned, abandoned / "model.safetensors"]:
        os.utime(path, (hours_ago, hours_ago))
    resolved = resolve_model(reg.uri("@champion"), cache / "champion")
    assert checkpoint_digest(resolved) == checkpoint_digest(reg.path / "ckpt1")
    assert not abandoned.parent.exists() and live.parent.exists()
    assert sorted(p.name for p in cache.iterdir()) == ["champion", live.parent.name]
