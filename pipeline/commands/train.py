"""Train AnomalyGPT on synth shards with Ray Train + DeepSpeed, logging to MLflow.

Runs --workers Ray Train workers (local Ray, or the cluster at RAY_ADDRESS), each with a DeepSpeed
engine built from the `train.deepspeed` section (ZeRO 2 by default; an unknown key is an error).
Each optimizer step sees `train.global_batch_size` samples whatever the worker count. With
--instruct, micro-steps alternate between anomaly shards and PandaGPT-format instruction data.
Checkpoints go to DIR/ray every `train.checkpoint_every` steps; a failed worker restarts from the
latest one, and running the same command again after the whole job died resumes from it.

Writes to --out: model.safetensors + config.yaml (what evaluate and ask load), train_summary.json,
pipeline_config.yaml, deepspeed.json. MLflow: MLFLOW_TRACKING_URI, else DIR/mlflow.db.

example:
  python -m pipeline train --config configs/demo.yaml --shards runs/shards --out runs/train \\
      --instruct runs/instruct --workers 2 --set train.max_steps=50
"""

import argparse

from pipeline.cli import add_config_arguments

HELP = "train the model on synth shards (Ray Train + DeepSpeed, MLflow, checkpoints, resume)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shards", required=True, metavar="DIR", help="synth output (tar shards + manifest.json)"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (also holds checkpoints)")
    parser.add_argument(
        "--instruct",
        metavar="PATH",
        help="PandaGPT-format instruction data: a folder with pandagpt4_visual_instruction_data.json "
        "and images/, or that JSON file (without it: anomaly data only)",
    )
    parser.add_argument("--workers", type=int, default=1, help="Ray Train workers (default 1)")
    add_config_arguments(parser, required=True)


def run(args: argparse.Namespace) -> int:
    import json

    from pipeline.pipeline_config import load_pipeline_config

    config = load_pipeline_config(args.config, args.overrides)
    from train.job import run_training

    job = config.train_job()
    summary = run_training(job, args.shards, args.out, instruct=args.instruct, workers=args.workers)
    print(json.dumps({k: summary[k] for k in ("steps", "samples", "wall_time_s", "mlflow_run_id")}))
    return 0
