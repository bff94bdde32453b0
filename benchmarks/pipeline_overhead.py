"""What the product layer costs around the stages: fingerprinting the data, registering a model,
fetching it back. Prints one JSON object.

    python benchmarks/pipeline_overhead.py [--train 100] [--megabytes 20]

- fingerprint: content hashes of the normal train images (what `run` and `retrain` do first), cold
  (every file read) and warm (the size/mtime cache in the run folder: a directory walk);
- register: log the pyfunc + register + alias + promotion check, sqlite store, for a checkpoint of
  --megabytes (the demo preset's trainable weights are about 20 MB, the paper preset's about 430 MB);
- resolve: `models:/anomalygpt@champion` to a local folder, first (download + sha256 check) and
  cached. On a shared machine the figures are noisy; the load average is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--train", type=int, default=100, help="normal train images per category (4 categories)"
    )
    parser.add_argument("--megabytes", type=float, default=20.0, help="checkpoint size to register")
    args = parser.parse_args()

    from pipeline.core.runtime import configure_environment

    configure_environment()
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    import mlflow
    import torch
    import yaml
    from safetensors.torch import save_file

    from pipeline.core.mlflow_store import configure_mlflow
    from pipeline.fingerprint import dataset_fingerprint
    from pipeline.model_download import resolve_model
    from pipeline.registry import RegistryConfig, register_and_promote
    from synth.demo_dataset import write_sample_dataset
    from synth.fingerprint import HashCache

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["ANOMALYGPT_CACHE"] = str(root / "cache")
        data = write_sample_dataset(root / "data", seed=0, n_train=args.train, n_test_good=1, n_per_defect=1)
        n_images = len(list(data.glob("*/train/good/*.png")))
        cold_cache = HashCache(root / "hashes.json")
        _, cold = _timed(lambda: dataset_fingerprint(data, "mvtec", "train", cache=cold_cache))
        cold_cache.save()
        warm_cache = HashCache(root / "hashes.json")
        _, warm = _timed(lambda: dataset_fingerprint(data, "mvtec", "train", cache=warm_cache))

        ckpt = root / "ckpt"
        ckpt.mkdir()
        n = int(args.megabytes * 1e6 / 4)
        save_file({"prompt_learner.weight": torch.randn(n)}, str(ckpt / "model.safetensors"))
        (ckpt / "config.yaml").write_text(yaml.safe_dump({"image_size": 224}))
        configure_mlflow(root / "runs", "bench")
        with mlflow.start_run():
            _, register = _timed(
                lambda: register_and_promote(ckpt, {"mean": {"image_auroc": 0.9}}, "eval", RegistryConfig())
            )
        _, resolve_cold = _timed(lambda: resolve_model("models:/anomalygpt@champion"))
        _, resolve_warm = _timed(lambda: resolve_model("models:/anomalygpt@champion"))

    print(
        json.dumps(
            {
                "fingerprint_images": n_images,
                "fingerprint_cold_s": round(cold, 3),
                "fingerprint_cached_s": round(warm, 3),
                "checkpoint_mb": args.megabytes,
                "register_and_promote_s": round(register, 3),
                "resolve_download_s": round(resolve_cold, 3),
                "resolve_cached_s": round(resolve_warm, 3),
                "load_average_1m": os.getloadavg()[0],
            }
        )
    )


if __name__ == "__main__":
    main()
