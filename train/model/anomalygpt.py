"""AnomalyGPT: frozen encoder -> decoder map (+ few-shot map) -> prompt learner -> LLM answer."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core.memory import release_freed_memory
from train.model.batch import Batch, Prediction
from train.model.config import Fusion, ModelConfig
from train.model.conversation import IGNORE, pad_batch, tables, tokenize_turns
from train.model.decoder import AnomalyDecoder
from train.model.drafting import DRAFT_TOKENS, Drafter, accepted
from train.model.encoder_base import ImageEncoder
from train.model.losses import dice_loss, focal_loss
from train.model.map_reading import agreeing_samples, boundary_gain
from train.model.memory_bank import (
    MIN_IMAGES_FOR_FIT,
    ROTATIONS,
    Calibration,
    MapGuard,
    MemoryBank,
    combine_layers,
    gaussian_smooth,
    pairwise_auroc,
    squash,
    with_rotations,
)
from train.model.prompt_learner import PromptLearner, rms_scale
from train.model.reference_pool import ReferencePool
from train.model.text_features import PromptTextFeatures

ENCODE_CHUNK = 32  # reference images encoded at once when a bank is built (bounds peak memory)
SCORE_CHUNK = 16  # references scored at once when a bank is calibrated: their full-size maps are transient


def _chunked(n: int, compute: Callable[[int, int], torch.Tensor]) -> torch.Tensor:
    """``compute(start, stop)`` over ``SCORE_CHUNK`` slices of ``range(n)``, written into one
    tensor as they come: the same values as concatenating the chunks, without holding the chunks
    and their concatenation at once (for a large category, twice a few hundred MB)."""
    out = None
    for start in range(0, n, SCORE_CHUNK):
        stop = min(n, start + SCORE_CHUNK)
        part = compute(start, stop)
        if out is None:
            out = part.new_empty((n, *part.shape[1:]))
        out[start:stop] = part
        del part
    return out


def _peaks(maps: torch.Tensor) -> torch.Tensor:
    """Each map's highest value: (N, ...) -> (N,)."""
    return maps.flatten(1).amax(dim=1)


