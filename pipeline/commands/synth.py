"""Make simulated anomalies (NSA cut-paste + Poisson blending) with masks and text, as WebDataset shards.

Reads the normal images of a dataset (MVTec-AD, VisA or a plain folder per category), makes one
normal and --per-image anomalous samples from each, and writes shard-NNNNNN.tar + manifest.json to
--out, one Ray task per shard (local Ray, or the cluster at RAY_ADDRESS). Output is byte-identical
for the same data, config and seed whatever --workers is. A killed run resumes with the missing
shards; a rerun of a finished output checks each shard's size against the manifest (and its sha256
with --verify) and rewrites only missing or damaged ones; --force rebuilds everything. A root with
no images in the given --format is refused before anything is written; a category none of whose
images can be decoded is an error (no manifest). Settings come from the `synth:` section of --config;
flags given here override it. Formats: docs/data.md.

example:
  python -m pipeline sample-data --out runs/data
  python -m pipeline synth --data runs/data --out runs/shards --config configs/demo.yaml
"""

import argparse

from pipeline.cli import add_config_arguments

HELP = "write simulated-anomaly WebDataset shards from normal images (Ray)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="ROOT", help="dataset root")
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="output folder for shards + manifest.json"
    )
    parser.add_argument(
        "--format", choices=["mvtec", "visa", "folder"], help="dataset layout (default mvtec)"
    )
    parser.add_argument("--seed", type=int, help="seed (default: the config's top-level seed, else 0)")
    parser.add_argument("--workers", type=int, help="Ray tasks at once (default: one per CPU)")
    parser.add_argument("--per-image", type=int, help="anomalous samples per normal image (default 1)")
    parser.add_argument("--samples-per-shard", type=int, help="samples per tar shard (default 256)")
    parser.add_argument("--size", type=int, help="image side in pixels (default 224)")
    parser.add_argument("--categories", nargs="+", metavar="NAME", help="only these categories")
    parser.add_argument("--force", action="store_true", help="delete previous output in --out and rebuild")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="hash every finished shard against the manifest (default: sizes only); rewrite damaged ones",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from pipeline.pipeline_config import load_pipeline_config

    overrides = list(args.overrides)
    for flag, key in (
        ("format", "format"),
        ("workers", "workers"),
        ("per_image", "per_image"),
        ("samples_per_shard", "samples_per_shard"),
        ("size", "size"),
        ("categories", "categories"),
    ):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"synth.{key}={value!r}" if isinstance(value, str) else f"synth.{key}={value}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    config = load_pipeline_config(args.config, overrides)

    from synth.job import run_synth

    # Bad input raises DatasetError / ShardError (InputError): pipeline.cli prints it, exit 2.
    run_synth(
        config.synth,
        args.data,
        args.out,
        seed=config.seed,
        force=args.force,
        progress=not args.no_progress,
        verify=args.verify,
    )
    return 0
