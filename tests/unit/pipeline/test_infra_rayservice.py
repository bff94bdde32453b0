"""infra/kuberay/rayservice.yaml deploys the application `python -m pipeline serve` runs: its Serve
config parses, names the real builder with arguments the builder accepts, keeps the Serve port
in-cluster, and puts the resolved model where every replica can read it."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
MANIFEST = ROOT / "infra" / "kuberay" / "rayservice.yaml"
pytestmark = pytest.mark.filterwarnings("ignore:Using extra keyword arguments on `Field`:DeprecationWarning")


@pytest.fixture(scope="module")
def service() -> dict:
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d is not None]
    assert len(docs) == 1
    return docs[0]


def test_it_is_a_rayservice_of_the_project_image_and_ray_version(service):
    import ray

    assert service["apiVersion"] == "ray.io/v1" and service["kind"] == "RayService"
    assert service["metadata"]["namespace"] == "anomalygpt"
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["headGroupSpec"]["serviceType"] == "ClusterIP"
    pods = [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster["workerGroupSpecs"])]
    for pod in pods:
        assert {c["image"] for c in pod["spec"]["containers"]} == {"<REGISTRY>/anomalygpt-pipeline:0.1.0"}


def test_serve_config_names_the_builder_with_arguments_it_accepts(service):
    from pipeline.core.config import from_dict
    from pipeline.serve.options import ServeSettings

    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert config["http_options"]["port"] == 8000 and config["http_options"]["host"] == "0.0.0.0"
    (app,) = config["applications"]
    module, _, name = app["import_path"].partition(":")
    builder = getattr(importlib.import_module(module), name)
    from pipeline.serve.app import app_builder

    assert builder is app_builder and app["route_prefix"] == "/"
    settings = from_dict(ServeSettings, app["args"], source=MANIFEST.name)  # strict: a wrong key fails
    assert settings.device == "cuda" and settings.model == "models:/anomalygpt@champion"
    workers = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    gpus = sum(
        int(g["replicas"])
        * int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0))
        for g in workers
    )
    assert settings.replicas <= gpus, "more cuda replicas than GPUs: some would never start"
    assert settings.references_dir.startswith("/data/")


def test_resolved_models_land_on_a_volume_every_pod_mounts(service):
    cluster = service["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster["workerGroupSpecs"])]
    for pod in pods:
        container = pod["spec"]["containers"][0]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["MLFLOW_TRACKING_URI"].startswith("http://mlflow.anomalygpt.svc")
        cache = env["ANOMALYGPT_CACHE"]
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in pod["spec"]["volumes"]
            if "persistentVolumeClaim" in v
        }
        mounts = [m for m in container["volumeMounts"] if cache.startswith(m["mountPath"].rstrip("/") + "/")]
        assert (
            mounts and not mounts[0].get("readOnly") and claims[mounts[0]["name"]] == "anomalygpt-workspace"
        )
        assert 8000 in {p["containerPort"] for p in container["ports"]}
