"""``python -m pipeline <command>``: one entry point for every stage.

Each command lives in ``pipeline/commands/<name>.py`` and defines ``HELP``, ``add_arguments(parser)``
and ``run(args) -> int``. Command modules import only the standard library at top level, so
``--help`` answers at once; heavy imports (torch, ray, ...) happen inside ``run``.
"""

from __future__ import annotations

import argparse
import errno
import gc
import importlib
import logging
import sys
import traceback
from typing import NoReturn

from pipeline.core.errors import BAD_INPUT, CANNOT_WRITE, PipelineError

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
    "inspect",
    "feedback",
    "serve",
)

EXIT_CODES = """exit codes:
  0    done
  1    a bug: the traceback is printed (please report it)
  2    bad input: a config, --set, flag, dataset, shard folder, checkpoint or image is wrong
  3    busy or unreachable: another run holds the folder, MLflow or the Ray cluster cannot be used
  4    cannot write an output: read-only folder, full disk, no permission
  130  interrupted (Ctrl-C)
errors print "error: <message>"; python -m pipeline --debug COMMAND ... adds the traceback."""

WRITE_ERRNOS = frozenset({errno.EROFS, errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EDQUOT})
"""OSErrors that mean an output cannot be written (exit 4) rather than a bug."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="AnomalyGPT pipeline: normal images -> synthetic anomalies -> training -> evaluation.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show every library's lines too (Ray, Ray Train, transformers, MLflow: their INFO lines, "
        "progress bars and internal deprecation warnings) and debug logging",
    )
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error too")
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
    # after parsing: --help imports no yaml
    from pipeline.core.runtime import configure_environment, set_verbose

    set_verbose(args.verbose)  # before configure_environment: it sets the quiet defaults otherwise
    configure_environment()
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as raised:
        exc = unwrap_ray_error(raised)
        code = exit_code(exc)
        if code is None:
            raise  # a bug: exit 1 with the traceback
        if args.debug:
            traceback.print_exception(raised, file=sys.stderr)  # with the remote traceback, if any
        print(f"error: {error_message(exc)}", file=sys.stderr)
        return code


def run() -> NoReturn:
    """The process entry point (``python -m pipeline``, ``anomalygpt``): ``main``, then exit.

    Before the interpreter ends, everything alive is frozen out of the cyclic collector:
    finalisation would otherwise walk torch's and transformers' ~400k objects in several
    collections, about 1 s of a 5 s ``ask`` on 2 cores. Exit handlers still run and the standard
    streams are still flushed; only cycles still alive at exit go unfinalised, as Python allows."""
    code = main()
    gc.freeze()
    raise SystemExit(code)


def unwrap_ray_error(exc: BaseException) -> BaseException:
    """The error a Ray task, actor or library raised, out of the wrappers Ray puts around it.

    ``ray.get`` re-raises a task's OSError as a ``RayTaskError(OSError)`` whose errno is lost, and
    Ray Data and Ray Train chain the user's error under their own: an error whose class Ray defines
    is looked into (its ``cause``, else its ``__cause__``) until one that is not Ray's is found, so
    a full disk inside a shard-writing task exits 4 like one in the driver. Ray's own errors with
    nothing inside (a dead node, an unreachable cluster) stay as they are."""
    seen: set[int] = set()
    while type(exc).__module__.startswith("ray.") and id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "cause", None) or exc.__cause__
        if not isinstance(inner, BaseException):
            break
        exc = inner
    return exc


def exit_code(exc: BaseException) -> int | None:
    """The exit code of an expected failure (see EXIT_CODES), or None for a bug."""
    if isinstance(exc, PipelineError):
        return exc.exit_code
    if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
        return BAD_INPUT
    if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
        return CANNOT_WRITE
    return None


def error_message(exc: BaseException) -> str:
    """The text after ``error:``; an unwritable output names the file and the OS's reason."""
    if isinstance(exc, OSError) and not isinstance(exc, PipelineError) and exc.errno in WRITE_ERRNOS:
        target = f" {exc.filename}" if exc.filename is not None else ""
        verb = "cannot access" if exc.errno in (errno.EACCES, errno.EPERM) else "cannot write"
        return f"{verb}{target}: {exc.strerror or exc}"
    return str(exc)


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
