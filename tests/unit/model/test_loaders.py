"""ImageBind and Vicuna/PandaGPT loaders on small checkpoints written in the official key layouts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from train.model.imagebind import HEAD, PRE, TRUNK, ImageBindVisionEncoder

WIDTH, DEPTH, HEADS, OUT = 32, 4, 4, 24
TEXT_WIDTH, TEXT_OUT = 16, 24
# A small CLIP BPE merge table in the format of bpe_simple_vocab_16e6.txt.gz.
MERGES = [
    "p h",
    "ph o",
    "t o</w>",
    "pho to</w>",
    "d a",
    "da m",
    "dam a",
    "g e",
    "dama ge",
    "ge d</w>",
    "t h",
    "th e</w>",
    "n u",
    "nu t</w>",
    "m e",
    "me t",
    "met a",
    "meta l</w>",
    "o f</w>",
]
TEXT_VOCAB = 512 + len(MERGES) + 2


def _block(b: str, width: int, r) -> dict[str, torch.Tensor]:
    return {
        b + "attn.in_proj_weight": r(3 * width, width),
        b + "attn.in_proj_bias": r(3 * width),
        b + "attn.out_proj.weight": r(width, width),
        b + "attn.out_proj.bias": r(width),
        b + "norm_1.weight": 1 + r(width),
        b + "norm_1.bias": r(width),
        b + "mlp.fc1.weight": r(4 * width, width),
        b + "mlp.fc1.bias": r(4 * width),
        b + "mlp.fc2.weight": r(width, 4 * width),
        b + "mlp.fc2.bias": r(width),
        b + "norm_2.weight": 1 + r(width),
        b + "norm_2.bias": r(width),
    }


def write_bpe(path):
    import gzip

    with gzip.open(path, "wt") as fh:
        fh.write("#version: 0.2\n" + "\n".join(MERGES) + "\n")
    return path


def imagebind_state(width=WIDTH, depth=DEPTH, out=OUT) -> dict[str, torch.Tensor]:
    """Random tensors under imagebind_huge.pth's vision keys (plus a text key to be ignored)."""
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.05

    state = {
        PRE + "rgbt_stem.proj.1.weight": r(width, 3, 2, 14, 14),
        PRE + "cls_token": r(1, 1, width),
        PRE + "pos_embedding_helper.pos_embed": r(1, 257, width),
        TRUNK + "pre_transformer_layer.0.weight": 1 + r(width),
        TRUNK + "pre_transformer_layer.0.bias": r(width),
        HEAD + "0.weight": 1 + r(width),
        HEAD + "0.bias": r(width),
        HEAD + "2.weight": r(out, width),
    }
    text = "modality_preprocessors.text."
    state |= {
        text + "token_embedding.weight": r(TEXT_VOCAB, TEXT_WIDTH),
        text + "pos_embed": r(1, 77, TEXT_WIDTH),
        text + "mask": torch.full((77, 77), float("-inf")).triu(1),
        "modality_heads.text.proj.0.weight": 1 + r(TEXT_WIDTH),
        "modality_heads.text.proj.0.bias": r(TEXT_WIDTH),
        "modality_heads.text.proj.1.weight": r(TEXT_OUT, TEXT_WIDTH),
        "modality_postprocessors.text.1.log_logit_scale": torch.tensor(4.6),
    }
    for i in range(depth):
        state |= _block(f"modality_trunks.text.blocks.{i}.", TEXT_WIDTH, r)
    for i in range(depth):
        state |= _block(f"{TRUNK}blocks.{i}.", width, r)
    return state


def test_imagebind_loads_official_layout(tmp_path):
    state = imagebind_state()
    path = tmp_path / "imagebind_huge.pth"
    torch.save(state, path)
    enc = ImageBindVisionEncoder.from_checkpoint(path, layers=[1, 3], heads=HEADS)
    assert enc.channels == [WIDTH, WIDTH] and enc.embed_dim == OUT and len(enc.blocks) == DEPTH
    assert not any(p.requires_grad for p in enc.parameters())
    # every vision tensor landed where the official name says
    own = dict(enc.named_parameters())
    for key, value in state.items():
        if "text" in key:
            continue
        ours = next(n for n in own if ImageBindVisionEncoder.to_official(n) == key)
        assert torch.equal(own[ours], value), key
    out = enc(torch.rand(2, 3, 224, 224))
    assert [tuple(m.shape) for m in out.patch_maps] == [(2, WIDTH, 16, 16)] * 2
    assert out.global_embed.shape == (2, OUT)
    assert torch.allclose(out.global_embed.norm(dim=-1), torch.ones(2), atol=1e-5)
    # another size: the positional embedding is interpolated
    assert enc(torch.rand(1, 3, 112, 112)).patch_maps[0].shape == (1, WIDTH, 8, 8)


