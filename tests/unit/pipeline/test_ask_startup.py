"""What `ask` loads on its way to an answer: for a local checkpoint folder no Ray, MLflow or DeepSpeed,
and, once the prompt text features are cached, not the MiniLM text encoder either."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

ASK_AND_LIST_MODULES = """
import json, sys
from pipeline.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def _ask_modules(checkpoint: Path, image: Path, tmp_path: Path, cache_home: Path) -> tuple[set[str], str]:
    command = [sys.executable, "-c", ASK_AND_LIST_MODULES, "ask", "--model", str(checkpoint)]
    command += ["--image", str(image), "--question", "x", "--overlay", str(tmp_path / "overlay.png")]
    env = {**os.environ, "XDG_CACHE_HOME": str(cache_home)}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    report = json.loads(lines[-1])
    assert report["code"] == 0
    return set(report["modules"]), "\n".join(lines[:-1])


def test_ask_on_a_folder_loads_no_ray_mlflow_deepspeed_and_no_minilm_once_cached(
    tiny_checkpoint, sample_data_root, tmp_path
):
    image = sorted((sample_data_root / "coin" / "test" / "scratch").glob("*.png"))[0]
    cache_home = tmp_path / "cache"
    first, first_out = _ask_modules(tiny_checkpoint, image, tmp_path, cache_home)
    assert not {m for m in first if m.split(".")[0] in ("ray", "mlflow", "deepspeed")}
    assert "transformers.models.bert.modeling_bert" in first  # the features were encoded and cached
    assert list((cache_home / "anomalygpt" / "text-features").glob("*.safetensors"))

    second, second_out = _ask_modules(tiny_checkpoint, image, tmp_path, cache_home)
    assert "transformers.models.bert.modeling_bert" not in second  # read back: MiniLM never loads
    assert second_out == first_out  # the same answer and score from the cached features
