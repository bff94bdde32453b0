"""Train and evaluate the rows of the paper's Table 4 ablation, and print the table beside the paper's.

Each row switches parts of the model on or off (decoder, prompt learner, LLM, LoRA; rows and the
paper's figures in configs/ablation/table4.yaml): the row's model is trained with --config (shards
made once from --data) and evaluated unsupervised and 1-shot on the test split of --data. Writes
--out/ablation.md and ablation.json, and per row <row>/train and <row>/eval-<setting>. A rerun with
the same --out skips each step whose inputs (config after --set and the row's switches, data, seed,
evaluation settings) are unchanged, resumes one that was killed, and redoes the others, saying why.

example:
  python -m pipeline sample-data --out runs/data
  python -m pipeline ablation --config configs/demo.yaml --data runs/data --out runs/ablation
  python -m pipeline ablation --config configs/tiny.yaml --data runs/data --out runs/abl-tiny \\
      --rows decoder,full --set train.max_steps=5
"""

import argparse

from pipeline.cli import add_config_arguments

HELP = "train + evaluate the Table 4 rows (decoder / prompt learner / LLM / LoRA) beside the paper's"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="ROOT", help="dataset root (train and test splits)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--format", choices=["mvtec", "visa", "folder"], help="dataset layout (default mvtec)"
    )
    parser.add_argument("--rows", metavar="A,B", help="comma-separated row names (default: every row)")
    parser.add_argument("--table", metavar="FILE", help="rows file (default configs/ablation/table4.yaml)")
    parser.add_argument("--train-workers", type=int, default=1, help="Ray Train workers per row (default 1)")
    parser.add_argument("--instruct", metavar="DIR", help="instruction set (default: written from --data)")
    add_config_arguments(parser, required=True)


def run(args: argparse.Namespace) -> int:
    from pipeline.ablation import DEFAULT_TABLE, markdown, run_ablation

    overrides = list(args.overrides)
    if args.format:
        overrides += [f"synth.format={args.format}", f"evaluate.format={args.format}"]
    rows = [r.strip() for r in args.rows.split(",") if r.strip()] if args.rows else None
    summary = run_ablation(
        args.config,
        args.data,
        args.out,
        overrides=overrides,
        rows=rows,
        table=args.table or DEFAULT_TABLE,
        train_workers=args.train_workers,
        instruct=args.instruct,
    )
    print(markdown(summary), end="")
    return 0
