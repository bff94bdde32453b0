"""What the quality benchmarks share: the options that name a trained model and a dataset (baseline,
answers_follow_map, memory_bank) or the robustness suite's datasets (robustness, bank_variants,
feedback_recovery), and the start-up of a process that scores on the CPU."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def parser_with_model_and_data(doc: str | None, threads: int, why: str) -> argparse.ArgumentParser:
    """An argparse parser with ``--model`` and ``--data`` (the demo's run folder by default) and
    ``--threads`` (default ``threads``; ``why`` says why that default)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "runs/demo/train", help="train output folder")
    parser.add_argument("--data", type=Path, default=ROOT / "runs/demo/data", help="MVTec-layout root")
    parser.add_argument("--threads", type=int, default=threads, help=f"torch threads ({why})")
    return parser


def suite_parser(doc: str | None, role: str) -> argparse.ArgumentParser:
    """An argparse parser with ``--model`` (the demo's checkpoint by default) and the suite options
    of :func:`add_suite_arguments`."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "runs/demo/train", help="checkpoint folder")
    add_suite_arguments(parser, role)
    return parser


def add_suite_arguments(parser: argparse.ArgumentParser, role: str) -> None:
    """``--role`` (default ``role``) and ``--datasets``: which robustness-suite datasets to run."""
    parser.add_argument("--role", choices=["validation", "test", "all"], default=role)
    parser.add_argument("--datasets", help="comma-separated suite datasets (default: those of --role)")


def suite_names(args: argparse.Namespace) -> list[str]:
    """The datasets ``add_suite_arguments``' options name, in the suite's order."""
    from synth.robustness_suite import dataset_names

    if args.datasets:
        return args.datasets.split(",")
    return dataset_names(None if args.role == "all" else args.role)


def start(threads: int) -> Any:
    """Quiet logging, the project's runtime environment, ``threads`` torch threads; returns torch."""
    logging.basicConfig(level=logging.WARNING)
    from pipeline.core.runtime import configure_environment

    configure_environment()
    import torch

    torch.set_num_threads(threads)
    return torch
