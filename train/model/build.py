"""One build function from a ModelConfig: loads the frozen parts, creates the trainable ones."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from train.model.anomalygpt import AnomalyGPT
from train.model.config import ModelConfig
from train.model.conversation import tables
from train.model.decoder import AnomalyDecoder
from train.model.encoders import build_encoder
from train.model.imagebind import ImageBindVisionEncoder, read_checkpoint
from train.model.imagebind_text import ClipBPETokenizer, ImageBindTextEncoder
from train.model.llm import (
    copy_tensors,
    load_smollm2,
    load_tensors,
    load_tiny_llama,
    load_vicuna,
    split_pandagpt_delta,
)
from train.model.map_summary import MapSummary, name_slots
from train.model.prompt_learner import PromptLearner
from train.model.text_features import PromptTextFeatures


def build_model(cfg: ModelConfig, seed: int = 0) -> AnomalyGPT:
    """The model of ``cfg``: encoder and LLM frozen; decoder, prompt learner (and, when configured,
    the image-token projection and LoRA) trainable.

    The frozen parts load first; the trainable ones are then drawn from a generator seeded with
    ``seed`` alone, so their initial values do not depend on what loading consumed from the global
    RNG (a first run that converts the LLM draws differently from a run that finds it cached)."""
    state = None
    if cfg.encoder.name == "imagebind_huge":
        state = read_checkpoint(cfg.encoder.checkpoint)  # read once for the vision and text towers
        encoder = ImageBindVisionEncoder.from_state_dict(
            state, heads=cfg.encoder.heads, layers=cfg.encoder.layers, source=str(cfg.encoder.checkpoint)
        )
    else:
        encoder = build_encoder(
            cfg.encoder.name, cfg.encoder.layers, cfg.encoder.pretrained, cfg.encoder.sharp_layers
        )
    text_features = _text_features(cfg, state) if cfg.use_decoder else None
    del state
    llm = tokenizer = None
    if cfg.use_llm:
        llm, tokenizer = _load_llm(cfg)
        for p in llm.parameters():
            p.requires_grad_(False)
        llm.eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        decoder = prompt_learner = image_proj = None
        token_rms = None
        if text_features is not None:
            decoder = AnomalyDecoder(encoder.channels, text_features.dim, cfg.logit_scale)
        if llm is not None:
            hidden = llm.config.hidden_size
            table = llm.get_input_embeddings().weight.detach().float()
            embed_std = float(table.std())
            embed_rms = float(table.pow(2).mean(dim=1).sqrt().mean())
            if cfg.lora.enabled:
                llm = _wrap_lora(llm, cfg)
            image_proj = nn.Linear(encoder.embed_dim, hidden)
            pretrained_proj = cfg.llm.name == "vicuna" and cfg.llm.delta is not None
            if pretrained_proj:
                _load_delta(cfg, llm, image_proj)
            image_proj.requires_grad_(cfg.train_image_proj)
            # A pretrained projection (PandaGPT's llama_proj) keeps the scale it was trained at.
            if cfg.embedding_scale and not pretrained_proj:
                token_rms = embed_rms
            if cfg.use_prompt_learner:
                prompt_learner = PromptLearner(
                    hidden,
                    cfg.prompt_tokens,
                    cfg.prompt_channels,
                    global_dim=encoder.embed_dim if cfg.prompt_global else None,
                    use_map=cfg.use_decoder,
                    init_std=embed_std,
                    embed_rms=embed_rms if cfg.embedding_scale else None,
                    cell_evidence=cfg.prompt_cell_evidence and cfg.use_decoder,
                    summary=_map_summary(cfg, tokenizer, table, embed_rms),
                )
                if prompt_learner.cell_evidence is not None and prompt_learner.cell_embed is not None:
                    words = position_word_embeddings(tokenizer, table)
                    if words.shape[0] == cfg.prompt_tokens:
                        prompt_learner.name_cells(words)
    return AnomalyGPT(
        cfg, encoder, text_features, decoder, prompt_learner, llm, tokenizer, image_proj, token_rms
    )


def word_embeddings(tokenizer: Any, table: torch.Tensor, words: list[str]) -> torch.Tensor:
    """(len(words), hidden): per word, the mean input embedding of its tokens (after a space)."""
    rows = [table[tokenizer(" " + w, add_special_tokens=False)["input_ids"]].mean(dim=0) for w in words]
    return torch.stack(rows)


def position_word_embeddings(tokenizer: Any, table: torch.Tensor) -> torch.Tensor:
    """(9, hidden): per 3x3 grid cell, the embedding of its position word."""
    return word_embeddings(tokenizer, table, tables()["positions"])


def _map_summary(
    cfg: ModelConfig, tokenizer: Any, table: torch.Tensor, embed_rms: float
) -> MapSummary | None:
    """The verdict and where tokens (``model.prompt_map_summary``), starting as the LLM's words."""
    if not cfg.summary_tokens:
        return None
    verdicts = word_embeddings(tokenizer, table, tables()["verdict_words"])
    slots = name_slots(tables()["positions"])
    per_slot = [word_embeddings(tokenizer, table, list(words)) for words in zip(*slots, strict=True)]
    cells = torch.stack(per_slot, dim=1)  # (cells, WHERE_WORDS, hidden)
    return MapSummary(verdicts, cells, embed_rms)


