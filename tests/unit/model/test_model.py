"""The tiny preset end to end: shapes, what trains, memory bank reuse, checkpoints, Table 4 switches."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from train.model import build_model, load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def tiny_model(tiny_cfg):
    torch.manual_seed(0)
    return build_model(tiny_cfg)


@pytest.mark.parametrize("size", [224, 96])
def test_prediction_shapes_at_any_size(tiny_model, size):
    images = torch.rand(2, 3, size, size)
    preds = tiny_model.predict(images, ["grass", "brick"])
    assert len(preds) == 2
    for p in preds:
        assert p.anomaly_map.shape == (size, size)
        assert p.anomaly_map.dtype.name == "float32"
        assert 0.0 <= p.anomaly_map.min() <= p.anomaly_map.max() <= 1.0
        assert p.score == pytest.approx(float(p.anomaly_map.max()))
        assert isinstance(p.answer, str)
        assert "###" not in p.answer


def test_prompt_learner_token_count_at_any_size(tiny_model):
    pl = tiny_model.prompt_learner
    for size in (64, 224, 100):
        out = pl(torch.rand(3, 1, size, size), None)
        tokens = 2 * tiny_model.cfg.prompt_tokens + tiny_model.cfg.summary_tokens
        assert out.shape == (3, tokens, tiny_model.llm.config.hidden_size)


def test_reference_prompt_learner_shapes_at_224():
    from train.model.prompt_learner import PromptLearner

    pl = PromptLearner(hidden=32, n_tokens=9, channels=[4, 16, 64, 256, 1024])
    assert pl(torch.rand(1, 1, 224, 224), None).shape == (1, 18, 32)
    # five stages bring 224 to 7x7: the adaptive pool is the identity, as the reference's shapes
    x = torch.rand(1, 1, 224, 224)
    for layer in pl.convs[:-2]:
        x = layer(x)
    assert x.shape[-2:] == (7, 7)


def test_generation_is_greedy_and_deterministic(tiny_model):
    images = torch.rand(1, 3, 64, 64)
    first = tiny_model.predict(images, ["grass"])[0].answer
    second = tiny_model.predict(images, ["grass"])[0].answer
    assert first == second


def test_gradients_reach_only_trainable_parts(make_cfg, tiny_batch):
    torch.manual_seed(0)
    model = build_model(make_cfg())
    model.train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, "nothing to train"
    assert all(n.startswith(("decoder.", "prompt_learner.", "image_proj.")) for n in trainable)
    assert any(n.startswith("decoder.") for n in trainable)
    assert any(n.startswith("prompt_learner.") for n in trainable)
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = model.training_losses(tiny_batch)
    assert set(losses) == {"loss", "ce", "focal", "dice"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    losses["loss"].backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    optimizer.step()
    for name, p in model.named_parameters():
        if name in frozen_before:
            assert torch.equal(p, frozen_before[name]), name
        else:
            assert not torch.equal(p, trained_before[name]), name


def test_instruction_batch_has_no_pixel_losses(tiny_model, tiny_batch):
    tiny_batch.masks = None
    tiny_batch.categories = ["object", "object"]
    losses = tiny_model.training_losses(tiny_batch)
    assert float(losses["focal"]) == 0.0 and float(losses["dice"]) == 0.0
    assert float(losses["loss"].detach()) == pytest.approx(float(losses["ce"].detach()))


def test_loss_weights_apply(make_cfg, tiny_batch):
    torch.manual_seed(0)
    model = build_model(make_cfg(loss__ce=0.0, loss__focal=2.0, loss__dice=0.5))
    losses = model.training_losses(tiny_batch)
    expected = 2.0 * losses["focal"] + 0.5 * losses["dice"]
    assert float(losses["loss"].detach()) == pytest.approx(float(expected.detach()), rel=1e-6)


def test_memory_bank_built_once_per_category(tiny_model):
    refs = torch.rand(2, 3, 64, 64)
    calls = tiny_model.encoder_calls
    bank = tiny_model.build_memory_bank(refs, category="grass")
    assert tiny_model.encoder_calls - calls == 2 * 4  # 2 shots x 4 rotations, encoded once
    assert bank.shots == 2
    assert bank.features[0].shape[0] == 8 * tiny_model.encoder(refs[:1]).patch_maps[0][0, 0].numel()
    calls = tiny_model.encoder_calls
    for _ in range(3):
        tiny_model.predict(torch.rand(2, 3, 64, 64), ["grass", "grass"], memory_bank=bank, generate=False)
    assert tiny_model.encoder_calls - calls == 3 * 2  # only the queries are encoded
    with pytest.raises(ValueError, match="memory bank is for 'grass'"):
        tiny_model.predict(torch.rand(1, 3, 64, 64), ["brick"], memory_bank=bank)


def test_rotations_are_real(tiny_model):
    from train.model.memory_bank import with_rotations

    img = torch.rand(1, 3, 64, 64)
    rotated = with_rotations(img)
    assert rotated.shape[0] == 4
    assert torch.equal(rotated[1], torch.rot90(img[0], 1, dims=(1, 2)))
    assert not torch.equal(rotated[0], rotated[2])


def test_bank_fusion_calibrates_both_maps_and_their_average(make_cfg):
    from train.model.memory_bank import combine_layers, squash

    torch.manual_seed(0)
    images, refs = torch.rand(1, 3, 64, 64), torch.rand(4, 3, 64, 64)
    model = build_model(make_cfg(use_llm=False, use_prompt_learner=False))
    bank = model.build_memory_bank(refs, "grass")
    assert bank.decoder_calibration is not None and bank.nn_calibration.top > bank.nn_calibration.level
    w = model.cfg.memory_bank.decoder_weight
    # The average is calibrated again on the references: each held out of the bank, as for its part.
    with torch.no_grad():
        own = model.encode(refs).patch_maps
        held_out = bank.layer_distance_maps(model.bank_layers(own), (64, 64), hold_out=[0, 1, 2, 3])
        own_dec = bank.decoder_calibration.normalise(model.text_map(own, ["grass"] * 4, (64, 64))[1])
    own_nn = bank.nn_calibration.normalise(combine_layers(held_out, bank.nn_calibration.layer_weights))
    average = model.calibrate((own_nn + w * own_dec) / (1 + w))
    assert bank.fused_calibration is not None
    fused = (bank.fused_calibration.level, bank.fused_calibration.top)
    assert fused == pytest.approx((average.level, average.top), rel=1e-4)
    assert average.top < 1.0  # the parts' peaks fall apart: their average ends below where each ends
    enc = model.encode(images)
    decoder = model.text_map(enc.patch_maps, ["grass"], (64, 64))[1]
    distance = bank.distance_map(model.bank_layers(enc.patch_maps), (64, 64))
    nn_part = bank.nn_calibration.normalise(distance)
    dec_part = bank.decoder_calibration.normalise(decoder)
    pred = model.predict(images, ["grass"], memory_bank=bank, generate=False)[0]
    expected = squash(bank.fused_calibration.normalise((nn_part + w * dec_part) / (1 + w)))[0, 0]
    assert torch.allclose(torch.from_numpy(pred.anomaly_map), expected, atol=1e-6)
    assert np.allclose(pred.decoder_map, decoder[0, 0].detach().numpy())  # reported beside the fused map
    bank.fusion = "replace"  # a bank keeps the fusion its category had at build (fusion_for)
    replaced = model.predict(images, ["grass"], memory_bank=bank, generate=False)[0].anomaly_map
    assert torch.allclose(torch.from_numpy(replaced), squash(nn_part)[0, 0], atol=1e-6)
    assert replaced.min() >= 0.0 and replaced.max() < 1.0


def test_amplified_fusion_scales_the_bank_by_the_decoder_and_adds_nothing_where_the_bank_sees_nothing(
    make_cfg,
):
    torch.manual_seed(0)
    model = build_model(make_cfg(use_llm=False, use_prompt_learner=False))
    model.cfg.memory_bank.fusion = "amplified"
    w = model.cfg.memory_bank.decoder_weight
    bank_part, decoder_part = torch.tensor([0.0, 0.5, 0.5, 2.0]), torch.tensor([3.0, 0.0, 2.0, 2.0])
    fused = model.fuse(bank_part.clone(), decoder_part.clone())
    assert torch.allclose(fused, torch.tensor([0.0, 0.5, 0.5 * (1 + 2 * w), 2.0 * (1 + 2 * w)]))
    # the average still serves where asked for (bank_forms compares the two), inputs untouched
    averaged = model.fuse(bank_part, decoder_part, "calibrated")
    assert torch.allclose(averaged, (bank_part + w * decoder_part) / (1 + w))
    refs = torch.rand(4, 3, 64, 64)
    bank = model.build_memory_bank(refs, "grass")  # its fused calibration is of the amplified map
    assert bank.fused_calibration is not None and bank.fused_calibration.top > bank.fused_calibration.level


def test_a_one_reference_bank_takes_the_calibration_training_measured(make_cfg):
    from train.model.config import OneShotCalibration
    from train.model.memory_bank import Calibration

    torch.manual_seed(0)
    model = build_model(make_cfg(use_llm=False, use_prompt_learner=False))
    refs = torch.rand(2, 3, 64, 64)
    own = model.build_memory_bank(refs[:1], "grass")  # nothing measured: held out against its rotations
    model.cfg.memory_bank.one_shot = {
        "grass": OneShotCalibration((0.1, 0.3), (0.0, 0.4), fused=(0.01, 0.8)),
        "brick": OneShotCalibration((0.2, 0.5), (0.1, 0.6), fused=(0.02, 0.7)),
        "coin": OneShotCalibration((0.3, 0.9), (0.2, 0.8), fused=(0.03, 0.9)),
    }
    bank = model.build_memory_bank(refs[:1], "grass")
    assert (bank.nn_calibration, bank.decoder_calibration) == (Calibration(0.1, 0.3), Calibration(0.0, 0.4))
    assert bank.fused_calibration == Calibration(0.01, 0.8)
    unseen = model.build_memory_bank(refs[:1], "wood")  # a category training never saw: the median
    assert (unseen.nn_calibration, unseen.decoder_calibration, unseen.fused_calibration) == (
        Calibration(0.2, 0.5),
        Calibration(0.1, 0.6),
        Calibration(0.02, 0.8),
    )
    assert (bank.fusion, unseen.fusion) == ("calibrated", "calibrated")  # nothing measured for amplified
    for name, fused in (("grass", (0.05, 0.9)), ("brick", (0.06, 1.1)), ("coin", (0.07, 1.3))):
        known = model.cfg.memory_bank.one_shot[name]
        model.cfg.memory_bank.one_shot[name] = dataclasses.replace(known, unseen_fused=fused)
    unseen = model.build_memory_bank(refs[:1], "wood")  # amplified, with its median boundary
    assert (unseen.fusion, unseen.fused_calibration) == ("amplified", Calibration(0.06, 1.1))
    seen = model.build_memory_bank(refs[:1], "grass")
    assert (seen.fusion, seen.fused_calibration) == ("calibrated", Calibration(0.01, 0.8))
    two = model.build_memory_bank(refs, "grass")  # two references hold each other out
    assert two.nn_calibration not in (Calibration(0.1, 0.3), own.nn_calibration)
    images = torch.rand(1, 3, 64, 64)
    before = model.predict(images, ["grass"], memory_bank=own, generate=False)[0].anomaly_map
    after = model.predict(images, ["grass"], memory_bank=bank, generate=False)[0].anomaly_map
    assert not np.allclose(before, after)


def test_training_measures_where_normal_ends_on_one_reference_banks(make_cfg):
    from train.model.memory_bank import combine_layers

    torch.manual_seed(0)
    model = build_model(make_cfg(use_llm=False, use_prompt_learner=False))
    images = {"grass": torch.rand(4, 3, 64, 64), "brick": torch.rand(3, 3, 64, 64)}
    sources = {c: [f"{c}/{i}.png" for i in range(len(x))] for c, x in images.items()}
    model.build_reference_pool(images, sources)
    pool = model.reference_pool
    measured = pool.one_shot_calibrations(model)
    assert set(measured) == {"grass", "brick"}
    for category, x in images.items():
        encoded = model.encode(x).patch_maps
        with torch.no_grad():
            decoder_maps = model.text_map(encoded, [category] * len(x), (64, 64))[1]
        distances, scored = [], []
        for j in range(len(x)):  # the bank a user builds from image j, on the category's other images
            bank = model.build_memory_bank(x[j : j + 1], category)
            rest = [torch.cat([m[:j], m[j + 1 :]]) for m in encoded]
            distances.append(bank.layer_distance_maps(model.bank_layers(rest), (64, 64)))
            scored += [i for i in range(len(x)) if i != j]
        nn = model.calibrate_distances(torch.cat(distances))
        assert measured[category].nn == pytest.approx((nn.level, nn.top), rel=1e-4)
        assert measured[category].layer_weights == pytest.approx(nn.layer_weights, rel=1e-4)
        assert len(nn.layer_weights) == len(model.bank_layers(encoded))
        assert sum(nn.layer_weights) == pytest.approx(1)
        decoder = model.calibrate(decoder_maps)
        assert measured[category].decoder == pytest.approx((decoder.level, decoder.top), rel=1e-4)
        weighed = combine_layers(torch.cat(distances), nn.layer_weights)
        fused = model.calibrate_fused(nn, decoder, weighed, decoder_maps[scored])
        assert measured[category].fused == pytest.approx((fused.level, fused.top), rel=1e-4)
        unseen = model.calibrate_fused(nn, decoder, weighed, decoder_maps[scored], "amplified")
        assert measured[category].unseen_fused == pytest.approx((unseen.level, unseen.top), rel=1e-4)
        assert unseen != fused  # the amplified map ends elsewhere: its own boundary, for other materials
        # A one-image training bank is calibrated as a user's one-reference bank will be.
        one = pool.bank(model, category, f"{category}/0.png", True, torch.Generator().manual_seed(0))
        assert one.shots == 1 and one.nn_calibration == pool.categories[category].one_shot.calibration
        written = measured[category].nn  # rounded to 6 digits
        assert (one.nn_calibration.level, one.nn_calibration.top) == pytest.approx(written, abs=1e-6)
        # Its fused map is calibrated on the category's other images, as a user's bank is.
        others = [k for k, image in enumerate(scored) if image != 0]
        own_decoder = model.calibrate(decoder_maps[1:])
        of_others = decoder_maps[[scored[k] for k in others]]
        expected = model.calibrate_fused(nn, own_decoder, weighed[others], of_others)
        got = (one.fused_calibration.level, one.fused_calibration.top)
        assert got == pytest.approx((expected.level, expected.top), rel=1e-4)
        everyone = list(range(len(x)))
        with torch.no_grad():
            full = model.build_memory_bank(x, category)
            held = full.layer_distance_maps(model.bank_layers(encoded), (64, 64), hold_out=everyone)
        all_nn = pool.categories[category].all_shots.calibration
        held = combine_layers(held, all_nn.layer_weights)[1:]
        expected = model.calibrate_fused(all_nn, own_decoder, held, decoder_maps[1:])
        rest = pool.bank(model, category, f"{category}/0.png", False, torch.Generator().manual_seed(0))
        got = (rest.fused_calibration.level, rest.fused_calibration.top)
        assert rest.shots == len(x) - 1 and got == pytest.approx((expected.level, expected.top), rel=1e-4)


def test_checkpoint_round_trip_gives_identical_outputs(make_cfg, tiny_batch, tmp_path):
    torch.manual_seed(0)
    cfg = make_cfg()
    model = build_model(cfg)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.training_losses(tiny_batch)["loss"].backward()
    optimizer.step()
    save_checkpoint(model, cfg, tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.yaml", "model.safetensors"]
    torch.manual_seed(123)  # a different init: only the loaded weights can make the outputs equal
    loaded, loaded_cfg = load_checkpoint(tmp_path / "ckpt")
    assert loaded_cfg == cfg
    images = torch.rand(2, 3, 64, 64)
    a = model.predict(images, ["grass", "grass"])
    b = loaded.predict(images, ["grass", "grass"])
    for pa, pb in zip(a, b, strict=True):
        assert (pa.anomaly_map == pb.anomaly_map).all()
        assert pa.score == pb.score and pa.answer == pb.answer
    model.eval()
    loaded.eval()
    with torch.no_grad():
        la, lb = model.training_losses(tiny_batch), loaded.training_losses(tiny_batch)
    assert float(la["loss"]) == float(lb["loss"])


def test_checkpoint_with_missing_tensor_is_rejected(make_cfg, tmp_path):
    from safetensors.torch import load_file, save_file

    cfg = make_cfg()
    save_checkpoint(build_model(cfg), cfg, tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    state.pop(next(iter(state)))
    save_file(state, str(tmp_path / "model.safetensors"))
    from train.model.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="missing 1: "):
        load_checkpoint(tmp_path)


def test_table4_switches(make_cfg, tiny_batch):
    torch.manual_seed(0)
    no_decoder = build_model(make_cfg(use_decoder=False, prompt_global=True))
    assert no_decoder.decoder is None
    pred = no_decoder.predict(torch.rand(1, 3, 64, 64), ["grass"])[0]
    assert pred.anomaly_map is None and pred.score is None and isinstance(pred.answer, str)
    losses = no_decoder.training_losses(tiny_batch)
    assert float(losses["focal"]) == 0.0 and float(losses["ce"]) > 0

    no_llm = build_model(make_cfg(use_llm=False, use_prompt_learner=False))
    assert no_llm.llm is None and no_llm.prompt_learner is None
    pred = no_llm.predict(torch.rand(1, 3, 64, 64), ["grass"])[0]
    assert pred.answer is None and pred.anomaly_map is not None
    assert float(no_llm.training_losses(tiny_batch)["ce"]) == 0.0

    no_pl = build_model(make_cfg(use_prompt_learner=False))
    assert no_pl.prompt_learner is None
    assert isinstance(no_pl.predict(torch.rand(1, 3, 64, 64), ["grass"])[0].answer, str)

    with pytest.raises(ValueError, match="use_prompt_learner needs use_llm"):
        make_cfg(use_llm=False)


def test_lora_trainable_for_the_ablation(make_cfg, tiny_batch):
    torch.manual_seed(0)
    frozen = build_model(make_cfg(lora__enabled=True, lora__r=4, lora__alpha=8))
    assert not any("lora_" in n for n, p in frozen.named_parameters() if p.requires_grad)
    assert any("lora_" in n for n, _ in frozen.named_parameters())
    model = build_model(make_cfg(lora__enabled=True, lora__trainable=True, lora__r=4, lora__alpha=8))
    lora = [n for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
    assert lora
    model.train()
    model.training_losses(tiny_batch)["loss"].backward()
    grads = dict(model.named_parameters())
    assert all(grads[n].grad is not None for n in lora)
    assert any(grads[n].grad.abs().sum() > 0 for n in lora)
    assert isinstance(model.predict(torch.rand(1, 3, 64, 64), ["grass"])[0].answer, str)


def test_few_shot_training_reads_a_bank_map_without_its_own_source(make_cfg, tiny_batch):
    torch.manual_seed(0)
    model = build_model(make_cfg(few_shot_train_prob=1.0))
    pool_images = torch.rand(3, 3, 64, 64)
    model.build_reference_pool({"grass": pool_images}, {"grass": ["a.png", "b.png", "c.png"]})
    pool = model.reference_pool
    g = torch.Generator().manual_seed(0)
    assert pool.choose("grass", "a.png", False, g) == [1, 2]
    assert all(pool.choose("grass", "b.png", True, g) != [1] for _ in range(20))
    seen = []
    model.prompt_learner.register_forward_hook(lambda m, args, out: seen.append(args[0].detach()))
    tiny_batch.sources = ["a.png", "a.png"]  # a normal image and its synthetic twin
    calls, built = model.encoder_calls, []
    bank = pool.bank
    pool.bank = lambda *args: built.append(args[2]) or bank(*args)
    losses = model.training_losses(tiny_batch)
    assert model.encoder_calls - calls == 2  # the pool was encoded once, up front
    assert built == ["a.png"]  # the twins share one bank
    assert torch.isfinite(losses["loss"])
    enc = model.encode(tiny_batch.images)
    decoder_map = model.text_map(enc.patch_maps, tiny_batch.categories, (64, 64))[1]
    assert not torch.allclose(seen[0], decoder_map)  # the prompt learner read the bank's map
    assert float(seen[0].max()) < 1.0


def test_few_shot_choice_comes_from_the_batch_seed(make_cfg, tiny_batch):
    model = build_model(make_cfg(few_shot_train_prob=0.5))
    model.build_reference_pool({"grass": torch.rand(2, 3, 64, 64)}, {"grass": ["a.png", "b.png"]})
    tiny_batch.sources = ["a.png", "a.png"]
    draws = []
    for seed in range(40):
        tiny_batch.seed = seed
        draws.append(model._few_shot_step(tiny_batch))
    torch.manual_seed(123)  # the global RNG plays no part
    again = []
    for seed in range(40):
        tiny_batch.seed = seed
        again.append(model._few_shot_step(tiny_batch))
    assert draws == again and 8 < sum(draws) < 32


def test_trainable_init_does_not_depend_on_the_global_rng(make_cfg):
    torch.manual_seed(0)
    first = build_model(make_cfg(), seed=7).trainable_state_dict()
    torch.manual_seed(1)
    torch.rand(1000)  # e.g. a first run converting the LLM consumes random numbers
    second = build_model(make_cfg(), seed=7).trainable_state_dict()
    other = build_model(make_cfg(), seed=8).trainable_state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_tokens_sit_on_the_word_embedding_scale(make_cfg):
    model = build_model(make_cfg(train_image_proj=False))
    table = model.llm.get_input_embeddings().weight.detach()
    word_rms = float(table.pow(2).mean(dim=1).sqrt().mean())
    enc = model.encode(torch.rand(2, 3, 64, 64))
    amap = torch.rand(2, 1, 64, 64)
    prefix = model._prefix(enc.global_embed, model._prompts(amap, enc.global_embed))
    n_start = len(model._start_ids) + (model.tokenizer.bos_token_id is not None)
    image_token = prefix[:, n_start]
    assert torch.allclose(image_token.pow(2).mean(-1).sqrt(), torch.full((2,), word_rms), rtol=1e-4)
    assert not model.image_proj.weight.requires_grad
    tokens = model.prompt_learner.convs(amap).flatten(2).transpose(1, 2)
    from train.model.prompt_learner import rms_scale

    scaled = rms_scale(tokens, word_rms)
    assert torch.allclose(scaled.pow(2).mean(-1).sqrt(), torch.full(scaled.shape[:2], word_rms), rtol=1e-4)


def test_answers_for_maps_reads_the_given_map(tiny_model):
    images = torch.rand(2, 3, 64, 64)
    answers = tiny_model.answers_for_maps(images, torch.rand(2, 1, 64, 64))
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def test_runs_in_bfloat16_as_deepspeed_casts_it(make_cfg, tiny_batch):
    torch.manual_seed(0)
    model = build_model(make_cfg()).to(torch.bfloat16)
    losses = model(tiny_batch)  # forward == training_losses (what DDP/DeepSpeed engines call)
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    assert model.decoder.proj[0].weight.grad.dtype == torch.bfloat16
    bank = model.build_memory_bank(torch.rand(1, 3, 64, 64), "grass")
    pred = model.predict(torch.rand(1, 3, 64, 64), ["grass"], memory_bank=bank)[0]
    assert pred.anomaly_map.dtype.name == "float32" and isinstance(pred.answer, str)


ADDED_LATER = [("prompt_cell_evidence", "cell_evidence"), ("prompt_map_summary", "summary")]


@pytest.mark.parametrize("key, part", ADDED_LATER)
def test_a_checkpoint_older_than_a_model_key_loads_as_it_was_trained(make_cfg, tmp_path, key, part):
    """A config.yaml written before ``key`` existed means the model without that part."""
    import yaml

    cfg = make_cfg()
    setattr(cfg, key, False)
    save_checkpoint(build_model(cfg), cfg, tmp_path)
    written = yaml.safe_load((tmp_path / "config.yaml").read_text())
    del written[key]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(written))
    model, loaded = load_checkpoint(tmp_path)
    assert getattr(loaded, key) is False
    assert getattr(model.prompt_learner, part) is None