def test_imagebind_forward_matches_a_direct_computation():
    """Conv3d over the image repeated to 2 frames, CLS + positions, pre-LN, blocks via
    nn.MultiheadAttention in ImageBind's sequence-first layout: the same numbers."""
    enc = ImageBindVisionEncoder.from_state_dict(imagebind_state(), heads=HEADS, layers=[3])
    img = torch.rand(1, 3, 224, 224)
    x = enc.normalise(img).unsqueeze(2).repeat(1, 1, 2, 1, 1)
    x = F.conv3d(x, enc.stem.weight, stride=(2, 14, 14)).flatten(2).transpose(1, 2)
    x = torch.cat([enc.cls_token, x], dim=1) + enc.pos_embed
    x = enc.pre_ln(x).transpose(0, 1)  # (L, B, D)
    for blk in enc.blocks:
        mha = torch.nn.MultiheadAttention(WIDTH, HEADS)
        mha.load_state_dict(blk.attn.state_dict())
        h = blk.norm_1(x)
        x = x + mha(h, h, h, need_weights=False)[0]
        x = x + blk.mlp.fc2(F.gelu(blk.mlp.fc1(blk.norm_2(x))))
    x = x.transpose(0, 1)
    expected_map = x[:, 1:].transpose(1, 2).reshape(1, WIDTH, 16, 16)
    expected_embed = F.normalize(enc.head_proj(enc.head_ln(x)[:, 0]), dim=-1)
    with torch.no_grad():
        out = enc(img)
    assert torch.allclose(out.patch_maps[0], expected_map, atol=1e-4)
    assert torch.allclose(out.global_embed, expected_embed, atol=1e-5)


def test_imagebind_rejects_a_foreign_checkpoint(tmp_path):
    state = imagebind_state()
    state.pop(TRUNK + "blocks.2.mlp.fc1.bias")
    with pytest.raises(KeyError, match=r"missing .*blocks\.2\.mlp\.fc1\.bias"):
        ImageBindVisionEncoder.from_state_dict(state, heads=HEADS)
    with pytest.raises(KeyError, match="no ImageBind vision weights"):
        ImageBindVisionEncoder.from_state_dict({"foo": torch.zeros(1)})
    with pytest.raises(FileNotFoundError, match=r"model\.encoder\.checkpoint"):
        ImageBindVisionEncoder.from_checkpoint(tmp_path / "absent.pth")


def imagebind_cfg(make_cfg, tmp_path, **extra):
    """A model config whose encoder is a small ImageBind checkpoint written in the official layout."""
    from safetensors.torch import save_file

    path = tmp_path / "imagebind.safetensors"
    save_file(imagebind_state(), str(path))
    return make_cfg(
        encoder__name="imagebind_huge",
        encoder__checkpoint=path,
        encoder__heads=HEADS,
        encoder__layers=[0, 1, 2, 3],
        **extra,
    )


def test_imagebind_in_the_full_model(make_cfg, tmp_path):
    from train.model import build_model

    cfg = imagebind_cfg(make_cfg, tmp_path)
    cfg.image_size = 224
    model = build_model(cfg)
    pred = model.predict(torch.rand(1, 3, 224, 224), ["grass"], generate=False)[0]
    assert pred.anomaly_map.shape == (224, 224)


def write_vicuna(folder, tokenizer_dir, hidden=64):
    """A tiny LLaMA saved as a Hugging Face folder, standing in for Vicuna-7B v0."""
    import shutil

    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=hidden,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        bos_token_id=1,
        eos_token_id=2,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    shutil.copyfile(tokenizer_dir / "tokenizer.model", folder / "tokenizer.model")
    (folder / "tokenizer_config.json").write_text('{"tokenizer_class": "LlamaTokenizer"}')
    return config


def test_vicuna_with_pandagpt_delta(make_cfg, tmp_path, model_cache):
    from train.model import build_model
    from train.model.llm import llama_tokenizer_dir

    folder = tmp_path / "vicuna"
    config = write_vicuna(folder, llama_tokenizer_dir(model_cache))
    r, hidden, embed = 4, config.hidden_size, 1280  # 1280: the MobileNetV2 embedding of the tiny preset
    g = torch.Generator().manual_seed(2)
    delta = {
        "llama_proj.weight": torch.randn(hidden, embed, generator=g),
        "llama_proj.bias": torch.randn(hidden, generator=g),
    }
    for layer in range(2):
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            base = f"llama_model.base_model.model.model.layers.{layer}.self_attn.{proj}"
            delta[f"{base}.lora_A.weight"] = torch.randn(r, hidden, generator=g)
            delta[f"{base}.lora_B.weight"] = torch.randn(hidden, r, generator=g)
    torch.save(delta, tmp_path / "pytorch_model.pt")
    cfg = make_cfg(
        llm__name="vicuna",
        llm__path=folder,
        llm__delta=tmp_path / "pytorch_model.pt",
        lora__enabled=True,
        lora__r=r,
        lora__alpha=r,
        train_image_proj=False,
    )
    model = build_model(cfg)
    assert torch.equal(model.image_proj.weight, delta["llama_proj.weight"])
    assert torch.equal(model.image_proj.bias, delta["llama_proj.bias"])
    params = dict(model.llm.named_parameters())
    key = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.default.weight"
    assert torch.equal(
        params[key], delta["llama_model.base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"]
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("decoder.", "prompt_learner.")) for n in trainable)
    assert isinstance(model.predict(torch.rand(1, 3, 64, 64), ["grass"])[0].answer, str)

    # a delta whose LoRA does not fit the configured adapters is an error, not a silent skip
    bad = make_cfg(
        llm__name="vicuna",
        llm__path=folder,
        llm__delta=tmp_path / "pytorch_model.pt",
        lora__enabled=True,
        lora__r=r,
        lora__targets=["q_proj"],
    )
    with pytest.raises(KeyError, match="LoRA keys not in the model"):
        build_model(bad)


