"""The evaluation actor: loads the model once, scores batches, keeps per-category pixel histograms.

A plain class (``ray.remote`` wraps it in evaluate.job), so it can be used and tested without Ray.
Results that travel back are small: per image a row (score, answer, regions, overlay PNG bytes) and,
once per category, the sparse pixel histogram; maps never leave the actor.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

from evaluate.data import EvalItem, gt_positions, image_size, load_ground_truth, load_image, map_position
from evaluate.overlay import encode_png, render_overlay
from evaluate.pixel_state import PixelMetricState
from evaluate.regions import best_box_iou, find_regions, region_dicts
from train.model.config import DECISION_POINT

log = logging.getLogger(__name__)


class EvalWorker:
    """One model replica. ``threads`` torch threads: fixed so every batch computes the same bits
    whichever actor runs it."""

    def __init__(
        self,
        checkpoint: str,
        threads: int,
        pixel: dict[str, Any],
        write_maps: bool,
        device: str = "cpu",
        bank_budget: int | None = None,
    ) -> None:
        import torch

        from train.model.predictor import Predictor  # torch: in the actor, not in the driver's import

        torch.set_num_threads(threads)
        self.predictor = Predictor.from_checkpoint(checkpoint, device=device, bank_budget=bank_budget)
        self.size = self.predictor.image_size
        self.pixel = pixel  # PixelMetricState arguments: bins, lo, hi
        self.write_maps = write_maps
        self.states: dict[tuple[str, str], PixelMetricState] = {}
        """Pixel histograms per (category, map): ``main`` (the reported map) and, with a memory
        bank, ``decoder`` (the decoder's map alone) and ``baseline`` (the plain nearest-neighbour
        memory), reported beside."""

    def info(self) -> dict[str, Any]:
        """What the driver needs to know about the model (also proves the actor is up)."""
        m = self.predictor.model
        return {
            "device": str(next(m.parameters()).device),
            "image_size": self.size,
            "has_map": m.decoder is not None,
            "has_llm": m.llm is not None,
        }

    def build_bank(self, category: str, paths: list[str], cover: Sequence[str] = ()) -> Any:
        """The category's memory bank from its k references and the confirmed normals ``cover``
        (built once, shared by all actors)."""
        references = [load_image(p, self.size) for p in paths]
        bank = self.predictor.memory_bank(
            category, references, cover=[load_image(p, self.size) for p in cover]
        )
        # travels through the object store: a CPU copy, the predictor's cached bank stays as it is
        return dataclasses.replace(bank, features=[f.cpu() for f in bank.features])

    def build_baseline(self, category: str, paths: list[str]) -> Any:
        """The plain nearest-neighbour memory of the same references (the model's floor)."""
        return self.predictor.baseline_bank(category, [load_image(p, self.size) for p in paths])

    def predict(
        self, items: list[EvalItem], bank: Any, question: str, generate: bool, baseline: Any = None
    ) -> list[dict[str, Any]]:
        """Rows for one batch of one category: image, label, score, answer, gt_positions (the grid
        cells of the ground-truth regions of an anomalous image with a mask, else None),
        map_position (the cell of its map's peak, else None), regions (evaluate.regions, boxes in
        the image file's own pixels) and region_box_iou (see :func:`region_box_iou`)
        (+ error, overlay)."""
        rows, loaded, arrays = [], [], []
        for item in items:
            try:
                arrays.append(load_image(item.path, self.size))
                loaded.append(item)
            except Exception as exc:  # a file that passed the header check but does not decode
                rows.append(_row(item, error=f"unreadable image: {type(exc).__name__}: {exc}"))
        if not loaded:
            return rows
        predictions = self.predictor.predict(
            arrays,
            [i.category for i in loaded],
            memory_bank=bank,
            questions=question,
            generate=generate,
            baseline_bank=baseline,
        )
        for item, image, pred in zip(loaded, arrays, predictions, strict=True):
            gt = load_ground_truth(item.mask_path, self.size, self.pixel["threshold"])
            if item.in_pixel_metrics:
                self._add_pixels((item.category, "main"), pred.anomaly_map, gt, item)
                self._add_pixels((item.category, "decoder"), pred.decoder_map, gt, item)
                self._add_pixels((item.category, "baseline"), pred.baseline_map, gt, item)
            row = _row(item, score=pred.score, answer=pred.answer)
            row["decoder_score"] = pred.decoder_score
            row["baseline_score"] = pred.baseline_score
            row["regions"] = region_dicts(pred.anomaly_map, image_size(item.path))
            row["region_box_iou"] = region_box_iou(item, pred, gt)
            if item.label and item.mask_path:
                row["gt_positions"] = gt_positions(gt)
                if pred.anomaly_map is not None:
                    row["map_position"] = map_position(pred.anomaly_map)
            if self.write_maps:
                title = f"{item.relpath}  label={'anomalous' if item.label else 'normal'}"
                if pred.score is not None:
                    title += f"  score={pred.score:.3f}"
                picture = render_overlay(
                    image,
                    pred.anomaly_map,
                    gt if item.mask_path else None,
                    title,
                    pred.answer,
                    (self.pixel["lo"], self.pixel["hi"]),
                )
                row["overlay"] = encode_png(picture)
            rows.append(row)
        return rows

    def _add_pixels(self, key: tuple[str, str], amap, gt, item: EvalItem) -> None:
        if amap is None:
            return
        state = self.states.get(key)
        if state is None:
            state = self.states[key] = PixelMetricState(
                self.pixel["bins"], self.pixel["lo"], self.pixel["hi"]
            )
        try:
            state.update(amap, gt)
        except ValueError as exc:
            raise ValueError(f"{item.path}: {exc}") from exc

    def take_state(self, category: str, which: str = "main") -> PixelMetricState | None:
        """Hand over (and forget) this actor's pixel histogram of ``category`` for map ``which``
        (``main``, ``decoder`` or ``baseline``)."""
        return self.states.pop((category, which), None)


def region_box_iou(item: EvalItem, prediction: Any, gt: Any) -> float | None:
    """For a detected defect (anomalous, score above the boundary, a non-empty ground-truth mask):
    the IoU of its best region box with the box of the ground truth, both at the map's size; None
    for any other image (a missed defect is the image metrics' business, not the boxes')."""
    detected = item.label and prediction.score is not None and prediction.score > DECISION_POINT
    if not (detected and item.mask_path and gt.any()):
        return None
    return best_box_iou(find_regions(prediction.anomaly_map), gt)


def _row(item: EvalItem, score: float | None = None, answer: str | None = None, error: str | None = None):
    return {
        "image": item.relpath,
        "category": item.category,
        "label": item.label,
        "defect": item.defect,
        "score": score,
        "answer": answer,
        "error": error,
        "gt_positions": None,
        "map_position": None,
        "regions": None,
        "region_box_iou": None,
    }
