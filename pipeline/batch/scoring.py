"""The two steps of the Ray Data pipeline: reading images (stateless tasks) and scoring them (one
:class:`~train.model.predictor.Predictor` per actor, the same as ``ask``, ``serve`` and evaluation).

Both are plain callables over numpy batches, so they run and are tested without Ray as well.
Batches carry strings as object arrays; a scored batch comes back as one JSON text per image
(``row``), which keeps the Arrow schema of Ray Data's blocks fixed whatever a row holds.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

READ_FIELDS = ("path", "category", "sha256", "width", "height", "error")
OVERLAY_MODES = ("anomalous", "all", "none")


def read_images(batch: dict[str, np.ndarray], size: int, done: dict[str, set[str]]) -> dict[str, np.ndarray]:
    """Read, hash and decode each image of ``batch`` (``path``, ``category``) to the model's size.

    An image already in the results with the same content (``done``: path -> hashes) is dropped;
    one that cannot be read or decoded keeps a row with the reason in ``error`` and a blank image.
    """
    from PIL import Image, UnidentifiedImageError

    from evaluate.data import load_image

    columns: dict[str, list[Any]] = {name: [] for name in READ_FIELDS}
    images = []
    for path, category in zip(batch["path"], batch["category"], strict=True):
        path = str(path)
        width = height = 0
        image, error, sha = None, "", ""
        try:
            data = Path(path).read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            if sha in done.get(path, ()):
                continue
            with Image.open(io.BytesIO(data)) as header:
                width, height = header.size
            image = load_image(io.BytesIO(data), size)  # type: ignore[arg-type]
        except UnidentifiedImageError:
            error = "not an image file: no decoder recognises its content"
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        images.append(image if image is not None else np.zeros((size, size, 3), np.uint8))
        for name, value in zip(READ_FIELDS, (path, str(category), sha, width, height, error), strict=True):
            columns[name].append(value)
    out = {name: np.array(values, dtype=object) for name, values in columns.items()}
    out["image"] = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return out


class BatchScorer:
    """One model replica of the actor pool: scores a batch of read images, writes their overlays."""

    def __init__(self, checkpoint: str, options: dict[str, Any]) -> None:
        """``options``: device, threads, generate, reference_roots, max_references, overlays,
        out, model, model_version (see pipeline.batch.job)."""
        import torch

        from pipeline.references import ReferenceFolders
        from train.model.predictor import Predictor

        torch.set_num_threads(int(options["threads"]))
        self.options = options
        self.predictor = Predictor.from_checkpoint(
            checkpoint, device=options["device"], bank_budget=options["bank_budget"]
        )
        roots = options["reference_roots"]
        self.references = ReferenceFolders(roots, options["max_references"]) if roots else None
        self.generate = bool(options["generate"]) and self.predictor.model.llm is not None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows: list[dict[str, Any]] = []
        by_category: dict[str, list[int]] = {}
        for i, error in enumerate(batch["error"]):
            if error:
                rows.append({"path": str(batch["path"][i]), "error": str(error)})
            else:
                by_category.setdefault(str(batch["category"][i]), []).append(i)
        for category, indices in by_category.items():
            rows += self._score(category, batch, indices)
        return {"row": np.array([json.dumps(r) for r in rows], dtype=object)}

    def _score(self, category: str, batch: dict[str, np.ndarray], indices: list[int]) -> list[dict]:
        from evaluate.regions import find_regions
        from pipeline.inference import default_question
        from train.model.config import DECISION_POINT
        from train.model.conversation import parse_answer

        references, digest, bank = self._bank(category)
        images = [np.ascontiguousarray(batch["image"][i]) for i in indices]
        predictions = self.predictor.predict(
            images,
            [category] * len(images),
            memory_bank=bank,
            questions=default_question(category),
            generate=self.generate,
        )
        rows = []
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        for i, image, pred in zip(indices, images, predictions, strict=True):
            size = (int(batch["width"][i]), int(batch["height"][i]))
            score = None if pred.score is None else float(pred.score)
            anomalous = None if score is None else score > DECISION_POINT
            row = {
                "path": str(batch["path"][i]),
                "sha256": str(batch["sha256"][i]),
                "category": category,
                "width": size[0],
                "height": size[1],
                "score": score,
                "anomalous": anomalous,
                "answer": pred.answer,
                "positions": parse_answer(pred.answer).positions if pred.answer else [],
                "regions": [r.to_dict() for r in find_regions(pred.anomaly_map, size)],
                "overlay": self._overlay(
                    image,
                    pred,
                    row_path=str(batch["path"][i]),
                    anomalous=anomalous,
                    sha=str(batch["sha256"][i]),
                    category=category,
                ),
                "model": self.options["model"],
                "model_version": self.options["model_version"],
                "references": references,
                "references_digest": digest,
                "inspected_at": stamp,
            }
            rows.append(row)
        return rows

    def _bank(self, category: str) -> tuple[int, str | None, Any]:
        """(how many references, their digest, the bank) for ``category``; (0, None, None) when
        no folder has normal images of it: then the decoder's map alone."""
        if self.references is None:
            return 0, None, None
        size = self.predictor.image_size
        references, cover = self.references.split(category, size)
        if not references and not cover:
            return 0, None, None
        return (
            len(references) + len(cover),
            self.references.digest(category, size),
            self.predictor.memory_bank(category, references, pinned=True, cover=cover),
        )

    def _overlay(
        self, image: np.ndarray, pred: Any, row_path: str, anomalous: bool | None, sha: str, category: str
    ) -> str | None:
        """The overlay PNG's path relative to the output folder, when ``overlays`` asks for one."""
        from pipeline.inference import write_overlay

        mode = self.options["overlays"]
        if mode == "none" or (mode == "anomalous" and not anomalous):
            return None
        relative = Path("overlays") / category / f"{Path(row_path).stem}_{sha[:8]}.png"
        title = category if pred.score is None else f"{category}: score {pred.score:.3f}"
        write_overlay(image, pred, Path(self.options["out"]) / relative, title)
        return str(relative)
