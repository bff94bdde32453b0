"""Evaluate a trained model as the paper does, in parallel on Ray actors.

Per category and their mean: Image-AUROC (image score = max of the anomaly map), Pixel-AUROC (at
the model's input size, 224 by default), accuracy (the LLM's answer parsed strictly as yes/no, the
reference's "Yes"/"No" substring rule beside it; with --no-llm the paper's rule: threshold = highest
score of a normal test image), AUPRO (FPR <= 0.3) and F1-max, plus whether the answers follow the
map (answer_map_agreement, position_accuracy and map_position_accuracy, the latter what naming the
map's hottest cell would score, map_best_accuracy), where the map's decision point (0.5) errs
(decision_accuracy, false_alarm_share, miss_share; a category where most normals are flagged or
most defects missed is named, with what to do) and whether the region boxes find the detected
defects (region_box_iou, region_box_iou_share_050). By default (--shots all) each
category's normal train images form a memory bank (coreset-reduced) whose map is fused with the
decoder's; the decoder's own figures are reported beside. --shots K uses K references (the paper's
few-shot protocol, chosen deterministically, listed in metrics.json); --shots 0 the decoder alone.
A category without masks gets image metrics only.

Writes to --out: metrics.json, metrics.md, answers.jsonl, maps/<category>/<defect>_<stem>.png
(image | heatmap, ground truth outlined in green, the answer). Settings come from the `evaluate:`
section of --config; flags given here override it.

examples:
  python -m pipeline evaluate --model runs/train --data runs/data --out runs/eval
  python -m pipeline evaluate --model models:/anomalygpt@champion --data /data/visa --format visa \\
      --shots 1 --workers 4 --categories candle,pcb1 --out runs/eval-visa-1shot
"""

import argparse
import os

from pipeline.cli import add_config_arguments

HELP = "score a model on a test set: AUROCs, accuracy, AUPRO, F1-max, anomaly maps (Ray)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="models:/anomalygpt@champion",
        metavar="PATH_OR_URI",
        help="checkpoint folder (model.safetensors + config.yaml) or MLflow models:/ or runs:/ URI "
        "(default: models:/anomalygpt@champion)",
    )
    parser.add_argument("--data", required=True, metavar="ROOT", help="dataset root")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--format", choices=["mvtec", "visa", "folder"], help="dataset layout (default mvtec)"
    )
    parser.add_argument(
        "--shots",
        type=_shots,
        metavar="all|K",
        help="memory bank of all normal train images (all, default), of K of them, or none (0: the "
        "decoder's map alone)",
    )
    parser.add_argument("--workers", type=int, help="Ray actors, each loads the model once (default 1)")
    parser.add_argument("--categories", metavar="A,B", help="comma-separated categories (default: all)")
    parser.add_argument(
        "--no-llm", action="store_true", help="no answers; accuracy by the paper's threshold rule"
    )
    parser.add_argument(
        "--allow-missing-masks",
        action="store_true",
        help="leave anomalous images without a mask out of the pixel metrics (default: error)",
    )
    parser.add_argument("--no-maps", action="store_true", help="do not write the overlay PNGs")
    parser.add_argument(
        "--no-baseline",
        action="store_true",
        help="do not score the plain nearest-neighbour memory beside the model (metrics.json "
        "'baseline'; on by default with references: the floor the model's map must clear)",
    )
    parser.add_argument(
        "--bank-budget",
        type=int,
        metavar="N",
        help="patches per layer of each memory bank (default: the checkpoint's memory_bank.max_patches); "
        "lower it for categories of hundreds of images on CPUs",
    )
    parser.add_argument(
        "--feedback",
        metavar="DIR",
        help="a feedback folder (pipeline feedback): each category's confirmed normals join its bank "
        "as cover, as serve and inspect --feedback bank them (in the bank, not its calibration)",
    )
    parser.add_argument(
        "--mlflow-uri",
        metavar="URI",
        help="tracking URI to resolve a models:/ or runs:/ --model (default: $MLFLOW_TRACKING_URI)",
    )
    add_config_arguments(parser)


def _shots(text: str) -> str:
    if text == "all" or (text.isdigit() and int(text) >= 0):
        return text
    raise argparse.ArgumentTypeError(f"expected 'all' or an integer >= 0, got {text!r}")


def run(args: argparse.Namespace) -> int:
    from pipeline.core.config import ConfigError
    from pipeline.pipeline_config import load_pipeline_config

    overrides = list(args.overrides)
    if args.format:
        overrides.append(f"evaluate.format={args.format}")
    if args.allow_missing_masks:
        overrides.append("evaluate.allow_missing_masks=true")
    if args.no_maps:
        overrides.append("evaluate.write_maps=false")
    if args.no_baseline:
        overrides.append("evaluate.baseline=false")
    for flag in ("shots", "workers", "bank_budget", "feedback"):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"evaluate.{flag}={value}")
    config = load_pipeline_config(args.config, overrides).evaluate
    categories = None
    if args.categories is not None:
        categories = [c.strip() for c in args.categories.split(",") if c.strip()]
        if not categories:
            raise ConfigError(f"--categories {args.categories!r} names no category")
    model = str(args.model)
    if model.startswith(("models:/", "runs:/")):
        uri = args.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            raise ConfigError(
                f"--model {model} is an MLflow URI: pass --mlflow-uri or set MLFLOW_TRACKING_URI"
            )
        os.environ["MLFLOW_TRACKING_URI"] = uri

    from evaluate.job import run_evaluation
    from evaluate.report import markdown_table
    from pipeline.model_download import resolve_model

    # A reference that does not resolve is a ModelReferenceError (exit 2); an unreachable or
    # failing tracking server a RegistryError (exit 3): pipeline/cli.py reports both.
    checkpoint = resolve_model(model)
    result = run_evaluation(
        checkpoint,
        args.data,
        args.out,
        categories=categories,
        use_llm=False if args.no_llm else None,
        config=config,
        model_ref=model,
    )

    print(markdown_table(result), end="")
    return 0
