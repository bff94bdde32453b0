"""Answers decoded as the product does against plainer ways: the same answers, and how much faster.

    python benchmarks/batched_answers.py [--model runs/demo/train] [--data runs/demo/data] [--batch 8]

For every test image of every category (the demo's after `make demo`), with the category's
all-shot memory bank, it asks the trained question three times: in batches of --batch images with
the answers' phrasings proposed ahead (what ``predict`` does: one LLM call checks several tokens
of every row), one image at a time, and in batches without proposals (one call per token). Prints
one JSON object: how many answers of each plainer way are identical to the product's (all of them,
or batching or proposals changed what the model says) and the seconds of each.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the repository root, for project imports

from benchmarks.quality_cli import parser_with_model_and_data, start  # noqa: E402


def main() -> dict:
    parser = parser_with_model_and_data(__doc__, 2, "2: the default of a 2-core machine")
    parser.add_argument("--batch", type=int, default=8, help="images per batch (evaluation's default)")
    args = parser.parse_args()
    start(args.threads)
    from evaluate.data import load_image
    from synth.datasets import read_dataset
    from synth.text import question_for
    from train.model.predictor import Predictor

    predictor = Predictor.from_checkpoint(args.model, device="cpu")
    tests = read_dataset(args.data, "mvtec", split="test")
    report: dict = {"model": str(args.model), "batch": args.batch, "per_category": {}}
    identical = identical_plain = total = 0
    batched_s = single_s = plain_s = 0.0
    phrasings = predictor.model.answer_phrasings
    for category in sorted({r.category for r in tests}):
        refs = sorted(r.path for r in read_dataset(args.data, "mvtec", split="train", categories=[category]))
        bank = predictor.memory_bank(category, [load_image(p, predictor.image_size) for p in refs])
        images = [load_image(r.path, predictor.image_size) for r in tests if r.category == category]
        question, same, same_plain = question_for(category), 0, 0
        for i in range(0, len(images), args.batch):
            chunk = images[i : i + args.batch]
            started = time.perf_counter()
            together = predictor.predict(chunk, [category] * len(chunk), memory_bank=bank, questions=question)
            batched_s += time.perf_counter() - started
            started = time.perf_counter()
            alone = [
                predictor.predict([im], [category], memory_bank=bank, questions=question)[0] for im in chunk
            ]
            single_s += time.perf_counter() - started
            predictor.model.answer_phrasings = ()  # every token decoded on its own
            started = time.perf_counter()
            plain = predictor.predict(chunk, [category] * len(chunk), memory_bank=bank, questions=question)
            plain_s += time.perf_counter() - started
            predictor.model.answer_phrasings = phrasings
            same += sum(a.answer == b.answer for a, b in zip(together, alone, strict=True))
            same_plain += sum(a.answer == b.answer for a, b in zip(together, plain, strict=True))
        report["per_category"][category] = {
            "images": len(images),
            "identical_answers": same,
            "identical_without_proposals": same_plain,
        }
        identical, identical_plain = identical + same, identical_plain + same_plain
        total += len(images)
    report.update(
        {
            "images": total,
            "identical_answers": identical,
            "identical_without_proposals": identical_plain,
            "batched_s": round(batched_s, 1),
            "one_at_a_time_s": round(single_s, 1),
            "batched_without_proposals_s": round(plain_s, 1),
            "speed_up": round(single_s / batched_s, 2),
            "speed_up_of_proposals": round(plain_s / batched_s, 2),
        }
    )
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
