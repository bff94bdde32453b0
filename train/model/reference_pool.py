"""Encoded normal training images per category, from which few-shot training draws its banks.

The encoder is frozen, so each normal image is encoded once (with its rotations) when training
starts; every few-shot micro-batch then builds its bank from these features without touching the
encoder. The bank calibrations that do not depend on training (the bank's own distances) are
measured once here; the decoder's calibration, and that of the fused map, change as it trains and
are measured per bank (from the distance maps kept here).

A one-reference bank cannot show how much normal images vary: held out against its own rotations
its reference finds them all but identical. The pool therefore measures, per category, where
normal images end on one-reference banks (each image's bank scoring a few of the others, pooled).
One-reference training banks use that calibration, and ``one_shot_calibrations`` writes it into the
checkpoint, so that a user's 1-shot map puts its boundary where training put it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from train.model.config import Fusion, OneShotCalibration
from train.model.memory_bank import (
    ROTATIONS,
    UNCALIBRATED,
    Calibration,
    MemoryBank,
    combine_layers,
    with_rotations,
)

ONE_SHOT_SCORED = 4
"""How many of the category's other images each image's one-reference bank scores (the next ones,
wrapping): all n - 1 would grow as n squared; 4 x n maps (56 for 14 images) are plenty to fit."""


class BankModel(Protocol):
    """What the pool needs of the model (AnomalyGPT): its encoder, decoder and bank settings."""

    cfg: Any
    encoder: torch.nn.Module
    decoder: torch.nn.Module | None

    def encode_all(self, images: torch.Tensor) -> list[torch.Tensor]: ...

    def bank_layers(self, patch_maps: list[torch.Tensor]) -> list[torch.Tensor]: ...

    def rotations_for(self, shots: int) -> int: ...

    def new_bank(self, patch_maps: list[torch.Tensor], shots: int, rotations: int) -> MemoryBank: ...

    def calibrate(self, normal_maps: torch.Tensor) -> Calibration: ...

    def calibrate_distances(self, layer_maps: torch.Tensor) -> Calibration: ...

    def calibrate_fused(
        self, nn: Calibration, decoder: Calibration, distances: torch.Tensor, decoder_maps: torch.Tensor
    ) -> Calibration: ...

    def text_map(self, patch_maps, categories, size): ...


@dataclass
class NormalMeasure:
    """Where normal images end on one kind of bank (one image, or all the others), and the distance
    maps that showed it, kept for the fused map's calibration: that needs the decoder as it is when
    a bank is drawn."""

    calibration: Calibration = UNCALIBRATED
    distances: torch.Tensor | None = None
    """(N, 1, H, W) on the CPU, the bank's layers weighed as ``calibration`` says."""
    scored: list[int] = field(default_factory=list)
    """Which image of the category each distance map is of."""

    @classmethod
    def of(cls, model: BankModel, layer_maps: torch.Tensor, scored: list[int]) -> NormalMeasure:
        """From per-layer distance maps (N, L, H, W) of normal images the banks do not hold."""
        calibration = model.calibrate_distances(layer_maps)
        return cls(calibration, combine_layers(layer_maps, calibration.layer_weights).cpu(), scored)

    def fused(
        self,
        model: BankModel,
        decoder: Calibration,
        decoder_maps: torch.Tensor,
        of: list[int],
        fusion: Fusion | None = None,
    ) -> Calibration:
        """Where normal ends on these banks' map fused as ``fusion`` (None: the model's), from the
        kept distances of the images ``of``, whose decoder maps are given in that order."""
        position = {image: i for i, image in enumerate(of)}
        kept = [k for k, image in enumerate(self.scored) if image in position]
        distances = self.distances[kept].to(decoder_maps.device)
        ordered = decoder_maps[[position[self.scored[k]] for k in kept]]
        return model.calibrate_fused(self.calibration, decoder, distances, ordered, fusion)


@dataclass
class PoolCategory:
    """One category: patch maps of its images, rotation-major (R x N maps per layer)."""

    patch_maps: list[torch.Tensor]
    sources: list[str]
    rotations: int
    one_shot: NormalMeasure = field(default_factory=NormalMeasure)
    """Of one-image banks: each image's bank scoring others of the category (``ONE_SHOT_SCORED``), pooled."""
    all_shots: NormalMeasure = field(default_factory=NormalMeasure)
    """Of a bank of all the other images (each image held out in turn)."""

    def maps_of(self, chosen: list[int], rotations: int) -> list[torch.Tensor]:
        """Patch maps of the chosen images, rotation-major with ``rotations`` rotations."""
        n = len(self.sources)
        index = torch.tensor([r * n + j for r in range(rotations) for j in chosen])
        return [m[index] for m in self.patch_maps]


class ReferencePool:
    """Per category, the encoded normal images and their sources (to hold a query's own source out)."""

    def __init__(self, categories: dict[str, PoolCategory]) -> None:
        self.categories = categories

    @classmethod
    def build(cls, model: BankModel, images: dict[str, torch.Tensor], sources: dict[str, list[str]]):
        rotations = ROTATIONS if model.cfg.memory_bank.rotations else 1
        size = None
        out = {}
        for category, batch in images.items():
            size = tuple(batch.shape[-2:])
            maps = model.encode_all(with_rotations(batch) if rotations > 1 else batch)
            out[category] = cls._calibrated(model, maps, sources[category], rotations, size)
        return cls(out)

    @staticmethod
    def _calibrated(model, maps, sources: list[str], rotations: int, size) -> PoolCategory:
        n = len(sources)
        entry = PoolCategory([m.cpu() for m in maps], sources, rotations)
        if n < 2:
            return entry
        entry.one_shot = NormalMeasure.of(model, *_one_shot_distances(model, entry, size))
        everyone = list(range(n))
        upright = model.bank_layers([m[:n] for m in maps])
        held = _bank(model, entry, everyone).layer_distance_maps(upright, size, everyone)
        entry.all_shots = NormalMeasure.of(model, held, everyone)
        return entry

    def choose(self, category: str, source: str, one_shot: bool, generator: torch.Generator) -> list[int]:
        """Pool indices of the references: one drawn at random, or all; never ``source`` itself."""
        entry = self.categories.get(category)
        others = [] if entry is None else [j for j, s in enumerate(entry.sources) if s != source]
        if one_shot and others:
            return [others[int(torch.randint(len(others), (), generator=generator))]]
        return others

    def bank(
        self, model: BankModel, category: str, source: str, one_shot: bool, generator: torch.Generator
    ) -> MemoryBank | None:
        """A bank for a query made from ``source``: one other normal image or all of them; None when
        the category has no other image."""
        chosen = self.choose(category, source, one_shot, generator)
        if not chosen:
            return None
        entry = self.categories[category]
        bank = _bank(model, entry, chosen)
        measure = entry.one_shot if one_shot else entry.all_shots
        bank.nn_calibration = measure.calibration
        if model.decoder is not None:  # on every other image, as the one-shot distances are
            others = self.choose(category, source, False, generator)
            with torch.no_grad():
                upright = [m.to(_device(model)) for m in entry.maps_of(others, 1)]
                size = (model.cfg.image_size, model.cfg.image_size)
                decoder_maps = model.text_map(upright, [category] * len(others), size)[1]
            bank.decoder_calibration = model.calibrate(decoder_maps)
            bank.fused_calibration = measure.fused(
                model, bank.decoder_calibration, decoder_maps, others, bank.fusion
            )
        return bank

    @torch.no_grad()
    def one_shot_calibrations(self, model: BankModel) -> dict[str, OneShotCalibration]:
        """Per category of two or more images, where its normal images end on one-reference banks:
        the banks' distances (pooled when the pool was built; the encoder is frozen), the
        decoder's map of every pooled image as it is now (it moves as training goes on), and the
        two fused."""
        size = (model.cfg.image_size, model.cfg.image_size)
        out = {}
        for category, entry in self.categories.items():
            n = len(entry.sources)
            if n < 2:
                continue
            nn, decoder, fused, unseen = entry.one_shot.calibration, None, None, None
            if model.decoder is not None:
                upright = [m.to(_device(model)) for m in entry.maps_of(list(range(n)), 1)]
                decoder_maps = model.text_map(upright, [category] * n, size)[1]
                decoder = model.calibrate(decoder_maps)
                everyone = list(range(n))
                fused = entry.one_shot.fused(model, decoder, decoder_maps, everyone)
                mb = model.cfg.memory_bank
                if mb.unseen_fusion not in (None, mb.fusion):  # for the categories training never saw
                    unseen = entry.one_shot.fused(model, decoder, decoder_maps, everyone, mb.unseen_fusion)
            weights = None if nn.layer_weights is None else tuple(round(w, 6) for w in nn.layer_weights)
            out[category] = OneShotCalibration(
                _rounded(nn), _rounded(decoder), weights, _rounded(fused), _rounded(unseen)
            )
        return out


def _one_shot_distances(model: BankModel, entry: PoolCategory, size) -> tuple[torch.Tensor, list[int]]:
    """Each image's one-reference bank scoring the next ``ONE_SHOT_SCORED`` images of the category:
    their per-layer distance maps, pooled, and which image each map is of."""
    n = len(entry.sources)
    upright = [m.to(_device(model)) for m in entry.maps_of(list(range(n)), 1)]
    pooled, scored = [], []
    for j in range(n):
        others = [(j + k) % n for k in range(1, min(n, ONE_SHOT_SCORED + 1))]
        queries = model.bank_layers([m[others] for m in upright])
        pooled.append(_bank(model, entry, [j]).layer_distance_maps(queries, size))
        scored += others
    return torch.cat(pooled), scored


def _rounded(calibration: Calibration | None) -> tuple[float, float] | None:
    """(level, top) as the checkpoint's config writes them (6 digits)."""
    return None if calibration is None else (round(calibration.level, 6), round(calibration.top, 6))


def _bank(model: BankModel, entry: PoolCategory, chosen: list[int]) -> MemoryBank:
    rotations = min(model.rotations_for(len(chosen)), entry.rotations)
    maps = [m.to(_device(model)) for m in entry.maps_of(chosen, rotations)]
    return model.new_bank(maps, len(chosen), rotations)


def _device(model: BankModel) -> torch.device:
    return next(model.encoder.parameters()).device
