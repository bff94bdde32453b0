"""Does the answer follow the anomaly map? Swap maps between a normal and an anomalous image.

Per category the memory bank is built once (``--shots``: all train normals by default, K the first
K, 0 no bank: the decoder's map) and every test image gets its map. The LLM then answers twice
per image through ``answers_for_maps``, once with its own map and once with the map of a partner
image of the other class (normal and anomalous test images of the category paired in sorted
order), so the map is the only thing that differs between the two answers.

Figures, per category and pooled over all images:
- ``own_accuracy``: the yes/no of the answers with their own maps against the labels;
- ``pairs``: normal/anomalous pairs; ``pairs_own_differ``: pairs whose own answers say no/yes as
  their labels do (where a swap has something to flip);
- ``swap_flip_rate``: of the images in a pair, the fraction whose yes/no changes with the partner's map;
- ``swap_follows_map``: of the images in a pair, the fraction whose answer with the partner's map
  equals the partner's label (1.0: the answer is read off the map alone).

    python benchmarks/answers_follow_map.py [--model runs/demo/train] [--data runs/demo/data] [--shots all]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the repository root, for `benchmarks.*` imports

from benchmarks.quality_cli import parser_with_model_and_data, start  # noqa: E402

BATCH = 8


# --- pairing and the figures (pure functions) ------------------------------------------------
def partner_pairs(labels: list[int]) -> list[tuple[int, int]]:
    """(normal index, anomalous index) pairs: the i-th normal with the i-th anomalous image, in
    the given (sorted) order; the surplus of the larger class stays unpaired."""
    normals = [i for i, y in enumerate(labels) if y == 0]
    anomalous = [i for i, y in enumerate(labels) if y == 1]
    return list(zip(normals, anomalous, strict=False))


def partners(pairs: list[tuple[int, int]]) -> dict[int, int]:
    """Image index -> its partner's index, both ways."""
    out: dict[int, int] = {}
    for a, b in pairs:
        out[a], out[b] = b, a
    return out


def _rate(hits: int, total: int) -> float | None:
    return hits / total if total else None


def follow_stats(
    labels: list[int],
    own: list[bool | None],
    swapped: dict[int, bool | None],
    pairs: list[tuple[int, int]],
) -> dict[str, Any]:
    """The figures from yes/no verdicts (True yes, False no, None unparsed): ``own[i]`` with image
    i's own map, ``swapped[i]`` with its partner's map (for each image in ``pairs``). An unparsed
    verdict is never right and counts as different from a parsed one."""
    if len(own) != len(labels):
        raise ValueError(f"{len(labels)} labels but {len(own)} own verdicts")
    mates = partners(pairs)
    if set(swapped) != set(mates):
        raise ValueError("swapped verdicts must cover exactly the paired images")
    truth = [bool(y) for y in labels]
    flips = sum(swapped[i] != own[i] for i in mates)
    follows = sum(swapped[i] is not None and swapped[i] == truth[j] for i, j in mates.items())
    differ = sum(own[a] == truth[a] and own[b] == truth[b] for a, b in pairs)
    return {
        "images": len(labels),
        "own_accuracy": _rate(
            sum(v is not None and v == t for v, t in zip(own, truth, strict=True)), len(labels)
        ),
        "own_unparsed": sum(v is None for v in own),
        "pairs": len(pairs),
        "pairs_own_differ": differ,
        "swapped_images": len(mates),
        "swap_flip_rate": _rate(flips, len(mates)),
        "swap_follows_map": _rate(follows, len(mates)),
        "swap_unparsed": sum(v is None for v in swapped.values()),
    }


def pooled(parts: list[tuple[list[int], list[bool | None], dict[int, bool | None], list[tuple[int, int]]]]):
    """``follow_stats`` over several categories at once (indices shifted per category)."""
    labels: list[int] = []
    own: list[bool | None] = []
    swapped: dict[int, bool | None] = {}
    pairs: list[tuple[int, int]] = []
    for cat_labels, cat_own, cat_swapped, cat_pairs in parts:
        offset = len(labels)
        labels += cat_labels
        own += cat_own
        swapped.update({i + offset: v for i, v in cat_swapped.items()})
        pairs += [(a + offset, b + offset) for a, b in cat_pairs]
    return follow_stats(labels, own, swapped, pairs)


def parse_shots(text: str) -> int | str:
    if text == "all":
        return "all"
    if text.isdigit():
        return int(text)
    raise argparse.ArgumentTypeError(f"shots: {text!r} is neither 'all' nor an integer >= 0")


