"""Ask the model about one image: it prints the answer and writes the anomaly-map overlay.

The model is a checkpoint folder (model.safetensors + config.yaml) or an MLflow URI; the default
is the registered champion, looked up in MLFLOW_TRACKING_URI or the MLflow store of --store
(a run folder, default runs/demo). With --reference NORMAL ... the map is the few-shot map
(distance to those normal images of the same category) instead of the zero-shot one.

With --question it answers once. Without, it answers the default question (the class description
+ "Is there any anomaly in the image?") and then chats: type follow-up questions about the same
image, an empty line or `exit` ends. Earlier turns are kept as the conversation context.

examples:
  python -m pipeline ask --image runs/demo/data/coin/test/scratch/000.png
  python -m pipeline ask --model runs/demo/train --image part.png --category bottle \\
      --reference good1.png good2.png --question "Where is the defect?"
"""

import argparse
from pathlib import Path

from pipeline.core.runtime import loading_for_good
from pipeline.model_ref import add_model_arguments, resolve_checkpoint

HELP = "answer a question about an image and write its anomaly-map overlay (chat without --question)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--image", required=True, metavar="PATH", help="the image to ask about")
    parser.add_argument(
        "--reference",
        nargs="+",
        default=[],
        metavar="NORMAL",
        help="normal images of the same category (few-shot)",
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


def guess_category(image: str) -> str:
    """``<root>/<category>/(train|test)/<defect>/<file>`` -> category; else "object"."""
    from pathlib import Path

    parts = Path(image).parts
    for i in range(len(parts) - 2, 0, -1):
        if parts[i] in ("train", "test"):
            return parts[i - 1]
    return "object"


def overlay_path(image: str, out: str) -> Path:
    """``out/<stem>_<hash>_anomaly.png``: the hash of the image's resolved path keeps good/000.png
    and stain/000.png apart, and asking about the same image again replaces its own overlay."""
    import hashlib

    digest = hashlib.sha256(str(Path(image).resolve()).encode()).hexdigest()[:8]
    return Path(out) / f"{Path(image).stem}_{digest}_anomaly.png"


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from train.model.checkpoint import verify_checkpoint

    _check_images([args.image, *args.reference])
    category = args.category or guess_category(args.image)
    checkpoint = resolve_checkpoint(args.model, args.store)
    verify_checkpoint(checkpoint)

    # torch and transformers (most of ask's start-up) load only here, after the checks above, so a
    # bad image or checkpoint fails in a second; MLflow loads only for a models:/ or runs:/ URI.
    print(f"loading {checkpoint} ...", file=sys.stderr)
    with loading_for_good():  # the modules and the model live as long as the process
        from pipeline.inference import default_question, predict_one, read_image, write_overlay
        from train.model.predictor import Predictor

        predictor = Predictor.from_checkpoint(checkpoint, device=args.device)
    question = args.question or default_question(category)
    pred = predict_one(predictor, args.image, category=category, question=question, references=args.reference)
    overlay = Path(args.overlay) if args.overlay else overlay_path(args.image, args.out)
    title = f"{category}: score {pred.score:.3f}" if pred.score is not None else category
    write_overlay(read_image(args.image, predictor.image_size), pred, overlay, title)
    print(f"Q: {question}")
    print(f"A: {pred.answer}")
    print(
        f"anomaly score {pred.score:.4f}; overlay: {overlay}"
        if pred.score is not None
        else f"overlay: {overlay}"
    )
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
            predictor, args.image, category, question=text, references=args.reference, history=history
        )
        print(f"A: {turn.answer}")
        history += [{"from": "human", "value": text}, {"from": "gpt", "value": turn.answer or ""}]


def _check_images(paths: list[str]) -> None:
    """Every image must exist and decode (with the model's reader) before the slow model load, so a
    corrupt file is named at once instead of after the load."""
    from pipeline.inference import check_image

    for path in paths:
        check_image(path)
