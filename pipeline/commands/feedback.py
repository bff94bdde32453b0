"""Fold a person's corrections into the feedback folder: read `inspect`'s results with the
`feedback` column filled in (normal or defect; `feedback_note` optional) and keep each marked image.

Confirmed normals join their category's normal images: `serve --feedback-dir` and `inspect
--feedback` use them in the memory bank at once (a false alarm stops being one), and `retrain
--feedback DIR` trains on them. Confirmed defects join a labelled test split that the next
evaluation scores (image-level). Each decision is recorded with who, when and the model version
that made the call; an image whose content changed since it was inspected is refused.

Fill the column with pandas (`df.loc[i, "feedback"] = "normal"; df.to_parquet(...)`), or export
results.jsonl to CSV, edit it in a spreadsheet and pass the .csv.

example:
  python -m pipeline feedback --results runs/inspect/results.parquet --feedback runs/feedback
"""

import argparse

HELP = "keep the images marked normal/defect in inspect's results as feedback for serve, inspect and retrain"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--results",
        required=True,
        metavar="FILE",
        help="inspect's results.parquet (or .jsonl / .csv) with `feedback` filled in",
    )
    parser.add_argument(
        "--feedback", required=True, metavar="DIR", help="the feedback folder (created if missing)"
    )
    parser.add_argument("--who", metavar="NAME", help="who decided (default: the login name)")


def run(args: argparse.Namespace) -> int:
    import hashlib
    from pathlib import Path

    from pipeline.core.errors import InputError
    from pipeline.feedback import FeedbackStore, read_marked

    results = Path(args.results).expanduser().resolve()
    marked = read_marked(results)
    if not marked:
        print(f"no row of {results} has `feedback` filled in (normal or defect): nothing to keep")
        return 0
    store = FeedbackStore(args.feedback)
    kept = {"normal": 0, "defect": 0}
    for row in marked:
        path = Path(row["path"])
        if not path.is_file():
            raise FileNotFoundError(f"{results}: {path} (marked {row['feedback']}) is gone")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != row["sha256"]:
            raise InputError(
                f"{path} changed since it was inspected (sha256 differs): inspect it again first"
            )
        store.add(
            data,
            row["category"],
            row["feedback"],
            note=row["feedback_note"],
            who=args.who,
            model_version=str(row.get("model_version") or ""),
            source=str(path),
        )
        kept[row["feedback"]] += 1
    print(
        f"kept {kept['normal']} confirmed normal, {kept['defect']} confirmed defect image(s) in {store.root}"
    )
    print(f"fingerprint {store.fingerprint()[:16]}; `retrain --feedback {store.root}` trains on them")
    return 0
