"""Retrain when the normal images changed; safe to call from cron, a CronJob or a RayCronJob.

Fingerprints the normal training images (content hashes) and the model config. If the champion or
the newest registered version was trained on exactly these, it prints that it is up to date and
exits 0. Otherwise it runs the pipeline (`run`): regenerates the synthetic data, trains, evaluates,
registers the new version as `challenger`, and promotes it to `champion` only if it beats the
current champion on the same evaluation data.

A lock on the run folder stops two retrains (or a run and a retrain) from overlapping: the second
exits with code 3 naming the first, or waits with --wait. All registry writes are the last step and
are undone if they fail, so a retrain that dies leaves the registry as it was; running it again
resumes where it stopped.

exit codes: 0 done or up to date, 2 bad input, 3 busy or MLflow unreachable.

example (crontab, every night at 02:00):
  0 2 * * * cd /srv/anomalygpt && .venv/bin/python -m pipeline retrain \\
      --config configs/anomalygpt_vicuna7b.yaml --data /data/mvtec --out /srv/runs/paper
"""

import argparse

from pipeline.commands.run import add_run_arguments

HELP = "retrain, evaluate and register only if the normal images or config changed (cron-safe)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)
    parser.add_argument("--force", action="store_true", help="retrain even when up to date")


def run(args: argparse.Namespace) -> int:
    from pipeline.commands.run import report, request
    from pipeline.orchestrate import run_pipeline

    summary = run_pipeline(request(args), retrain=True)
    if "up_to_date" in summary:
        print(summary["up_to_date"])
        return 0
    print(f"retrain complete in {summary['wall_time_s']:.0f} s:")
    report(summary)
    return 0
