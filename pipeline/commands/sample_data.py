"""Write a small real dataset in MVTec-AD layout from images that installed packages ship.

Normals are crops of scikit-image's CC0 textures (brick, grass, gravel) and single coins from its
public-domain coins photo, train and test from disjoint parts of each original; test defects
(scratch, hole, stain, foreign patch) come from a generator that is not the training synthesis.
Layout, counts and licences: docs/data.md. Takes a few seconds.
"""

import argparse

HELP = "write the demo dataset (MVTec-AD layout) from images shipped with installed packages"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output root (created; existing files are overwritten)")
    parser.add_argument("--seed", type=int, default=0, help="seed for crops and defects (default 0)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    parser.add_argument("--train", type=int, default=14, help="train/good images per category (default 14)")
    parser.add_argument(
        "--test-good", type=int, default=20, help="test/good images per category (default 20)"
    )
    parser.add_argument(
        "--per-defect", type=int, default=5, help="test images per defect type (4 types; default 5)"
    )
    parser.add_argument(
        "--categories", nargs="+", default=[], metavar="NAME", help="subset of brick grass gravel coin"
    )


def run(args: argparse.Namespace) -> int:
    from synth.demo_dataset import write_sample_dataset

    root = write_sample_dataset(
        args.out,
        seed=args.seed,
        size=args.size,
        n_train=args.train,
        n_test_good=args.test_good,
        n_per_defect=args.per_defect,
        categories=args.categories,
    )
    print(f"sample dataset written to {root} (MVTec-AD layout; licences in {root / 'README.txt'})")
    return 0