# --- the run --------------------------------------------------------------------------------
def read_images(paths: list[Any], size: int) -> list[np.ndarray]:
    from evaluate.data import load_image

    return [load_image(p, size) for p in paths]


def build_bank(predictor: Any, normals: list[Any], shots: int | str, category: str) -> Any:
    """All train normals, the first K, or None (0: the decoder's map)."""
    if shots == 0:
        return None
    chosen = normals if shots == "all" else normals[:shots]
    if not chosen or (shots != "all" and len(chosen) < shots):
        raise ValueError(f"{category}: {shots}-shot needs more normal train images than {len(normals)}")
    return predictor.memory_bank(category, read_images([r.path for r in chosen], predictor.image_size))


def own_maps(predictor: Any, tests: list[Any], bank: Any, category: str) -> Any:
    """(N, 1, H, W) maps the model gives each test image (no answers generated)."""
    import torch

    maps = []
    for i in range(0, len(tests), BATCH):
        images = read_images([r.path for r in tests[i : i + BATCH]], predictor.image_size)
        preds = predictor.predict(images, [category] * len(images), memory_bank=bank, generate=False)
        maps += [torch.from_numpy(p.anomaly_map) for p in preds]
    return torch.stack(maps).unsqueeze(1)


def answers(predictor: Any, tests: list[Any], maps: Any, question: str) -> list[str]:
    """What the LLM says about each test image when the prompt learner reads ``maps``."""
    out: list[str] = []
    for i in range(0, len(tests), BATCH):
        arrays = read_images([r.path for r in tests[i : i + BATCH]], predictor.image_size)
        out += predictor.model.answers_for_maps(predictor.to_tensor(arrays), maps[i : i + BATCH], question)
    return out


def run_category(predictor: Any, category: str, normals: list[Any], tests: list[Any], shots: int | str):
    """The category's labels, verdicts and pairs, and one example pair for the report."""
    from synth.text import question_for
    from train.model.conversation import parse_answer

    bank = build_bank(predictor, normals, shots, category)
    labels = [int(r.label) for r in tests]
    pairs = partner_pairs(labels)
    mates = partners(pairs)
    maps = own_maps(predictor, tests, bank, category)
    question = question_for(category)
    own_text = answers(predictor, tests, maps, question)
    order = sorted(mates)
    swapped_maps = maps[[mates[i] for i in order]]
    swap_text = answers(predictor, [tests[i] for i in order], swapped_maps, question)
    own = [parse_answer(a).is_anomalous for a in own_text]
    swapped = {i: parse_answer(a).is_anomalous for i, a in zip(order, swap_text, strict=True)}
    example = None
    if pairs:
        a, b = pairs[0]
        text = dict(zip(order, swap_text, strict=True))
        example = {
            tests[i].relpath: {"own_map": own_text[i], "partner_map": text[i], "partner": tests[j].relpath}
            for i, j in ((a, b), (b, a))
        }
    return (labels, own, swapped, pairs), example


def main() -> None:
    parser = parser_with_model_and_data(
        __doc__, 1, "1: on a busy 2-core machine, 2 threads make token-by-token decoding many times slower"
    )
    parser.add_argument(
        "--shots", type=parse_shots, default="all", help="all (default), K, or 0 (decoder map)"
    )
    parser.add_argument("--categories", default="", help="comma-separated; default: all of --data")
    args = parser.parse_args()
    start(args.threads)
    from synth.datasets import read_dataset
    from train.model.predictor import Predictor

    started = time.perf_counter()
    predictor = Predictor.from_checkpoint(args.model, device="cpu")
    wanted = [c for c in args.categories.split(",") if c]
    test = read_dataset(args.data, "mvtec", split="test", categories=wanted)
    categories = sorted({r.category for r in test})
    train = [] if args.shots == 0 else read_dataset(args.data, "mvtec", split="train", categories=categories)
    parts, per_category, examples = [], {}, {}
    for c in categories:
        normals = [r for r in train if r.category == c and r.label == 0]
        tests = [r for r in test if r.category == c]
        part, examples[c] = run_category(predictor, c, normals, tests, args.shots)
        parts.append(part)
        per_category[c] = follow_stats(*part)
        print(f"answers_follow_map: {c}: {per_category[c]}", file=sys.stderr)
    print(
        json.dumps(
            {
                "model": str(args.model),
                "data": str(args.data),
                "shots": args.shots,
                "map": "decoder" if args.shots == 0 else "memory bank fused with the decoder",
                "per_category": per_category,
                "overall": pooled(parts),
                "examples": examples,
                "wall_s": round(time.perf_counter() - started, 1),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
