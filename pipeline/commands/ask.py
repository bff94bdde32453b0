"""Ask the model about one image: it prints the answer and the map's defect regions (boxes in the
image's own pixels, evaluate.regions) and writes the anomaly-map overlay with those boxes drawn.

The model is a checkpoint folder (model.safetensors + config.yaml) or an MLflow URI; the default
is the registered champion, looked up in MLFLOW_TRACKING_URI or the MLflow store of --store
(a run folder, default runs/demo). Where normal images of the category are at hand, the map is
the memory bank's (distance to those images, fused with the decoder's map), as in evaluation:
--reference NORMAL ..., or by default the category's train/good folder when --image lies in an
MVTec-style tree (<root>/<category>/test/<defect>/<file>), at most --max-references of them.
Elsewhere, or with --no-references, the map is the decoder's alone.

With --question it answers once. Without, it answers the default question (the class description
+ "Is there any anomaly in the image?") and then chats: type follow-up questions about the same
image, an empty line or `exit` ends. Earlier turns are kept as the conversation context.

examples:
  python -m pipeline ask --image runs/demo/data/coin/test/scratch/000.png
  python -m pipeline ask --model runs/demo/train --image part.png --category bottle \\
      --reference good1.png good2.png --question "Where is the defect?"
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.core.errors import InputError
from pipeline.core.runtime import loading_for_good
from pipeline.model_ref import add_model_arguments, resolve_checkpoint

if TYPE_CHECKING:
    from evaluate.regions import Region

DEFAULT_MAX_REFERENCES = 16
"""train/good images ``ask`` banks by default: a real category holds hundreds, whose all-shot bank
takes minutes to build (evaluation builds it once per category; ``ask`` would at every call)."""

HELP = "answer a question about an image and write its anomaly-map overlay (chat without --question)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--image", required=True, metavar="PATH", help="the image to ask about")
    bank = parser.add_mutually_exclusive_group()
    bank.add_argument(
        "--reference",
        nargs="+",
        default=[],
        metavar="NORMAL",
        help="normal images of the same category for the memory bank (default: <root>/<category>/"
        "train/good when --image lies in an MVTec-style tree)",
    )
    bank.add_argument(
        "--no-references",
        action="store_true",
        help="no memory bank: the decoder's map alone, even where normal images are at hand",
    )
    parser.add_argument(
        "--max-references",
        type=int,
        default=DEFAULT_MAX_REFERENCES,
        metavar="N",
        help="at most N of the train/good images found beside --image, evenly spaced in name order "
        f"(default {DEFAULT_MAX_REFERENCES}: the bank builds in about a second on 2 cores)",
    )
    parser.add_argument("--question", metavar="TEXT", help="ask once (default: chat in the terminal)")
    parser.add_argument(
        "--category",
        metavar="NAME",
        help="object class for the prompt (default: taken from an MVTec-style path, else 'object')",
    )
    parser.add_argument(
        "--out",
        default=".",
        metavar="DIR",
        help="folder for the overlay PNG (default: here); its name, <stem>_<8 hex of the image's "
        "full path>_anomaly.png, cannot collide for two images of the same name",
    )
    parser.add_argument("--overlay", metavar="PATH", help="the overlay's exact path (overrides --out)")
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="where the model runs (default auto: CUDA when a GPU is visible, else CPU)",
    )


def overlay_path(image: str, out: str) -> Path:
    """``out/<stem>_<hash>_anomaly.png``: the hash of the image's resolved path keeps good/000.png
    and stain/000.png apart, and asking about the same image again replaces its own overlay."""
    import hashlib

    digest = hashlib.sha256(str(Path(image).resolve()).encode()).hexdigest()[:8]
    return Path(out) / f"{Path(image).stem}_{digest}_anomaly.png"


def region_line(number: int, region: Region) -> str:
    """One region as ``ask`` prints it: its box in the image's own pixels, share, scores, cell."""
    x0, y0, x1, y1 = region.box
    return (
        f"region {number}: box ({x0}, {y0})-({x1}, {y1}) px, {100 * region.area_share:.1f} % of the image, "
        f"peak {region.peak:.2f}, mean {region.mean:.2f}, {region.position}"
    )


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from pipeline.references import evenly_spaced, guess_category, normal_images_beside
    from train.model.checkpoint import verify_checkpoint

    if args.max_references < 1:
        raise InputError(f"--max-references must be at least 1, got {args.max_references}")
    references = list(args.reference)
    found = [] if references or args.no_references else normal_images_beside(args.image)
    references = references or [str(p) for p in evenly_spaced(found, args.max_references)]
    _check_images([args.image, *references])
    category = args.category or guess_category(args.image)
    checkpoint = resolve_checkpoint(args.model, args.store)
    verify_checkpoint(checkpoint)
    if found:
        print(
            f"memory bank: {len(references)} of {len(found)} normal images in {found[0].parent} "
            "(--reference to choose them, --no-references for the decoder's map alone)",
            file=sys.stderr,
        )

    # torch and transformers (most of ask's start-up) load only here, after the checks above, so a
    # bad image or checkpoint fails in a second; MLflow loads only for a models:/ or runs:/ URI.
    print(f"loading {checkpoint} ...", file=sys.stderr)
    with loading_for_good():  # the modules and the model live as long as the process
        from pipeline.inference import default_question, predict_one, read_image, write_overlay
        from train.model.predictor import Predictor

        predictor = Predictor.from_checkpoint(checkpoint, device=args.device)
    from evaluate.regions import find_regions
    from pipeline.inference import original_size

    question = args.question or default_question(category)
    pred = predict_one(predictor, args.image, category=category, question=question, references=references)
    overlay = Path(args.overlay) if args.overlay else overlay_path(args.image, args.out)
    title = f"{category}: score {pred.score:.3f}" if pred.score is not None else category
    boxes = [region.box for region in find_regions(pred.anomaly_map)]  # at the map's size, as drawn
    write_overlay(read_image(args.image, predictor.image_size), pred, overlay, title, boxes)
    print(f"Q: {question}")
    print(f"A: {pred.answer}")
    print(
        f"anomaly score {pred.score:.4f}; overlay: {overlay}"
        if pred.score is not None
        else f"overlay: {overlay}"
    )
    for i, region in enumerate(find_regions(pred.anomaly_map, original_size(args.image)), start=1):
        print(region_line(i, region))
    if args.question:
        return 0
    history = [{"from": "human", "value": question}, {"from": "gpt", "value": pred.answer or ""}]
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        text = line.strip()
        if not line or not text or text in ("exit", "quit"):
            return 0
        turn = predict_one(
            predictor, args.image, category, question=text, references=references, history=history
        )
        print(f"A: {turn.answer}")
        history += [{"from": "human", "value": text}, {"from": "gpt", "value": turn.answer or ""}]


def _check_images(paths: list[str]) -> None:
    """Every image must exist and decode (with the model's reader) before the slow model load, so a
    corrupt file is named at once instead of after the load."""
    from pipeline.inference import check_image

    for path in paths:
        check_image(path)
