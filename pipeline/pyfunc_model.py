"""The registered model as an MLflow pyfunc: checkpoint folder in, maps, scores and answers out.

Logged as "models from code" (this file is stored with the model; nothing is pickled). The logged
model holds only the trainable weights and config (its ``checkpoint`` artifact); the frozen encoder
and LLM come from the installed packages or the configured paths when the checkpoint loads.

    model = mlflow.pyfunc.load_model("models:/anomalygpt@champion")
    model.predict([{"image": "bottle.png", "category": "bottle", "references": ["good.png"]}])

Load with ``model_config={"device": "cuda"}`` (or ``cpu``; default ``auto``: CUDA when a GPU
is visible) to choose where the model runs.

Each row: ``image`` (a file path or a ``data:image/...;base64,`` URI), optional ``category``,
``question``, ``references`` (normal images for few-shot) and ``generate`` (false: map and score
only, no answer). Each result: ``score``, ``anomaly_map`` (H x W floats) and ``answer``.
"""

from __future__ import annotations

from typing import Any

import mlflow.models
import mlflow.pyfunc
import pydantic


class Row(pydantic.BaseModel):
    image: str
    category: str = "object"
    question: str | None = None
    references: list[str] = []
    generate: bool = True


class Result(pydantic.BaseModel):
    score: float
    anomaly_map: list[list[float]]
    answer: str | None = None


class AnomalyGPTPyfunc(mlflow.pyfunc.PythonModel):
    """Loads the checkpoint once per process; predicts row by row (rows may differ in references;
    rows with the same references share one memory bank)."""

    def load_context(self, context: Any) -> None:
        from pipeline.registry import CHECKPOINT_ARTIFACT
        from train.model.predictor import Predictor

        device = (getattr(context, "model_config", None) or {}).get("device", "auto")
        self.predictor = Predictor.from_checkpoint(context.artifacts[CHECKPOINT_ARTIFACT], device=device)

    def predict(self, model_input: list[Row]) -> list[Result]:
        from pipeline.inference import predict_one

        out = []
        for row in model_input:
            pred = predict_one(
                self.predictor,
                row.image,
                category=row.category,
                question=row.question,
                references=row.references,
                generate=row.generate,
            )
            out.append(Result(score=pred.score, anomaly_map=pred.anomaly_map.tolist(), answer=pred.answer))
        return out


mlflow.models.set_model(AnomalyGPTPyfunc())
