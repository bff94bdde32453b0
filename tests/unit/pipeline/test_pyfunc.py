"""The registered pyfunc loads a real tiny checkpoint and predicts what the model itself predicts."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[3]


def test_pyfunc_matches_direct_prediction(tiny_checkpoint, sample_data_root, tmp_path, monkeypatch):
    import mlflow

    from evaluate.regions import region_dicts
    from pipeline.core.mlflow_store import configure_mlflow
    from pipeline.inference import original_size, predict_one
    from pipeline.pyfunc_io import FILES_ROOT_ENV
    from pipeline.registry import RegistryConfig, register_and_promote
    from train.model.predictor import Predictor

    monkeypatch.setenv("ANOMALYGPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(FILES_ROOT_ENV, str(sample_data_root))  # rows name the sample images by path
    configure_mlflow(tmp_path / "runs", "pyfunc-test")
    metrics = {"mean": {"image_auroc": 0.5}}
    with mlflow.start_run():
        register_and_promote(tiny_checkpoint, metrics, "eval", RegistryConfig())

    category = sorted(p.name for p in sample_data_root.iterdir() if p.is_dir())[0]
    test_image = sorted((sample_data_root / category / "test").rglob("*.png"))[-1]
    refs = sorted((sample_data_root / category / "train" / "good").glob("*.png"))[:2]
    data_uri = "data:image/png;base64," + base64.b64encode(test_image.read_bytes()).decode()

    pyfunc = mlflow.pyfunc.load_model("models:/anomalygpt@champion")
    rows = [
        {"image": str(test_image), "category": category},
        {"image": data_uri, "category": category, "references": [str(r) for r in refs]},
    ]
    out = pyfunc.predict(rows)
    assert len(out) == 2

    predictor = Predictor.from_checkpoint(tiny_checkpoint)
    direct = predict_one(predictor, test_image, category=category)
    shot = predict_one(predictor, test_image, category=category, references=refs)
    for got, want in ((out[0], direct), (out[1], shot)):
        amap = np.asarray(got["anomaly_map"], dtype=np.float32)
        assert amap.shape == (predictor.image_size, predictor.image_size)
        np.testing.assert_allclose(amap, want.anomaly_map, atol=1e-5)
        assert got["score"] == pytest.approx(want.score, abs=1e-5)
        assert got["answer"] == want.answer and isinstance(got["answer"], str)
        assert_same_regions(got["regions"], region_dicts(want.anomaly_map, original_size(test_image)))
    assert not np.allclose(out[0]["anomaly_map"], out[1]["anomaly_map"])  # references change the map
    quiet = pyfunc.predict([{"image": str(test_image), "category": category, "generate": False}])[0]
    assert quiet["answer"] is None and quiet["score"] == pytest.approx(direct.score, abs=1e-5)

    with pytest.raises(Exception, match="image"):
        pyfunc.predict([{"category": category}])

    # Where the model runs is the loader's choice (MLflow's model_config), auto by default.
    on_cpu = mlflow.pyfunc.load_model("models:/anomalygpt@champion", model_config={"device": "cpu"})
    row = {"image": str(test_image), "category": category, "generate": False}
    assert on_cpu.predict([row])[0]["score"] == pytest.approx(direct.score, abs=1e-5)
    # How much of the map comes back: the loader's model_config, then params, then the row itself.
    no_maps = mlflow.pyfunc.load_model("models:/anomalygpt@champion", model_config={"map": "none"})
    assert set(no_maps.predict([row])[0]) == {"score", "answer", "regions"}
    assert "anomaly_map" in no_maps.predict([row], params={"map": "small"})[0]
    assert "anomaly_map" in no_maps.predict([{**row, "map": "full"}])[0]
    if not torch.cuda.is_available():
        with pytest.raises(Exception, match="torch sees no CUDA GPU"):
            mlflow.pyfunc.load_model("models:/anomalygpt@champion", model_config={"device": "cuda"})


def assert_same_regions(got: list[dict], want: list[dict]) -> None:
    """The same regions (boxes, areas, cells exactly; scores to float32 rounding)."""
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert {**a, "peak": 0, "mean": 0} == {**b, "peak": 0, "mean": 0}
        assert (a["peak"], a["mean"]) == pytest.approx((b["peak"], b["mean"]), abs=1e-5)


def test_ask_prints_regions_in_the_images_pixels_and_draws_their_boxes(
    tiny_checkpoint, sample_data_root, tmp_path
):
    """A 96 x 48 image outside an MVTec tree (the decoder's map: above 0.5 for this untrained model):
    one line per region, its box in the 96 x 48 pixels, and the boxes in magenta on the overlay."""
    import re
    import subprocess
    import sys

    from PIL import Image

    from evaluate.regions import find_regions
    from pipeline.inference import predict_one
    from train.model.predictor import Predictor

    image = tmp_path / "wide.png"
    with Image.open(sorted((sample_data_root / "coin" / "test" / "scratch").glob("*.png"))[0]) as im:
        im.resize((96, 48)).save(image)
    overlay = tmp_path / "overlay.png"
    args = [sys.executable, "-m", "pipeline", "ask", "--model", str(tiny_checkpoint), "--image", str(image)]
    proc = subprocess.run(
        [*args, "--question", "x", "--overlay", str(overlay)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    pred = predict_one(Predictor.from_checkpoint(tiny_checkpoint), image, category="object", question="x")
    want = find_regions(pred.anomaly_map, (96, 48))
    assert pred.score > 0.5 and want  # else this test would check nothing
    printed = [line for line in proc.stdout.splitlines() if line.startswith("region ")]
    assert len(printed) == len(want)
    pattern = re.compile(
        r"region (\d+): box \((\d+), (\d+)\)-\((\d+), (\d+)\) px, [\d.]+ % of the image, "
        r"peak ([\d.]+), mean [\d.]+, (.+)"
    )
    for number, (line, region) in enumerate(zip(printed, want, strict=True), start=1):
        found = pattern.fullmatch(line)
        assert found, line
        assert int(found[1]) == number and tuple(map(int, found.group(2, 3, 4, 5))) == region.box
        assert float(found[6]) == pytest.approx(region.peak, abs=0.006) and found[7] == region.position
        assert region.box[2] <= 96 and region.box[3] <= 48
    with Image.open(overlay) as im:
        pixels = np.asarray(im.convert("RGB"))
    magenta = (pixels[:, :, 0] == 255) & (pixels[:, :, 1] == 0) & (pixels[:, :, 2] == 255)
    assert magenta.any()  # the boxes are drawn


def test_ask_answers_writes_overlay_and_chats(tiny_checkpoint, sample_data_root, tmp_path):
    import subprocess
    import sys

    from PIL import Image

    image = sorted((sample_data_root / "coin" / "test" / "scratch").glob("*.png"))[0]
    overlay = tmp_path / "overlay.png"
    args = [sys.executable, "-m", "pipeline", "ask", "--model", str(tiny_checkpoint), "--image", str(image)]
    proc = subprocess.run(
        [*args, "--overlay", str(overlay)],
        input="Where is it?\nAnd the colour?\n\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("Q: ") and "coin" in lines[0]  # category taken from the MVTec path
    assert sum(line.startswith("A: ") for line in lines) == 3  # first answer + two chat turns
    with Image.open(overlay) as im:
        assert im.size[0] >= 2 * 64  # image | heatmap panels

    if not torch.cuda.is_available():
        cuda = [*args, "--device", "cuda", "--question", "x"]
        no_gpu = subprocess.run(cuda, capture_output=True, text=True)
        assert no_gpu.returncode == 2 and "torch sees no CUDA GPU" in no_gpu.stderr

    missing = subprocess.run(
        [*args, "--reference", str(tmp_path / "nope.png")], capture_output=True, text=True
    )
    assert missing.returncode == 2 and "image not found" in missing.stderr


def test_ask_overlays_of_two_images_with_one_name_do_not_collide(tiny_checkpoint, sample_data_root, tmp_path):
    import subprocess
    import sys

    from pipeline.commands.ask import overlay_path

    good = sorted((sample_data_root / "coin" / "test" / "good").glob("*.png"))[0]
    stain = sample_data_root / "coin" / "test" / "stain" / good.name
    assert stain.is_file()  # the same file name in two folders
    assert overlay_path(str(good), "o") != overlay_path(str(stain), "o")
    assert overlay_path(str(good), "o") == overlay_path(str(good.resolve()), "o")  # a rerun replaces it
    out = tmp_path / "overlays"
    base = [sys.executable, "-m", "pipeline", "ask", "--model", str(tiny_checkpoint), "--question", "x"]
    for image in (good, stain):
        proc = subprocess.run(
            [*base, "--image", str(image), "--out", str(out)], capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
    written = sorted(p.name for p in out.glob("*.png"))
    assert written == sorted([overlay_path(str(good), "x").name, overlay_path(str(stain), "x").name])
    assert all(name.startswith(good.stem + "_") and name.endswith("_anomaly.png") for name in written)
