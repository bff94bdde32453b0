"""How the memory bank's coreset grows with the patches it reduces. Prints one JSON object.

    python benchmarks/coreset_scale.py [--budget 2048] [--rows 25000,100000,400000] [--dim 128]

An all-shot bank holds every patch of a category's normal images: the demo's 14 images give 57,344
fine patches; an MVTec-AD category of 400 images at the same grid gives 1.6 M. Exact greedy
k-centre costs rows x budget; the cell coreset that takes over above
``memory_bank.EXACT_CORESET_COST`` (greedy k-centre within k-d tree cells) costs budget x
``CELL_ROWS``, whatever the rows. For each row count this times both on the same clustered
features (40 clusters) and reports their covering radius (the largest distance from a row to its
nearest kept row: what a coreset keeps small), exact only up to ``--exact-max`` rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the repository root, for project imports


def clustered(rows: int, dim: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(40, dim, generator=g) * 3
    return centres[torch.randint(0, 40, (rows,), generator=g)] + 0.5 * torch.randn(rows, dim, generator=g)


def covering_radius(x, chosen) -> float:
    import torch

    nearest = torch.cat([torch.cdist(part, x[chosen]).min(dim=1).values for part in x.split(65536)])
    return round(float(nearest.max()), 3)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budget", type=int, default=2048)
    parser.add_argument("--rows", default="25000,100000,400000")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--exact-max", type=int, default=100_000, help="largest row count timed exactly")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    import torch

    from train.model.memory_bank import greedy_coreset

    torch.set_num_threads(args.threads)
    runs = []
    for rows in (int(r) for r in args.rows.split(",")):
        x = clustered(rows, args.dim)
        row: dict = {"rows": rows, "budget": args.budget}
        started = time.perf_counter()
        cells = greedy_coreset(x, args.budget, exact_cost=0)
        row["cells_s"] = round(time.perf_counter() - started, 2)
        row["cells_radius"] = covering_radius(x, cells)
        if rows <= args.exact_max:
            started = time.perf_counter()
            exact = greedy_coreset(x, args.budget, exact_cost=rows * args.budget)
            row["exact_s"] = round(time.perf_counter() - started, 2)
            row["exact_radius"] = covering_radius(x, exact)
        runs.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    report = {"threads": args.threads, "dim": args.dim, "runs": runs}
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
