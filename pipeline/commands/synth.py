"""Write a small real dataset in MVTec-AD layout from images that installed packages ship."""

import argparse

HELP = "write the demo dataset (MVTec-AD layout) from images shipped with installed packages"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output root")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError
