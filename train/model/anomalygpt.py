"""AnomalyGPT: frozen encoder -> decoder map (+ few-shot map) -> prompt learner -> LLM answer."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from train.model.batch import Batch, Prediction
from train.model.config import ModelConfig
from train.model.conversation import IGNORE, pad_batch, tables, tokenize_turns
from train.model.decoder import AnomalyDecoder
from train.model.encoders import ImageEncoder
from train.model.losses import dice_loss, focal_loss
from train.model.memory_bank import MemoryBank, with_rotations
from train.model.prompt_learner import PromptLearner
from train.model.text_features import PromptTextFeatures


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
        if (
            batch.references is not None
            and batch.masks is not None
            and cfg.few_shot_train_prob > 0
            and float(torch.rand(())) < cfg.few_shot_train_prob
        ):
            # The reference swaps the prompt learner's input for a 1-NN map against a rotated normal.
            prompt_map = torch.cat(
                [
                    self.build_memory_bank(batch.references[i : i + 1]).anomaly_map(
                        [m[i : i + 1] for m in enc.patch_maps], size
                    )
                    for i in range(images.shape[0])
                ]
            )
        if self.llm is not None:
            prompts = self._prompts(prompt_map, enc.global_embed)
            ce = self._lm_loss(self._prefix(enc.global_embed, prompts), batch.conversations)
        total = cfg.loss.ce * ce + cfg.loss.focal * focal + cfg.loss.dice * dice
        return {"loss": total, "ce": ce, "focal": focal, "dice": dice}

    def tokenize(self, conversations) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Padded text ids, labels (-100 off the assistant text) and attention mask, (B, T) each."""
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id
        seqs = [tokenize_turns(self.tokenizer, turns, self.cfg.llm.max_tgt_len) for turns in conversations]
        ids, labels, mask = pad_batch(seqs, pad_id)
        return torch.tensor(ids), torch.tensor(labels), torch.tensor(mask)

    def _lm_loss(self, prefix: torch.Tensor, conversations) -> torch.Tensor:
        ids, labels, mask = (t.to(prefix.device) for t in self.tokenize(conversations))
        b, p = prefix.shape[:2]
        embeds = torch.cat([prefix, self._embed(ids)], dim=1)
        attention = torch.cat([mask.new_ones(b, p), mask], dim=1)
        full_labels = torch.cat([labels.new_full((b, p), IGNORE), labels], dim=1)
        return self.llm(inputs_embeds=embeds, attention_mask=attention, labels=full_labels).loss

    # --- inference --------------------------------------------------------------------------
    def build_memory_bank(self, reference_images: torch.Tensor, category: str | None = None) -> MemoryBank:
        """Encode k normal references once (with 90/180/270 rotations unless switched off)."""
        images = with_rotations(reference_images) if self.cfg.few_shot_rotations else reference_images
        enc = self.encode(images)
        return MemoryBank.from_patch_maps(enc.patch_maps, category, shots=reference_images.shape[0])

    @torch.no_grad()
    def predict(
        self,
        images: torch.Tensor,
        categories: list[str],
        memory_bank: MemoryBank | None = None,
        question: str | list[str] | None = None,
        generate: bool = True,
    ) -> list[Prediction]:
        """Map, score (max of the map) and answer per image. ``question`` defaults to the plain
        "Is there any anomaly in the image?"; callers pass the class description + question."""
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
        amap = self.text_map(enc.patch_maps, categories, size)[1] if self.decoder is not None else None
        if memory_bank is not None:
            shot_map = memory_bank.anomaly_map(enc.patch_maps, size)
            amap = (
                shot_map if amap is None or self.cfg.few_shot_fusion == "replace" else (amap + shot_map) / 2
            )
        answers: list[str | None] = [None] * images.shape[0]
        if self.llm is not None and generate:
            questions = (
                [question] * len(categories) if question is None or isinstance(question, str) else question
            )
            if len(questions) != len(categories):
                raise ValueError(f"{len(categories)} images but {len(questions)} questions")
            prompts = self._prompts(amap, enc.global_embed)
            prefix = self._prefix(enc.global_embed, prompts)
            default = tables()["default_question"]
            for i, q in enumerate(questions):
                answers[i] = self.generate(prefix[i : i + 1], q or default)
        self.train(was_training)
        out = []
        for i, category in enumerate(categories):
            m = amap[i, 0].float().cpu().numpy() if amap is not None else None
            out.append(Prediction(category, m, float(m.max()) if m is not None else None, answers[i]))
        return out

    @torch.no_grad()
    def generate(self, prefix: torch.Tensor, question: str) -> str:
        """Greedy decoding after ``prefix`` + the first human turn; stops at the ### separator."""
        conv = tables()["conversation"]
        sep = conv["separator"]
        ids = torch.tensor([self._ids(conv["first_human"].format(question))], device=prefix.device)
        out = self.llm(inputs_embeds=torch.cat([prefix, self._embed(ids)], dim=1), use_cache=True)
        new: list[int] = []
        text = ""
        for _ in range(self.cfg.llm.max_new_tokens):
            token = int(out.logits[0, -1].argmax())
            if token == self.tokenizer.eos_token_id:
                break
            new.append(token)
            text = self.tokenizer.decode(new, skip_special_tokens=True)
            if sep in text:
                text = text.split(sep)[0]
                break
            step = torch.tensor([[token]], device=prefix.device)
            out = self.llm(input_ids=step, cache=out.cache, use_cache=True)
        return text.strip()

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What training changes (decoder, prompt learner, image projection if trained, LoRA if trained)."""
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}
