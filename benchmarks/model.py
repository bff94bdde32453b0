"""Model timings on this machine (CPU): per-image inference (map only, map + answer) for the demo
preset, and one training step for the tiny and demo presets. Prints one JSON object.

    .venv/bin/python benchmarks/model.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _batch(size: int, n: int):
    import torch

    from train.model import Batch

    images = torch.rand(n, 3, size, size)
    masks = torch.zeros(n, 1, size, size)
    masks[:, :, size // 4 : size // 2, size // 4 : size // 2] = 1.0
    turn = [
        {
            "from": "human",
            "value": "This is a photo of grass for anomaly detection. Is there any anomaly in the image?",
        },
        {"from": "gpt", "value": "Yes, there is an anomaly in the image, at the top left of the image."},
    ]
    return Batch(images, masks, ["grass"] * n, [turn] * n)


def _train_step_seconds(cfg, batch, repeats: int) -> float:
    import torch

    from train.model import build_model

    model = build_model(cfg).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def step():
        optimizer.zero_grad(set_to_none=True)
        model.training_losses(batch)["loss"].backward()
        optimizer.step()

    return _median_seconds(step, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for key, value in {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }.items():
        os.environ.setdefault(key, value)
    import torch

    from pipeline.pipeline_config import load_pipeline_config
    from train.model import build_model

    root = Path(__file__).resolve().parents[1] / "configs"
    demo = load_pipeline_config(root / "demo.yaml").model
    tiny = load_pipeline_config(root / "tiny.yaml").model
    torch.manual_seed(0)
    model = build_model(demo).eval()
    size = demo.image_size
    image = torch.rand(1, 3, size, size)
    refs = torch.rand(1, 3, size, size)
    bank = model.build_memory_bank(refs, "grass")
    result = {
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "demo_infer_map_only_s_per_image": _median_seconds(
            lambda: model.predict(image, ["grass"], generate=False), args.repeats
        ),
        "demo_infer_map_fewshot_s_per_image": _median_seconds(
            lambda: model.predict(image, ["grass"], memory_bank=bank, generate=False), args.repeats
        ),
        "demo_infer_map_and_answer_s_per_image": _median_seconds(
            lambda: model.predict(image, ["grass"]), args.repeats
        ),
        "demo_answer_tokens_limit": demo.llm.max_new_tokens,
        "tiny_train_step_s": _train_step_seconds(tiny, _batch(tiny.image_size, 4), args.repeats),
        "tiny_batch": 4,
        "demo_train_step_s": _train_step_seconds(demo, _batch(size, 4), args.repeats),
        "demo_batch": 4,
        "demo_trainable_params": sum(p.numel() for p in model.trainable_state_dict().values()),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
