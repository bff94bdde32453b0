"""Write a small instruction set in PandaGPT's format about the train images of an MVTec-layout root.

The reference alternates anomaly batches with PandaGPT's visual instruction data so the LLM keeps
its general answers. That set (13 GB of images) cannot ship here; this writes the same format
(`pandagpt4_visual_instruction_data.json` with `image_name` and `conversation`, plus `images/`)
with questions answered from each image's own pixels, for the demo and the tests. Pass the folder
to `train --instruct`; point `--instruct` at PandaGPT's real set for a real run.
"""

import argparse

HELP = "write a small PandaGPT-format instruction set from a dataset's normal images"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="ROOT", help="dataset root in MVTec-AD layout")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed for the question choice (default 0)")
    parser.add_argument("--size", type=int, default=224, help="side of the written images (default 224)")


def run(args: argparse.Namespace) -> int:
    from train.instruct import write_instruction_set

    path = write_instruction_set(args.data, args.out, seed=args.seed, size=args.size)
    print(f"instruction set written to {path}")
    return 0
