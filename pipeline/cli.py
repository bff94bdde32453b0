"""``python -m pipeline <command>``: one entry point for every stage.

Each command lives in ``pipeline/commands/<name>.py`` and defines ``HELP``, ``add_arguments(parser)``
and ``run(args) -> int``. Command modules import only the standard library at top level, so
``--help`` answers at once; heavy imports (torch, ray, ...) happen inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Order is the order shown by --help.
COMMANDS = (
    "sample-data",
    "instruct-data",
    "synth",
    "train",
    "evaluate",
    "ablation",
    "run",
    "demo",
    "retrain",
    "ask",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="AnomalyGPT pipeline: normal images -> synthetic anomalies -> training -> evaluation.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"pipeline.commands.{name.replace('-', '_')}")
        doc = (module.__doc__ or "").strip()
        cmd = sub.add_parser(
            name,
            help=module.HELP,
            description=doc or module.HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    from pipeline.runtime import configure_environment

    configure_environment()
    from pipeline.config import ConfigError

    try:
        return int(args._run(args) or 0)
    except (ConfigError, FileNotFoundError, NotADirectoryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def add_config_arguments(parser: argparse.ArgumentParser, required: bool = False) -> None:
    """The shared ``--config FILE`` and ``--set key=value`` options."""
    parser.add_argument("--config", required=required, metavar="FILE", help="YAML config (see configs/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set train.lr=3e-4 (repeatable; value parsed as YAML)",
    )