class AnomalyGPT(nn.Module):
    """Parts are None when their Table 4 switch is off. Build with ``train.model.build_model``."""

    def __init__(
        self,
        cfg: ModelConfig,
        encoder: ImageEncoder,
        text_features: PromptTextFeatures | None,
        decoder: AnomalyDecoder | None,
        prompt_learner: PromptLearner | None,
        llm: nn.Module | None,
        tokenizer: Any,
        image_proj: nn.Linear | None,
        image_token_rms: float | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.text_features = text_features
        self.decoder = decoder
        self.prompt_learner = prompt_learner
        self.llm = llm
        self.tokenizer = tokenizer
        self.image_proj = image_proj
        self.image_token_rms = image_token_rms
        self.reference_pool: ReferencePool | None = None
        """Encoded normal training images for few-shot training (set by ``build_reference_pool``)."""
        self.answer_phrasings: tuple[str, ...] = ()
        """Answers in the phrasings training wrote, proposed ahead while decoding (``drafting``);
        empty: every token decoded on its own. Only the speed depends on them."""
        self._drafter: tuple[tuple[str, ...], Drafter] | None = None
        self.encoder_calls = 0  # images encoded; lets callers check that banks are not rebuilt
        if llm is not None:
            conv = tables()["conversation"]
            self._start_ids = self._ids(conv["prompt_start"])
            self._end_ids = self._ids(conv["image_end"])

    # --- pieces -----------------------------------------------------------------------------
    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.llm.get_input_embeddings()(ids)

    def train(self, mode: bool = True) -> AnomalyGPT:
        super().train(mode)
        if self.llm is not None and not self.cfg.lora.trainable:
            self.llm.eval()  # frozen LLM: no LoRA dropout
        return self

    def encode(self, images: torch.Tensor):
        self.encoder_calls += images.shape[0]
        dtype = next(self.encoder.parameters()).dtype  # bf16/fp16 under DeepSpeed, else float32
        with torch.no_grad():
            return self.encoder(images.to(dtype))

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The training losses: DDP and DeepSpeed engines call ``forward``."""
        return self.training_losses(batch)

    def text_map(self, patch_maps, categories, size):
        """Per-layer probabilities and the decoder's anomaly map (B, 1, H, W)."""
        text = self.text_features(categories, patch_maps[0].device)
        return self.decoder(patch_maps, text, size)

    def _prefix(self, global_embed: torch.Tensor, prompts: torch.Tensor | None) -> torch.Tensor:
        """[BOS] "### Human: <Img>" [image token] "</Img> " [prompt tokens] as embeddings (B, P, H)."""
        b, device = global_embed.shape[0], global_embed.device
        start = list(self._start_ids)
        if self.tokenizer.bos_token_id is not None:
            start = [self.tokenizer.bos_token_id, *start]
        start_e = self._embed(torch.tensor(start, device=device)).unsqueeze(0).expand(b, -1, -1)
        end_e = self._embed(torch.tensor(self._end_ids, device=device)).unsqueeze(0).expand(b, -1, -1)
        image_token = self.image_proj(global_embed).unsqueeze(1)
        if self.image_token_rms is not None:
            image_token = rms_scale(image_token, self.image_token_rms)
        parts = [start_e, image_token, end_e] + ([prompts] if prompts is not None else [])
        return torch.cat(parts, dim=1)

    def _prompts(self, anomaly_map, global_embed):
        if self.prompt_learner is None:
            return None
        return self.prompt_learner(anomaly_map, global_embed)

    # --- training ---------------------------------------------------------------------------
    def training_losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        """``loss`` (weighted total), ``ce``, ``focal``, ``dice`` for one batch."""
        cfg, images = self.cfg, batch.images
        size = tuple(images.shape[-2:])
        enc = self.encode(images)
        zero = images.new_zeros(())
        focal, dice, ce = zero, zero, zero
        anomaly_map = None
        if self.decoder is not None:
            layer_probs, anomaly_map = self.text_map(enc.patch_maps, batch.categories, size)
            if batch.masks is not None:
                masks = batch.masks.to(images.dtype)
                focal = sum(focal_loss(p, masks, cfg.loss.focal_gamma) for p in layer_probs)
                dice = sum(dice_loss(p[:, 1:2], masks) for p in layer_probs)
        prompt_map = anomaly_map
        if batch.masks is not None and self._few_shot_step(batch):
            prompt_map = self._few_shot_training_map(batch, enc.patch_maps, anomaly_map, size)
        keep = None
        if self.llm is not None:
            if cfg.map_consistent_answers and batch.masks is not None and prompt_map is not None:
                prompt_map, keep = self._readable_map(prompt_map, batch)
            prompts = self._prompts(prompt_map, enc.global_embed)
            ce = self._lm_loss(self._prefix(enc.global_embed, prompts), batch.conversations, keep)
        total = cfg.loss.ce * ce + cfg.loss.focal * focal + cfg.loss.dice * dice
        return {"loss": total, "ce": ce, "focal": focal, "dice": dice}

    def _readable_map(self, prompt_map: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompt map after the boundary gain, and which samples' answers agree with it
        (``train.model.map_reading``); drawn from ``batch.seed``."""
        labels = batch.masks.flatten(1).amax(dim=1) > 0.5
        keep = agreeing_samples(prompt_map, labels)
        generator = torch.Generator().manual_seed(batch.seed + 2)
        return boundary_gain(prompt_map, generator, self.cfg.map_gain_prob), keep

    def tokenize(self, conversations) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Padded text ids, labels (-100 off the assistant text) and attention mask, (B, T) each."""
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id
        seqs = [tokenize_turns(self.tokenizer, turns, self.cfg.llm.max_tgt_len) for turns in conversations]
        ids, labels, mask = pad_batch(seqs, pad_id)
        return torch.tensor(ids), torch.tensor(labels), torch.tensor(mask)

    def _lm_loss(self, prefix: torch.Tensor, conversations, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token cross-entropy on the assistant text of the ``keep`` samples (all by default).
        The vocabulary projection runs only at the labelled positions: over a 49k vocabulary it is
        a fifth of a small LLM's step."""
        ids, labels, mask = (t.to(prefix.device) for t in self.tokenize(conversations))
        if keep is not None:
            labels = labels.masked_fill(~keep.to(labels.device).view(-1, 1), IGNORE)
        b, p = prefix.shape[:2]
        embeds = torch.cat([prefix, self._embed(ids)], dim=1)
        attention = torch.cat([mask.new_ones(b, p), mask], dim=1)
        targets = torch.cat([labels.new_full((b, p), IGNORE), labels], dim=1)[:, 1:]
        hidden = self.llm.get_decoder()(inputs_embeds=embeds, attention_mask=attention).last_hidden_state
        labelled = targets != IGNORE
        if not bool(labelled.any()):
            return hidden.sum() * 0.0  # no sample's answer agrees with its map: nothing to learn
        logits = self.llm.get_output_embeddings()(hidden[:, :-1][labelled])
        return F.cross_entropy(logits.float(), targets[labelled])

    # --- inference --------------------------------------------------------------------------
    def bank_layers(self, patch_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """The encoder maps the memory bank uses (``memory_bank.layers``)."""
        layers = self.cfg.memory_bank.layers
        return list(patch_maps) if layers is None else [patch_maps[i] for i in layers]

    def rotations_for(self, shots: int) -> int:
        """Rotations per reference in a bank of ``shots`` references (1: none)."""
        mb = self.cfg.memory_bank
        return ROTATIONS if mb.rotations and shots <= mb.rotation_max_shots else 1

    def encode_all(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Patch maps of many images, encoded in chunks. ``images`` may also be uint8 in 0-255 on the
        CPU (``Predictor.image_batch``): each chunk is then converted to [0, 1] as ``Predictor.to_tensor``
        converts and moved, so a large category's references never exist as one float tensor."""
        device = next(self.encoder.parameters()).device
        parts = []
        for chunk in images.split(ENCODE_CHUNK):
            if chunk.dtype == torch.uint8:
                chunk = chunk.float().div_(255.0).to(device)
            parts.append(self.encode(chunk).patch_maps)
        return [torch.cat(layer) for layer in zip(*parts, strict=True)]

    def new_bank(
        self, patch_maps: list[torch.Tensor], shots: int, rotations: int, category: str | None = None
    ) -> MemoryBank:
        """An uncalibrated bank of the encoder's ``patch_maps`` (the bank layers are taken here)."""
        mb = self.cfg.memory_bank
        layers = self.bank_layers(patch_maps)
        bank = MemoryBank.from_patch_maps(layers, shots, rotations, category, smoothing=mb.smoothing)
        bank.fusion = mb.fusion_for(category)
        return bank

    def calibrate(self, normal_maps: torch.Tensor) -> Calibration:
        """Where normal ends on maps of normal images (``memory_bank.false_alarm_rate``)."""
        return Calibration.from_maps(normal_maps, self.cfg.memory_bank.false_alarm_rate)

    def calibrate_distances(self, layer_maps: torch.Tensor) -> Calibration:
        """Where normal ends on a bank's distances, from its per-layer maps (N, L, H, W) of normal
        images it does not hold; this also weighs the bank's layers (``memory_bank.layer_weighting``)."""
        mb = self.cfg.memory_bank
        if mb.layer_weighting == "equal":
            return Calibration.from_maps(combine_layers(layer_maps, None), mb.false_alarm_rate)
        return Calibration.from_layer_maps(layer_maps, mb.false_alarm_rate)

    def fuse(
        self, bank_part: torch.Tensor, decoder_part: torch.Tensor, fusion: Fusion | None = None
    ) -> torch.Tensor:
        """The normalised bank and decoder maps fused as ``fusion`` (default ``memory_bank.fusion``)
        says: averaged with ``decoder_weight`` (calibrated), or the bank's scaled by the decoder's
        (amplified); the decoder's part bounded by ``decoder_cap``."""
        mb = self.cfg.memory_bank
        if mb.decoder_cap is not None:
            decoder_part = decoder_part.clamp(max=mb.decoder_cap)
        if (fusion or mb.fusion) == "amplified":
            return (mb.decoder_weight * decoder_part).add_(1.0).mul_(bank_part)
        # bank + w * decoder, summed in the other order (the same bits) on the one new tensor
        return (mb.decoder_weight * decoder_part).add_(bank_part).div_(1.0 + mb.decoder_weight)

    def calibrate_fused(
        self,
        nn: Calibration,
        decoder: Calibration,
        distances: torch.Tensor,
        decoder_maps: torch.Tensor,
        fusion: Fusion | None = None,
    ) -> Calibration:
        """Where normal ends on the fused map, from normal images' bank distance maps (each image
        held out of the bank, layers weighed) and their decoder maps. Each part alone ends at 1,
        but their peaks seldom fall on the same pixel, so the average ends lower; without this the
        fused map would call only anomalies far above normal."""
        return self.calibrate(self.fuse(nn.normalise(distances), decoder.normalise(decoder_maps), fusion))

    @torch.no_grad()
    def build_memory_bank(
        self,
        reference_images: torch.Tensor,
        category: str | None = None,
        probes: tuple[torch.Tensor, list[int]] | None = None,
        calibrating: int | None = None,
    ) -> MemoryBank:
        """The bank of k normal references of one category (float in [0, 1], or uint8 on the CPU as
        :meth:`encode_all` takes them), built once and reused for every query:
        encoded (with rotations for few shots), reduced to the patch budget by greedy coreset, and
        calibrated on the references themselves (each scored against the others); one reference
        takes the calibration training measured for its category (``memory_bank.one_shot``).
        ``probes``: anomalous images made from the references and, per image, the reference it was
        made from; with them the fusion guard decides whether the decoder joins this bank's map.

        ``calibrating``: only the first this many references calibrate the bank and its guard (each
        held out against all the others, the rest included); the rest are cover: normals a person
        confirmed (false alarms marked normal), which the bank holds so that images like them
        match, but whose own held-out scores would put the top of normal where the references'
        normals never reach (they are, by how they were chosen, the normals least like the
        references). None: all of them. Cover needs at least two calibrating references."""
        shots = reference_images.shape[0]
        own = shots if calibrating is None else calibrating
        if own != shots and not 2 <= own < shots:
            raise ValueError(f"{own} calibrating references of {shots}: cover needs at least 2 of them")
        rotations = self.rotations_for(shots)
        images = with_rotations(reference_images) if rotations > 1 else reference_images
        maps = self.encode_all(images)
        bank = self.new_bank(maps, shots, rotations, category)
        patches = bank.n_patches
        bank = bank.subsample(self.cfg.memory_bank.max_patches, seed=0)
        if bank.n_patches != patches:  # a coreset ran: its copies of every patch go back to the system
            release_freed_memory()  # before the held-out maps (a collection costs ~0.1 s: only then)
        upright = [m[:own] for m in maps]  # the calibrating references, unrotated
        size = tuple(reference_images.shape[-2:])
        # One image held out against its own rotations shows no variation: take training's measure.
        measured = self.cfg.memory_bank.one_shot_for(category) if shots == 1 else None
        distances = plain_peaks = None  # the references' held-out maps: refined, and plain peaks
        if measured is not None:
            weights = measured.layer_weights if self.cfg.memory_bank.layer_weighting != "equal" else None
            bank.nn_calibration = Calibration(*measured.nn, weights)
        elif bank.can_hold_out():
            distances, plain_peaks = self._held_out_distances(bank, upright, size)
        decoder_maps = None  # the references' decoder maps, where calibration measures them
        if self.decoder is not None and category is not None:
            if measured is not None and measured.decoder is not None:
                bank.decoder_calibration = Calibration(*measured.decoder)
                fused = measured.fused
                if bank.fusion != self.cfg.memory_bank.fusion:  # a category training never saw
                    if measured.unseen_fused is not None:
                        fused = measured.unseen_fused
                    else:  # a checkpoint from before unseen_fusion: the fusion its boundary is of
                        bank.fusion = self.cfg.memory_bank.fusion
                if fused is not None:
                    bank.fused_calibration = Calibration(*fused)
            else:
                decoder_maps = _chunked(
                    own,
                    lambda a, b: self.text_map([m[a:b] for m in upright], [category] * (b - a), size)[1],
                )
                bank.decoder_calibration = self.calibrate(decoder_maps)
        if distances is not None and probes is not None and own >= MIN_IMAGES_FOR_FIT:
            distances = self._guard_map(bank, upright, distances, plain_peaks, decoder_maps, probes, size)
        if distances is not None and decoder_maps is not None and bank.decoder_calibration is not None:
            bank.fused_calibration = self.calibrate_fused(
                bank.nn_calibration, bank.decoder_calibration, distances, decoder_maps, bank.fusion
            )
        return bank

    def _held_out_distances(
        self, bank: MemoryBank, upright: list[torch.Tensor], size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Calibrate ``bank`` on its references, each held out of it: returns their refined distance
        maps (N, 1, H, W: smoothed, layers weighed as the calibration says) and the peaks (N,) of
        their plain maps (the layers' mean, unsmoothed), both from one search. Only the peaks of the
        plain maps are kept: the guard compares rankings, and a category that keeps the plain map
        searches again (:meth:`_guard_map`)."""
        layers = self.bank_layers(upright)
        plain_peaks = []

        def refined(a: int, b: int) -> torch.Tensor:
            raw = bank.layer_distance_maps([m[a:b] for m in layers], size, [*range(a, b)], smoothed=False)
            plain_peaks.append(_peaks(raw.mean(dim=1)))
            return gaussian_smooth(raw, bank.smoothing)

        # in chunks: a large category's intermediate maps stay bounded
        held_out = _chunked(layers[0].shape[0], refined)
        bank.nn_calibration = self.calibrate_distances(held_out)
        # per layer, held_out is the largest tensor of the build; the rest needs only the weighted sum
        return combine_layers(held_out, bank.nn_calibration.layer_weights), torch.cat(plain_peaks)

    def _guard_map(
        self,
        bank: MemoryBank,
        upright: list[torch.Tensor],
        distances: torch.Tensor,
        plain_peaks: torch.Tensor,
        decoder_maps: torch.Tensor | None,
        probes: tuple[torch.Tensor, list[int]],
        size: tuple[int, int],
    ) -> torch.Tensor:
        """The map guard (``memory_bank.fusion_guard``): Image-AUROC of the plain map, the refined
        one and the refined or plain one fused with the decoder's, on the references (each held
        out, as calibration scored them) against ``probes`` (each scored with the reference it was
        made from held out). Drops the refinements, then the decoder, where they rank worse (see
        :class:`MapGuard`), records the figures in ``bank.guard`` and returns the references'
        distance maps of the map kept. Every calibration after the distances' is monotone and is
        left out of the rankings."""
        images, owners = probes
        maps = self.encode_all(images)
        raw = bank.layer_distance_maps(self.bank_layers(maps), size, hold_out=owners, smoothed=False)
        probe_plain = raw.mean(dim=1, keepdim=True)
        plain_auroc = pairwise_auroc(plain_peaks, _peaks(probe_plain))
        refined_auroc = None
        probe_distances = probe_plain
        if bank.smoothing > 0 or bank.nn_calibration.layer_weights is not None:
            probe_distances = combine_layers(
                gaussian_smooth(raw, bank.smoothing), bank.nn_calibration.layer_weights
            )
            refined_auroc = pairwise_auroc(_peaks(distances), _peaks(probe_distances))
        guard = MapGuard(plain_auroc, refined_auroc, None, len(plain_peaks), len(owners))
        if guard.refinements_dropped:
            bank.smoothing = 0.0
            layers = self.bank_layers(upright)
            distances = _chunked(  # the references' plain maps, searched again
                len(plain_peaks),
                lambda a, b: bank.layer_distance_maps([m[a:b] for m in layers], size, [*range(a, b)]).mean(
                    dim=1, keepdim=True
                ),
            )
            bank.nn_calibration = self.calibrate(distances)
            probe_distances = probe_plain
        if decoder_maps is not None and bank.decoder_calibration is not None:
            probe_decoder_maps = self.text_map(maps, [bank.category] * len(owners), size)[1]

            def fused_peaks(bank_distances: torch.Tensor, decoder: torch.Tensor) -> torch.Tensor:
                bank_part = bank.nn_calibration.normalise(bank_distances)
                return _peaks(self.fuse(bank_part, bank.decoder_calibration.normalise(decoder), bank.fusion))

            fused = fused_peaks(distances, decoder_maps), fused_peaks(probe_distances, probe_decoder_maps)
            guard = dataclasses.replace(guard, fused_auroc=pairwise_auroc(*fused))
            if not guard.decoder_kept:
                bank.decoder_calibration = None
        bank.guard = guard
        return distances

    @torch.no_grad()
    def build_baseline_bank(self, reference_images: torch.Tensor, category: str | None = None) -> MemoryBank:
        """The floor the model's map must clear: a plain nearest-neighbour memory of the same frozen
        encoder's bank layers and the same references, and nothing else (no rotations, coreset,
        smoothing, layer weights, calibration or decoder). Its map is :meth:`MemoryBank.plain_map`."""
        maps = self.bank_layers(self.encode_all(reference_images))
        return MemoryBank.from_patch_maps(maps, reference_images.shape[0], 1, category, smoothing=0.0)

    def bank_map(
        self,
        bank: MemoryBank,
        patch_maps: list[torch.Tensor],
        decoder_map: torch.Tensor | None,
        size: tuple[int, int],
    ) -> torch.Tensor:
        """The k-shot map in [0, 1): the bank's distances, calibrated, fused with the decoder map
        (the bank's ``fusion``); 0.5 is where the references' own scores end."""
        fused = bank.nn_calibration.normalise(bank.distance_map(self.bank_layers(patch_maps), size))
        fusing = decoder_map is not None and bank.decoder_calibration is not None
        if fusing and bank.fusion != "replace":
            fused = self.fuse(fused, bank.decoder_calibration.normalise(decoder_map), bank.fusion)
            if bank.fused_calibration is not None:
                fused = bank.fused_calibration.normalise(fused)
        return squash(fused)

    # --- few-shot training ------------------------------------------------------------------
    @torch.no_grad()
    def build_reference_pool(self, images: dict[str, torch.Tensor], sources: dict[str, list[str]]) -> None:
        """Encode each category's normal training images once (with rotations) for few-shot training."""
        self.reference_pool = ReferencePool.build(self, images, sources)

    def _few_shot_step(self, batch: Batch) -> bool:
        """Whether this micro-batch trains the few-shot path: drawn from ``batch.seed``, so the
        choice is the same for any worker count and after a resume."""
        p = self.cfg.few_shot_train_prob
        if p <= 0 or self.reference_pool is None or batch.sources is None:
            return False
        generator = torch.Generator().manual_seed(batch.seed)
        return float(torch.rand((), generator=generator)) < p

    def _few_shot_training_map(
        self, batch: Batch, patch_maps: list[torch.Tensor], decoder_map: torch.Tensor | None, size
    ) -> torch.Tensor:
        """Per image, the map a k-shot user would get: one reference (with rotations) or all the
        category's other normal images, never the image's own source. Images made from the same
        source (a normal image and its synthetic twin) share one bank, built once."""
        generator = torch.Generator().manual_seed(batch.seed + 1)
        one_shot = float(torch.rand((), generator=generator)) < 0.5
        maps, banks = [], {}
        for i, (category, source) in enumerate(zip(batch.categories, batch.sources, strict=True)):
            key = (category, source)
            if key not in banks:
                banks[key] = self.reference_pool.bank(self, category, source, one_shot, generator)
            bank = banks[key]
            query = [m[i : i + 1] for m in patch_maps]
            dec = None if decoder_map is None else decoder_map[i : i + 1]
            if bank is None:  # a category with a single normal image: nothing to hold out
                maps.append(dec if dec is not None else torch.zeros_like(batch.masks[i : i + 1]))
            else:
                maps.append(self.bank_map(bank, query, dec, size))
        return torch.cat(maps)

    # --- inference --------------------------------------------------------------------------
    @torch.no_grad()
    def predict(
        self,
        images: torch.Tensor,
        categories: list[str],
        memory_bank: MemoryBank | None = None,
        question: str | list[str] | None = None,
        generate: bool = True,
        baseline: MemoryBank | None = None,
    ) -> list[Prediction]:
        """Map, score (max of the map) and answer per image. ``question`` defaults to the plain
        "Is there any anomaly in the image?"; callers pass the class description + question.
        ``baseline`` (from :meth:`build_baseline_bank`) adds its plain map to each prediction, from
        the same encoder pass."""
        if len(categories) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(categories)} categories")
        if memory_bank is not None and memory_bank.category is not None:
            wrong = sorted({c for c in categories if c != memory_bank.category})
            if wrong:
                raise ValueError(f"memory bank is for {memory_bank.category!r}, images are {wrong}")
        was_training = self.training
        self.eval()
        size = tuple(images.shape[-2:])
        enc = self.encode(images)
        decoder_map = self.text_map(enc.patch_maps, categories, size)[1] if self.decoder is not None else None
        amap = decoder_map
        if memory_bank is not None:
            amap = self.bank_map(memory_bank, enc.patch_maps, decoder_map, size)
        plain = None if baseline is None else baseline.plain_map(self.bank_layers(enc.patch_maps), size)
        answers: list[str | None] = [None] * images.shape[0]
        if self.llm is not None and generate:
            answers = self._answers(enc.global_embed, amap, self._questions(question, len(categories)))
        self.train(was_training)
        out = []
        for i, category in enumerate(categories):
            m = amap[i, 0].float().cpu().numpy() if amap is not None else None
            d = None
            if memory_bank is not None and decoder_map is not None:
                d = decoder_map[i, 0].float().cpu().numpy()
            b = None if plain is None else plain[i, 0].float().cpu().numpy()
            out.append(Prediction(category, m, float(m.max()) if m is not None else None, answers[i], d, b))
        return out

    @torch.no_grad()
    def answers_for_maps(
        self, images: torch.Tensor, anomaly_maps: torch.Tensor, question: str | list[str] | None = None
    ) -> list[str]:
        """The answers the LLM gives for ``images`` when the prompt learner reads ``anomaly_maps``
        (B, 1, H, W) instead of their own maps: the test that answers follow the map."""
        if self.llm is None:
            raise ValueError("the model has no LLM")
        was_training = self.training
        self.eval()
        enc = self.encode(images)
        answers = self._answers(enc.global_embed, anomaly_maps, self._questions(question, images.shape[0]))
        self.train(was_training)
        return answers

    @staticmethod
    def _questions(question: str | list[str] | None, n: int) -> list[str | None]:
        questions = [question] * n if question is None or isinstance(question, str) else list(question)
        if len(questions) != n:
            raise ValueError(f"{n} images but {len(questions)} questions")
        return questions

    def _answers(self, global_embed, anomaly_map, questions: list[str | None]) -> list[str]:
        """One answer per image; images asked the same question are decoded together."""
        prefix = self._prefix(global_embed, self._prompts(anomaly_map, global_embed))
        default = tables()["default_question"]
        asked = [q or default for q in questions]
        answers: list[str] = [""] * len(asked)
        for question in dict.fromkeys(asked):
            rows = [i for i, q in enumerate(asked) if q == question]
            for i, text in zip(rows, self.generate(prefix[rows], question), strict=True):
                answers[i] = text
        return answers

    @torch.no_grad()
    def generate(self, prefix: torch.Tensor, question: str) -> list[str]:
        """Greedy decoding after each row of ``prefix`` (B, P, H) + the first human turn with
        ``question``; each answer stops at the ### separator or the end token. The rows go through
        the LLM together (one call per step for all of them), which costs about what one row does
        on a CPU; a row's tokens are those it gets alone (every row has the same length: no padding).
        Where ``answer_phrasings`` propose what follows, one call checks the proposals of every row
        and each row keeps the tokens all rows' greedy choices agree with so far (``drafting``)."""
        conv = tables()["conversation"]
        sep, b = conv["separator"], prefix.shape[0]
        ids = torch.tensor([self._ids(conv["first_human"].format(question))], device=prefix.device)
        turn = self._embed(ids).expand(b, -1, -1)
        # logits of the last position only: the prompt's others (x 49k vocab) would be thrown away
        out = self.llm(inputs_embeds=torch.cat([prefix, turn], dim=1), use_cache=True, logits_to_keep=1)
        drafter, limit = self._phrasing_drafter(), self.cfg.llm.max_new_tokens
        new: list[list[int]] = [[] for _ in range(b)]
        texts, done = [""] * b, [False] * b

        def take(i: int, token: int) -> None:
            if done[i]:
                return
            if token == self.tokenizer.eos_token_id:
                done[i] = True
                return
            new[i].append(token)
            texts[i] = self.tokenizer.decode(new[i], skip_special_tokens=True)
            if sep in texts[i]:
                texts[i], done[i] = texts[i].split(sep)[0], True

        tokens, steps = out.logits[:, -1].argmax(dim=-1), 0
        while True:
            for i in range(b):
                take(i, int(tokens[i]))
            steps += 1
            if all(done) or steps >= limit:
                break
            room = min(DRAFT_TOKENS, limit - steps - 1)
            proposals = [drafter.propose(new[i], room) if drafter and not done[i] else [] for i in range(b)]
            out, tokens, kept = self._decode_step(out, tokens, proposals, done)
            for j in range(kept):  # every unfinished row proposed at least ``kept`` tokens
                for i in range(b):
                    if not done[i]:
                        take(i, proposals[i][j])
            steps += kept
        return [text.strip() for text in texts]

    def _decode_step(self, out: Any, tokens: torch.Tensor, proposals: list[list[int]], done: list[bool]):
        """One LLM call after ``tokens`` (one per row) that also checks each row's proposed tokens:
        returns the call's output, every row's next greedy token, and how many proposed tokens every
        unfinished row keeps (the cache then holds exactly those)."""
        b, width = tokens.shape[0], max(len(p) for p in proposals)
        if width == 0:  # finished rows go on decoding (their tokens are not read): the batch keeps its shape
            out = self.llm(input_ids=tokens.view(b, 1), cache=out.cache, use_cache=True)
            return out, out.logits[:, -1].argmax(dim=-1), 0
        rows = [[int(t), *p, *[int(t)] * (width - len(p))] for t, p in zip(tokens, proposals, strict=True)]
        out = self.llm(input_ids=torch.tensor(rows, device=tokens.device), cache=out.cache, use_cache=True)
        predicted = out.logits.argmax(dim=-1)
        kept = min(accepted(p, predicted[i].tolist()) for i, p in enumerate(proposals) if not done[i])
        if kept < width:  # the checked tokens past the kept ones are forgotten
            out.cache.crop(kept - width)
        return out, predicted[:, kept], kept

    def _phrasing_drafter(self) -> Drafter | None:
        """The drafter of ``answer_phrasings`` (tokenised as assistant turns), built once per set."""
        if not self.answer_phrasings:
            return None
        if self._drafter is None or self._drafter[0] != self.answer_phrasings:
            assistant = tables()["conversation"]["assistant"]
            phrasings = [self._ids(assistant.format(text)) for text in self.answer_phrasings]
            self._drafter = (self.answer_phrasings, Drafter(phrasings))
        return self._drafter[1]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What training changes (decoder, prompt learner, image projection if trained, LoRA if trained)."""
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}
