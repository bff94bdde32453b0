"""Run the whole pipeline as one Ray job: synth -> train -> evaluate -> register.

Every stage writes into the run folder (--out): synth/ (shards), train/ (model.safetensors,
config.yaml), evaluate/ (metrics.json, metrics.md, maps/), register/. One MLflow parent run holds a
child run per stage; the trained model is registered (alias `challenger`) and becomes `champion`
only if its mean Image-AUROC beats the current champion's on the same evaluation data.

A stage whose inputs (data fingerprint, its config, the seed) are unchanged since its last complete
output is skipped and says so. A run that was killed resumes when started again: finished stages are
skipped, synth writes only the missing shards, training continues from its last checkpoint, and the
model is registered once. Two runs on one folder never overlap (the second waits --wait seconds,
then exits with a message naming the first).

MLflow: MLFLOW_TRACKING_URI, else DIR/mlflow.db; checked before any work. Ray: RAY_ADDRESS (set by
`ray job submit`), else a local Ray.

examples:
  python -m pipeline run --config configs/tiny.yaml --data runs/data --out runs/tiny
  ray job submit --working-dir . -- python -m pipeline run --config configs/demo.yaml \\
      --data /data/mvtec --out /workspace/runs/demo --workers 2
"""

import argparse

from pipeline.cli import add_config_arguments

HELP = "synth -> train -> evaluate -> register in one Ray job; unchanged stages are skipped"


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options `run` and `retrain` share."""
    add_config_arguments(parser, required=True)
    parser.add_argument(
        "--data", metavar="ROOT", help="dataset root (MVTec-AD, VisA or folder layout; default: DIR/data)"
    )
    parser.add_argument("--out", metavar="DIR", help="run folder (default: runs/<config name>)")
    parser.add_argument("--workers", type=int, default=1, help="Ray Train workers (default 1)")
    parser.add_argument(
        "--instruct",
        metavar="PATH",
        help="PandaGPT-format instruction data for training (a folder with its JSON and images/)",
    )
    parser.add_argument(
        "--feedback",
        metavar="DIR",
        help="a feedback folder (`pipeline feedback`, `serve --feedback-dir`): confirmed normals join the "
        "training images, confirmed defects the test set (MVTec layout data only)",
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="if another run holds the folder, wait this long for it (-1: forever; default: exit at once)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)
    parser.add_argument("--force", action="store_true", help="run every stage again, even if unchanged")


def request(args: argparse.Namespace):
    """The RunRequest for parsed `run`/`retrain` arguments; errors name the missing path."""
    from pathlib import Path

    from pipeline.core.config import ConfigError
    from pipeline.orchestrate import RunRequest
    from pipeline.pipeline_config import load_pipeline_config

    config = load_pipeline_config(args.config, args.overrides)
    out = Path(args.out or Path("runs") / config.name).expanduser().resolve()
    data = Path(args.data).expanduser().resolve() if args.data else out / "data"
    if not data.is_dir():
        hint = (
            ""
            if args.data
            else f" (pass --data ROOT, or write a sample set: python -m pipeline sample-data --out {data})"
        )
        raise FileNotFoundError(f"dataset root not found: {data}{hint}")
    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    instruct = Path(args.instruct).expanduser().resolve() if args.instruct else None
    feedback = Path(args.feedback).expanduser().resolve() if args.feedback else None
    if feedback is not None and not feedback.is_dir():
        raise FileNotFoundError(f"--feedback {feedback}: no such folder")
    return RunRequest(config, data, out, args.workers, instruct, args.wait, args.force, feedback)


def report(summary: dict) -> None:
    """The end-of-run lines: stage outcomes, mean metrics, registry decision, where things are."""
    for name, stage in summary["stages"].items():
        took = f" ({stage['wall_time_s']:.0f} s)" if "wall_time_s" in stage else ""
        print(f"  {name:<9} {stage['status']}{took}  {stage['dir']}")
    mean = summary.get("mean") or {}
    keys = ("image_auroc", "pixel_auroc", "accuracy", "aupro", "f1_max")
    figures = ", ".join(f"{k} {mean[k]:.3f}" for k in keys if isinstance(mean.get(k), float))
    print(f"  mean: {figures}")
    reg = summary.get("registry") or {}
    if reg:
        tags = reg.get("tags", {})
        verdict = (
            "champion"
            if reg.get("promoted")
            else f"challenger (champion stays v{reg.get('champion_version')})"
        )
        reason = tags.get("promotion_reason", "")
        print(f"  registry: {reg['model_name']} v{reg['version']} -> {verdict}: {reason}")
    print(f"  MLflow: {summary['tracking_uri']} (parent run {summary['parent_run_id']})")
    for line in mlflow_ui_lines(summary):
        print(f"  {line}")


def mlflow_ui_lines(summary: dict) -> list[str]:
    """How to open the pipeline's parent run in the MLflow UI: for a local store, the `mlflow ui`
    command and then the run's address; a tracking server serves the UI itself."""
    from pipeline.core.mlflow_store import run_url

    uri = summary["tracking_uri"]
    url = run_url(uri, summary["experiment_id"], summary["parent_run_id"])
    if uri.startswith(("http://", "https://")):
        return [f"open the run: {url}"]
    return [
        f"browse: .venv/bin/mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000",
        f"then open the run: {url}",
    ]


def run(args: argparse.Namespace) -> int:
    from pipeline.orchestrate import run_pipeline

    summary = run_pipeline(request(args))
    print(f"run complete in {summary['wall_time_s']:.0f} s:")
    report(summary)
    return 0