def _text_features(cfg: ModelConfig, state: dict | None) -> PromptTextFeatures:
    if cfg.text_encoder == "minilm":
        return PromptTextFeatures()
    tower = ImageBindTextEncoder.from_state_dict(
        state, heads=cfg.encoder.heads, source=str(cfg.encoder.checkpoint)
    )
    tokenizer = ClipBPETokenizer(cfg.text_bpe)
    vocab = tower.token_embedding.num_embeddings
    if tokenizer.vocab_size > vocab:
        raise ValueError(f"model.text_bpe has {tokenizer.vocab_size} tokens, the text tower only {vocab}")
    return PromptTextFeatures(lambda sentences: tower(tokenizer(sentences)), tower.out_dim)


def _load_llm(cfg: ModelConfig) -> tuple[Any, Any]:
    c = cfg.llm
    if c.name == "smollm2":
        model, tokenizer = load_smollm2(c.cache_dir)
    elif c.name == "tiny":
        model, tokenizer = load_tiny_llama(c.tiny_hidden, c.tiny_layers, c.tiny_heads, c.cache_dir)
    elif c.name == "vicuna":
        model, tokenizer = load_vicuna(c.path)
    else:
        raise ValueError(f"unknown model.llm.name {c.name!r}")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # as the reference
    return model, tokenizer


def _wrap_lora(llm: nn.Module, cfg: ModelConfig) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.targets),
        task_type="CAUSAL_LM",
    )
    wrapped = get_peft_model(llm, lora)
    for name, p in wrapped.named_parameters():
        p.requires_grad_(cfg.lora.trainable and "lora_" in name)
    return wrapped


def _load_delta(cfg: ModelConfig, llm: nn.Module, image_proj: nn.Linear) -> None:
    """PandaGPT delta: llama_proj into the image-token projection, LoRA into the wrapped LLM."""
    source = str(cfg.llm.delta)
    proj, lora = split_pandagpt_delta(load_tensors(cfg.llm.delta), source)
    if proj["weight"].shape != image_proj.weight.shape:
        raise ValueError(
            f"{source}: llama_proj is {tuple(proj['weight'].shape)} but the encoder/LLM need "
            f"{tuple(image_proj.weight.shape)} (ImageBind's 1024-d embedding -> the LLM's hidden size)"
        )
    with torch.no_grad():
        image_proj.weight.copy_(proj["weight"])
        image_proj.bias.copy_(proj["bias"])
    if not lora:
        return
    if not cfg.lora.enabled:
        raise ValueError(f"{source} holds LoRA weights; set model.lora.enabled: true to use them")
    own = dict(llm.named_parameters())
    unknown = sorted(k for k in lora if k not in own)
    if unknown:
        raise KeyError(f"{source}: LoRA keys not in the model (check lora.targets/r): {unknown[:5]}")
    missing = sorted(k for k in own if "lora_" in k and k not in lora)
    if missing:
        raise KeyError(f"{source}: the delta lacks LoRA weights for {missing[:5]}")
    copy_tensors(own, lora, source)
