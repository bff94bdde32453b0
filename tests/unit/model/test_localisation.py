"""Real EfficientNet-Lite0 weights: the few-shot map finds gravel pasted into grass; random does worse."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from train.model import build_model

SIZE = 224


def grass_case(seed: int = 0):
    """Normal grass crops (references), and grass crops with a gravel square pasted in (+ masks)."""
    from skimage import data

    rng = np.random.default_rng(seed)
    grass = data.grass().astype(np.float32) / 255.0
    gravel = data.gravel().astype(np.float32) / 255.0

    def crop(img):
        y, x = rng.integers(0, img.shape[0] - SIZE, size=2)
        return img[y : y + SIZE, x : x + SIZE].copy()

    refs = [crop(grass) for _ in range(2)]
    queries, masks = [], []
    for _ in range(3):
        q, m = crop(grass), np.zeros((SIZE, SIZE), np.float32)
        side = int(rng.integers(40, 70))
        y, x = rng.integers(10, SIZE - side - 10, size=2)
        q[y : y + side, x : x + side] = crop(gravel)[:side, :side]
        m[y : y + side, x : x + side] = 1.0
        queries.append(q)
        masks.append(m)

    def rgb(imgs):
        return torch.from_numpy(np.stack(imgs)).unsqueeze(1).repeat(1, 3, 1, 1)

    return rgb(refs), rgb(queries), np.stack(masks)


def pixel_auroc(pretrained: bool, make_cfg) -> float:
    torch.manual_seed(0)
    cfg = make_cfg(
        encoder__name="efficientnet_lite0",
        encoder__pretrained=pretrained,
        use_llm=False,
        use_prompt_learner=False,
        memory_bank__fusion="replace",  # the bank's map alone: the decoder here is untrained
    )
    cfg.image_size = SIZE
    model = build_model(cfg)
    refs, queries, masks = grass_case()
    bank = model.build_memory_bank(refs, category="grass")
    preds = model.predict(queries, ["grass"] * len(queries), memory_bank=bank)
    scores = np.stack([p.anomaly_map for p in preds])
    return float(roc_auc_score(masks.ravel().astype(int), scores.ravel()))


def test_few_shot_map_separates_pasted_defect(make_cfg):
    pretrained = pixel_auroc(True, make_cfg)
    random = pixel_auroc(False, make_cfg)
    assert pretrained > 0.9, pretrained
    assert random < pretrained - 0.05, (random, pretrained)


def test_pretrained_encoder_classifies_a_cat():
    """The packaged weights are real ImageNet weights: skimage's cat is an ImageNet cat (281-285)."""
    from skimage import data
    from skimage.transform import resize

    from train.model.encoders import EfficientNetLite0Encoder

    enc = EfficientNetLite0Encoder()
    img = torch.from_numpy(resize(data.chelsea(), (SIZE, SIZE), anti_aliasing=True)).float()
    with torch.no_grad():
        logits = enc.net(enc.normalise(img.permute(2, 0, 1).unsqueeze(0)))
    assert int(logits.argmax()) in range(281, 286)


@pytest.mark.parametrize("size", [224, 160])
def test_encoder_maps_at_any_size(size):
    from train.model.encoders import EfficientNetLite0Encoder

    enc = EfficientNetLite0Encoder()
    out = enc(torch.rand(1, 3, size, size))
    assert [m.shape[1] for m in out.patch_maps] == enc.channels == [40, 80, 112, 320]
    assert out.patch_maps[0].shape[-1] == size // 8
    assert out.global_embed.shape == (1, 1280)


def test_a_sharp_layer_skips_the_neighbourhood_average():
    import torch.nn.functional as F

    from train.model.encoders import EfficientNetLite0Encoder

    averaged, sharp = EfficientNetLite0Encoder([2, 4]), EfficientNetLite0Encoder([2, 4], sharp_layers=[2])
    images = torch.rand(1, 3, 64, 64)
    a, s = averaged(images).patch_maps, sharp(images).patch_maps
    assert s[0].shape[-1] == 64 // 4 and sharp.channels == [24, 40]
    averaged_again = F.avg_pool2d(s[0], 3, stride=1, padding=1, count_include_pad=False)
    assert torch.allclose(averaged_again, a[0], atol=1e-6)
    assert not torch.allclose(s[0], a[0], atol=1e-3)
    assert torch.equal(s[1], a[1])
    with pytest.raises(ValueError, match="sharp_layers"):
        EfficientNetLite0Encoder([4], sharp_layers=[2])
