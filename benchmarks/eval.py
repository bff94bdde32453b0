"""Evaluation throughput: images/s for map only (--no-llm) and map + answer, 1 and 2 Ray actors.

Builds a randomly initialised checkpoint of the chosen preset (weights of the frozen parts are the
real pretrained ones; only the decoder/prompt learner are random, which does not change the cost)
and the sample dataset at the preset's image size, then times ``run_evaluation``. images/s counts
scoring only (actor start-up and model loading are reported separately). Prints one JSON object.

    python benchmarks/eval.py [--preset demo|tiny] [--categories 2] [--threads 1]

Each actor runs --threads torch threads, so 2 actors use twice the cores of 1: the figures show
how evaluation scales out. On a shared machine the figures are noisy; the load average is printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="demo", choices=["demo", "tiny"])
    parser.add_argument("--categories", type=int, default=2, help="sample categories (7 test images each)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per actor")
    parser.add_argument("--workers", default="1,2", help="actor counts to time")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TQDM_DISABLE", "1")

    from pipeline.core.runtime import configure_environment, init_ray
    from pipeline.pipeline_config import load_pipeline_config

    configure_environment()
    import torch

    from evaluate.config import EvaluateConfig
    from evaluate.job import run_evaluation
    from synth.demo_dataset import write_sample_dataset
    from train.model import build_model, save_checkpoint

    cfg = load_pipeline_config(ROOT / "configs" / f"{args.preset}.yaml")
    size = cfg.model.image_size
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        torch.manual_seed(0)
        checkpoint = save_checkpoint(build_model(cfg.model), cfg.model, tmp / "ckpt")
        build_s = time.perf_counter() - started
        data = write_sample_dataset(tmp / "data", seed=0, size=size, n_train=2, n_test_good=3, n_per_defect=1)
        categories = sorted(p.name for p in Path(data).iterdir() if (p / "test").is_dir())[: args.categories]
        init_ray()
        runs = []
        for generate in (False, True):
            for workers in (int(w) for w in args.workers.split(",")):
                ecfg = EvaluateConfig(threads_per_worker=args.threads, write_maps=False, batch_size=4)
                started = time.perf_counter()
                result = run_evaluation(
                    checkpoint,
                    data,
                    tmp / f"out-{workers}-{generate}",
                    workers=workers,
                    categories=categories,
                    use_llm=generate,
                    config=ecfg,
                )
                total = time.perf_counter() - started
                runs.append(
                    {
                        "mode": "map+answer" if generate else "map_only",
                        "workers": workers,
                        "threads_per_worker": args.threads,
                        "images": result["mean"]["n_images"],
                        "images_per_s": result["images_per_s"],
                        "scoring_s": result["scoring_time_s"],
                        "startup_and_report_s": round(total - result["scoring_time_s"], 2),
                    }
                )
    print(
        json.dumps(
            {
                "preset": args.preset,
                "image_size": size,
                "categories": categories,
                "checkpoint_build_s": round(build_s, 2),
                "cpu_count": os.cpu_count(),
                "load_average_1m_at_end": round(os.getloadavg()[0], 2),
                "runs": runs,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
