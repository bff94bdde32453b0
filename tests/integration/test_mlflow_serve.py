"""The registered model outside this repository: served by the real `mlflow models serve` from a
temporary folder, and loaded where this project is not installed (only its dependencies are).

A tiny checkpoint at 128 px, so that the default small map (64 x 64) differs from the full one.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from support import free_port

from pipeline.pyfunc_io import FILES_ROOT_ENV

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
SIZE = 128
SERVER_START_S = 300.0


@pytest.fixture(scope="module")
def registered(tmp_path_factory, sample_data_root) -> dict:
    """A tiny checkpoint registered as `anomalygpt` v1 in a sqlite-backed MLflow store, as the
    pipeline registers it."""
    import mlflow

    from pipeline.core.mlflow_store import configure_mlflow
    from pipeline.pipeline_config import load_pipeline_config
    from pipeline.registry import RegistryConfig, register_and_promote
    from train.model.build import build_model
    from train.model.checkpoint import save_checkpoint

    cfg = load_pipeline_config(ROOT / "configs" / "tiny.yaml").model
    cfg.image_size = SIZE
    cfg.llm.cache_dir = tmp_path_factory.mktemp("llm_cache")
    checkpoint = save_checkpoint(build_model(cfg), cfg, tmp_path_factory.mktemp("ckpt"))
    runs = tmp_path_factory.mktemp("runs")
    configure_mlflow(runs, "mlflow-serve-test")
    with mlflow.start_run():
        summary = register_and_promote(checkpoint, {"mean": {"image_auroc": 0.5}}, "eval", RegistryConfig())
    assert str(summary["version"]) == "1"
    return {"checkpoint": checkpoint, "uri": mlflow.get_tracking_uri()}


def _post(url: str, body: dict) -> list[dict]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return json.loads(response.read())["predictions"]
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"HTTP {exc.code}: {_shortened(exc.read().decode())}") from exc


def _shortened(text: str) -> str:
    """An error body without the base64 images MLflow quotes back."""
    return re.sub(r"[A-Za-z0-9+/=]{200,}", "<base64>", text)[-3000:]


def _wait_for_ping(port: int, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"mlflow models serve exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1.0)
    raise AssertionError(f"mlflow models serve did not answer /ping within {SERVER_START_S:.0f} s")


def test_mlflow_models_serve_answers_inputs_and_dataframe_records(registered, sample_data_root, tmp_path):
    from evaluate.regions import region_dicts
    from pipeline.inference import original_size, predict_one
    from train.model.predictor import Predictor

    category = sorted(p.name for p in sample_data_root.iterdir() if p.is_dir())[0]
    image = sorted((sample_data_root / category / "test").rglob("*.png"))[-1]
    refs = [str(p) for p in sorted((sample_data_root / category / "train" / "good").glob("*.png"))[:2]]
    b64 = base64.b64encode(image.read_bytes()).decode()

    port = free_port()
    workdir = tmp_path / "elsewhere"  # outside the repository: nothing may rely on the checkout's cwd
    workdir.mkdir()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": registered["uri"],
        # mlflow starts its server as `uvicorn ...` by name: the venv's bin must be on PATH
        # (an activated venv has it; a bare `.venv/bin/mlflow` call does not).
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        FILES_ROOT_ENV: str(sample_data_root),  # rows may name the sample images by path
    }
    command = [str(Path(sys.executable).parent / "mlflow"), "models", "serve"]
    command += ["-m", "models:/anomalygpt/1", "--env-manager", "local", "-p", str(port)]
    server = subprocess.Popen(
        command,
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its uvicorn child is stopped with it
    )
    try:
        _wait_for_ping(port, server)
        url = f"http://127.0.0.1:{port}/invocations"
        by_inputs = _post(
            url,
            {
                "inputs": [
                    {"image": str(image), "category": category},
                    {"image": b64, "category": category, "references": refs, "map": "none"},
                ]
            },
        )
        by_records = _post(
            url,
            {
                "dataframe_records": [
                    {"image": str(image), "category": category, "generate": False},
                    {"image": "data:image/png;base64," + b64, "category": category, "references": refs},
                ],
                "params": {"map": "full"},
            },
        )
        with pytest.raises(AssertionError, match="paths must lie under this server's files root"):
            _post(url, {"inputs": [{"image": "/etc/hostname", "category": category}]})
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        _, stderr = server.communicate(timeout=60)
    assert by_inputs and by_records, stderr.decode()[-3000:]

    predictor = Predictor.from_checkpoint(registered["checkpoint"], device="cpu")
    zero = predict_one(predictor, image, category=category)
    shot = predict_one(predictor, image, category=category, references=refs)
    assert [r["score"] for r in by_inputs] == pytest.approx([zero.score, shot.score], abs=1e-5)
    assert [r["answer"] for r in by_inputs] == [zero.answer, shot.answer]
    assert isinstance(zero.answer, str)
    assert np.asarray(by_inputs[0]["anomaly_map"]).shape == (64, 64)  # small by default
    assert "anomaly_map" not in by_inputs[1]  # map=none leaves it out

    assert [r["score"] for r in by_records] == pytest.approx([zero.score, shot.score], abs=1e-5)
    assert by_records[0]["answer"] is None and by_records[1]["answer"] == shot.answer
    for got, want in zip(by_records, (zero, shot), strict=True):  # params map=full: the model's size
        np.testing.assert_allclose(np.asarray(got["anomaly_map"]), want.anomaly_map, atol=1e-5)
    # regions in every row, whatever map says: those of the model's own map, in the image's pixels
    for rows in (by_inputs, by_records):
        for got, want in zip(rows, (zero, shot), strict=True):
            expected = region_dicts(want.anomaly_map, original_size(image))
            assert [r["box"] for r in got["regions"]] == [r["box"] for r in expected]


LOAD_WITHOUT_THE_PROJECT = """
import json, sys
# The checkout is installed editable; drop its finder so only the model's own code can be imported.
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__.lower()]
import mlflow
model = mlflow.pyfunc.load_model(sys.argv[1])
import pipeline, train
out = model.predict([{"image": sys.argv[2], "category": sys.argv[3], "map": "none"}])
print(json.dumps({"files": [pipeline.__file__, train.__file__], "out": out}))
"""


def test_the_logged_model_loads_where_the_project_is_not_installed(registered, sample_data_root, tmp_path):
    import mlflow

    mlflow.set_tracking_uri(registered["uri"])
    model_dir = Path(mlflow.artifacts.download_artifacts("models:/anomalygpt/1", dst_path=str(tmp_path)))
    mlmodel = (model_dir / "MLmodel").read_text()
    assert "code: code" in mlmodel
    stored = sorted(p.name for p in (model_dir / "code").iterdir())
    assert stored == ["evaluate", "pipeline", "synth", "train"]
    requirements = (model_dir / "requirements.txt").read_text().splitlines()
    assert any(r.startswith("anomalygpt-pipeline==") for r in requirements)
    assert "efficientnet-lite-pytorch==0.1.0" in requirements

    category = sorted(p.name for p in sample_data_root.iterdir() if p.is_dir())[0]
    image = sorted((sample_data_root / category / "test").rglob("*.png"))[0]
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_THE_PROJECT, str(model_dir), str(image), category],
        cwd=tmp_path,
        env={**os.environ, FILES_ROOT_ENV: str(sample_data_root)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.splitlines()[-1])
    assert all(Path(f).is_relative_to(model_dir / "code") for f in report["files"])
    assert set(report["out"][0]) == {"score", "answer", "regions"}