def test_clip_bpe_tokenizer(tmp_path):
    from train.model.imagebind_text import ClipBPETokenizer

    tok = ClipBPETokenizer(write_bpe(tmp_path / "bpe.txt.gz"))
    assert tok.vocab_size == TEXT_VOCAB
    inverse = {i: t for t, i in tok.encoder.items()}
    ids = tok(["A photo of  the DAMAGED metal nut."])[0]
    assert ids.shape == (77,)
    pieces = [inverse[int(i)] for i in ids if i != 0]
    assert pieces == [
        "<|startoftext|>",
        "a</w>",
        "photo</w>",
        "of</w>",
        "the</w>",
        "damage",  # "dama ge" (rank 8) wins over "ge d</w>" (rank 9): merges apply by rank
        "d</w>",
        "metal</w>",
        "nut</w>",
        ".</w>",
        "<|endoftext|>",
    ]
    assert pieces and ids[len(pieces) :].eq(0).all()
    # unmerged words fall back to bytes; the base vocabulary starts with the printable bytes
    assert [inverse[i] for i in tok.encode("xy!")] == ["x", "y</w>", "!</w>"]
    assert tok.encoder["!"] == 0 and tok.encoder["!</w>"] == 256


def test_imagebind_text_tower_matches_a_direct_computation(tmp_path):
    from train.model.imagebind_text import ClipBPETokenizer, ImageBindTextEncoder

    state = imagebind_state()
    tower = ImageBindTextEncoder.from_state_dict(state, heads=HEADS)
    assert tower.out_dim == TEXT_OUT and len(tower.blocks) == DEPTH
    tokens = ClipBPETokenizer(write_bpe(tmp_path / "bpe.txt.gz"))(
        ["a photo of the metal nut.", "damaged nut"]
    )
    got = tower(tokens)
    # ImageBind: sequence-first MultiheadAttention with an additive causal mask, EOS = argmax id
    p = "modality_trunks.text.blocks."
    x = (
        state["modality_preprocessors.text.token_embedding.weight"][tokens]
        + state["modality_preprocessors.text.pos_embed"]
    )
    x = x.transpose(0, 1)
    mask = state["modality_preprocessors.text.mask"]
    for i in range(DEPTH):
        mha = torch.nn.MultiheadAttention(TEXT_WIDTH, HEADS)
        mha.load_state_dict(
            {k[len(f"{p}{i}.attn.") :]: v for k, v in state.items() if k.startswith(f"{p}{i}.attn.")}
        )
        h = F.layer_norm(x, (TEXT_WIDTH,), state[f"{p}{i}.norm_1.weight"], state[f"{p}{i}.norm_1.bias"], 1e-6)
        x = x + mha(h, h, h, need_weights=False, attn_mask=mask)[0]
        h = F.layer_norm(x, (TEXT_WIDTH,), state[f"{p}{i}.norm_2.weight"], state[f"{p}{i}.norm_2.bias"], 1e-6)
        h = F.linear(
            F.gelu(F.linear(h, state[f"{p}{i}.mlp.fc1.weight"], state[f"{p}{i}.mlp.fc1.bias"])),
            state[f"{p}{i}.mlp.fc2.weight"],
            state[f"{p}{i}.mlp.fc2.bias"],
        )
        x = x + h
    x = x.transpose(0, 1)[torch.arange(2), tokens.argmax(-1)]
    x = F.layer_norm(
        x,
        (TEXT_WIDTH,),
        state["modality_heads.text.proj.0.weight"],
        state["modality_heads.text.proj.0.bias"],
        1e-6,
    )
    expected = F.normalize(x @ state["modality_heads.text.proj.1.weight"].T, dim=-1)
    assert torch.allclose(got, expected, atol=1e-5)


def test_paper_preset_text_features_from_imagebind(make_cfg, tmp_path):
    from train.model import build_model

    cfg = imagebind_cfg(
        make_cfg,
        tmp_path,
        text_encoder="imagebind",
        text_bpe=write_bpe(tmp_path / "bpe.txt.gz"),
        use_llm=False,
        use_prompt_learner=False,
    )
    model = build_model(cfg)
    assert model.decoder.proj[0].out_features == TEXT_OUT
    feats = model.text_features(["metal_nut"])
    assert feats.shape == (1, 2, TEXT_OUT)
    assert torch.allclose(feats.norm(dim=-1), torch.ones(1, 2), atol=1e-5)
    assert model.predict(torch.rand(1, 3, 224, 224), ["metal_nut"])[0].anomaly_map.shape == (224, 224)
    with pytest.raises(ValueError, match="text_encoder imagebind needs"):
        make_cfg(text_encoder="imagebind")
