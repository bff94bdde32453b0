"""The registered model as an MLflow pyfunc: checkpoint folder in, maps, scores and answers out.

Logged as "models from code" (this file is stored with the model; nothing is pickled). The logged
model holds the trainable weights and config (its ``checkpoint`` artifact) and, as code paths, the
packages this file imports (pipeline, train, evaluate, synth), so it loads from any folder of a
machine where the dependencies (its requirements.txt) are installed; the frozen encoder and LLM
come from those packages when the checkpoint loads.

    model = mlflow.pyfunc.load_model("models:/anomalygpt@champion")
    model.predict([{"image": base64_of_png, "category": "bottle", "references": [base64_of_good_png]}])
    # [{"score": 0.83, "answer": "Yes, ...", "regions": [{"box": [412, 96, 530, 188], ...}],
    #   "anomaly_map": [[...64 floats], ...64 rows]}]

Rows and options: ``pipeline.pyfunc_io`` (``image`` as base64 or a data: URI, or as a path under
the folder ``model_config={"files_root": ...}`` or $ANOMALYGPT_PYFUNC_FILES_ROOT allows; ``map``
none | small | full per row, as ``params={"map": ...}`` or as ``model_config``). Load with
``model_config={"device": "cuda"}`` (or ``cpu``; default ``auto``: CUDA when a GPU is visible) to
choose where the model runs. Served with ``mlflow models serve``: see the README.
"""

from __future__ import annotations

from typing import Any

import mlflow.models
import mlflow.pyfunc
import pandas as pd


class AnomalyGPTPyfunc(mlflow.pyfunc.PythonModel):
    """Loads the checkpoint once per process; predicts row by row (rows may differ in references;
    rows with the same references share one memory bank)."""

    def load_context(self, context: Any) -> None:
        from pipeline.pyfunc_io import DEFAULT_MAP, files_root, map_mode
        from pipeline.pyfunc_logging import CHECKPOINT_ARTIFACT
        from train.model.predictor import Predictor

        config = getattr(context, "model_config", None) or {}
        self.default_map = map_mode(config.get("map"), DEFAULT_MAP)
        self.files_root = files_root(config.get("files_root"))
        device = config.get("device", "auto")
        self.predictor = Predictor.from_checkpoint(context.artifacts[CHECKPOINT_ARTIFACT], device=device)

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """One JSON-ready dict per row: ``score``, ``answer``, ``regions`` (boxes in the pixels of
        the image as sent) and, unless ``map`` is none, ``anomaly_map``. MLflow hands the rows as a
        DataFrame (``inputs`` too, by the logged signature); a list of dicts works as well. The
        DataFrame hint is one MLflow derives no signature from: a signature from type hints would
        make its server refuse dataframe_records."""
        from pipeline.inference import original_size, predict_one
        from pipeline.pyfunc_io import image_source, map_mode, read_rows, result

        default = map_mode((params or {}).get("map"), self.default_map)
        out = []
        for i, row in enumerate(read_rows(model_input)):
            image = image_source(row.image, self.files_root, f"row {i}: image")
            references = [
                image_source(r, self.files_root, f"row {i}: reference {j + 1}")
                for j, r in enumerate(row.references)
            ]
            pred = predict_one(
                self.predictor,
                image,
                category=row.category,
                question=row.question,
                references=references,
                generate=row.generate,
            )
            out.append(result(pred, map_mode(row.map, default), original_size(image)))
        return out


mlflow.models.set_model(AnomalyGPTPyfunc())
