"""Which form of the all-shot bank map ranks best, and whether the map guard picks it, on the suite.

The bank's map is a plain nearest-neighbour memory (its layers' distances averaged) refined by
Gaussian smoothing (sigma) and inverse-spread layer weights, then fused with the decoder. This
scores every form (sigma 0/1/2/4, equal or weighted layers; each alone and fused with the decoder)
on a trained model's all-shot banks of the robustness suite, twice: on the test images (the
Image-AUROC a user sees) and as the map guard sees it (the references, each held out of the bank,
against synthetic anomalies made from them, for each set of probe kinds in ``PROBE_SETS``). Then
it scores rules that pick a form per category from the guard's figures alone, against the plain
baseline (``AnomalyGPT.build_baseline_bank``, whose map is the plain form alone). Prints one JSON
object: per dataset, draw and category every form's figures; per role (validation, test) and rule
the mean margin over the baseline, the margin of each category averaged over the draws, and how
many categories fall more than 0.01 below it.

Every form is scored from one search per image (the unsmoothed per-layer maps, then smoothed and
weighed per form), so it runs in about a minute per dataset and draw. The default rule of the
model (``memory_bank.fusion_guard``, ``guard_probe_kinds``) is ``guard_picks_refined_or_plain_nsa``
on the categories it was trained on and ``guard_picks_refined_or_plain_nsa_amplified`` on the
others (``memory_bank.unseen_fusion``): every suite category, for a model trained on the demo.

    python benchmarks/bank_forms.py [--model runs/demo/train] [--role validation|test|all]
        [--draws 4] [--out runs/robustness/data]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the repository root, for project imports

from benchmarks.quality_cli import start, suite_names, suite_parser  # noqa: E402

SIGMAS = (0.0, 1.0, 2.0, 4.0)
WEIGHTINGS = ("weighted", "equal")
PLAIN = "equal_s0"
CHUNK = 8  # images per search: bounded memory for the per-layer maps
CATEGORY_MARGIN = 0.01
FUSIONS = {"fused": "calibrated", "amplified": "amplified"}
"""The decoder's part (``memory_bank.fusion``): averaged with the bank's, or scaling it."""
PROBE_SETS = {"nsa": ("nsa",), "warps": ("swirl", "bulge"), "mixed": ("nsa", "swirl", "bulge")}
"""The guard's probes, by set: the training synthesis, kinds the decoder never saw, and both."""


def form_name(weighting: str, sigma: float) -> str:
    return f"{weighting}_s{sigma:g}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = suite_parser(__doc__, role="validation")
    parser.add_argument("--seed-offset", type=int, default=0, help="the first draw of every dataset")
    parser.add_argument("--draws", type=int, default=4, help="draws of every dataset")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "runs/robustness/data", help="suite data folder")
    args = parser.parse_args(argv)
    if args.draws < 1:
        parser.error(f"--draws must be at least 1, got {args.draws}")
    return args


def category_forms(predictor: Any, data: Path, category: str) -> dict[str, Any]:
    """The baseline's test Image-AUROC and, per form, the guard's and the test's Image-AUROC of the
    bank alone and fused with the decoder, for one category's all-shot bank."""
    import torch

    with torch.no_grad():
        return _category_forms(predictor, data, category)


def _category_forms(predictor: Any, data: Path, category: str) -> dict[str, Any]:
    import numpy as np
    import torch
    from sklearn.metrics import roc_auc_score

    from evaluate.data import load_image
    from synth.datasets import read_dataset
    from synth.probes import probe_anomalies
    from train.model.memory_bank import (
        Calibration,
        MemoryBank,
        combine_layers,
        gaussian_smooth,
        pairwise_auroc,
    )

    model, size = predictor.model, predictor.image_size
    mb = model.cfg.memory_bank
    normals = sorted(r.path for r in read_dataset(data, "mvtec", split="train", categories=[category]))
    tests = read_dataset(data, "mvtec", split="test", categories=[category])
    references = [load_image(p, size) for p in normals]
    labels = np.array([r.label for r in tests])
    probe_sets = {
        name: probe_anomalies(references, category, mb.guard_probes, kinds)
        for name, kinds in PROBE_SETS.items()
    }
    shots = len(references)
    if model.rotations_for(shots) > 1:
        raise SystemExit(f"{category}: {shots} references take rotations; this benchmark is all-shot only")

    def encoded(images: list[np.ndarray]) -> list[torch.Tensor]:
        return model.encode_all(predictor.image_batch(images))

    reference_maps = encoded(references)
    bank = MemoryBank.from_patch_maps(model.bank_layers(reference_maps), shots, 1, category)
    bank = bank.subsample(mb.max_patches, seed=0)

    def raw(maps: list[torch.Tensor], hold_out: list[int] | None) -> torch.Tensor:
        layers, n = model.bank_layers(maps), maps[0].shape[0]
        parts = [
            bank.layer_distance_maps(
                [m[a : a + CHUNK] for m in layers],
                (size, size),
                None if hold_out is None else hold_out[a : a + CHUNK],
                smoothed=False,
            )
            for a in range(0, n, CHUNK)
        ]
        return torch.cat(parts)

    def decoder(maps: list[torch.Tensor]) -> torch.Tensor:
        n = maps[0].shape[0]
        starts = range(0, n, CHUNK)
        chunks = [([m[a : a + CHUNK] for m in maps], [category] * min(CHUNK, n - a)) for a in starts]
        return torch.cat([model.text_map(part, names, (size, size))[1] for part, names in chunks])

    test_maps = encoded([load_image(r.path, size) for r in tests])
    encoded_maps = {"references": reference_maps, "tests": test_maps}
    distances = {"references": raw(reference_maps, list(range(shots))), "tests": raw(test_maps, None)}
    for name, (probes, owners) in probe_sets.items():
        encoded_maps[name] = encoded(probes)
        distances[name] = raw(encoded_maps[name], owners)
    decoders = {k: decoder(v) for k, v in encoded_maps.items()}
    decoder_calibration = model.calibrate(decoders["references"])
    baseline = distances["tests"].mean(dim=1).flatten(1).amax(dim=1)  # the plain baseline's map
    row: dict[str, Any] = {
        "baseline": float(roc_auc_score(labels, baseline.numpy())),
        "references": shots,
        "probes": {name: len(owners) for name, (_, owners) in probe_sets.items()},
    }

    def peaks(maps: torch.Tensor) -> torch.Tensor:
        return maps.flatten(1).amax(dim=1)

    for sigma in SIGMAS:
        smoothed = {k: gaussian_smooth(v, sigma) for k, v in distances.items()}
        for weighting in WEIGHTINGS:
            if weighting == "weighted":
                calibration = Calibration.from_layer_maps(smoothed["references"], mb.false_alarm_rate)
            else:
                calibration = model.calibrate(combine_layers(smoothed["references"], None))
            bank_maps = {k: combine_layers(v, calibration.layer_weights) for k, v in smoothed.items()}
            parts = {"bank": bank_maps}
            for part, fusion in FUSIONS.items():
                parts[part] = {
                    k: model.fuse(
                        calibration.normalise(v), decoder_calibration.normalise(decoders[k]), fusion
                    )
                    for k, v in bank_maps.items()
                }
            row[form_name(weighting, sigma)] = {
                **{
                    f"test_{part}": float(roc_auc_score(labels, peaks(m["tests"]).numpy()))
                    for part, m in parts.items()
                },
                **{
                    f"guard_{part}_{name}": pairwise_auroc(peaks(m["references"]), peaks(m[name]))
                    for name in PROBE_SETS
                    for part, m in parts.items()
                },
            }
    return row


def with_decoder_guard(row: dict[str, Any], form: str, probes: str = "nsa", part: str = "fused") -> float:
    """The test Image-AUROC of ``form`` as the map guard serves it with the ``probes`` set: fused
    with the decoder (``part``: a key of ``FUSIONS``) unless the guard's fused AUROC falls more than
    one standard error below the bank's alone."""
    from train.model.memory_bank import MapGuard

    f = row[form]  # the form is the bank's map as kept: the guard's plain figure, nothing refined
    guard = MapGuard(
        f[f"guard_bank_{probes}"], None, f[f"guard_{part}_{probes}"], row["references"], row["probes"][probes]
    )
    return f[f"test_{part}"] if guard.decoder_kept else f["test_bank"]


def _refined_or_plain(probes: str, part: str = "fused") -> Callable[[dict[str, Any]], float]:
    def rule(row: dict[str, Any]) -> float:
        refined, bank = "weighted_s4", f"guard_bank_{probes}"
        keep = row[refined][bank] >= row[PLAIN][bank]
        return with_decoder_guard(row, refined if keep else PLAIN, probes, part)

    return rule


def _best_guard_of_all(row: dict[str, Any]) -> float:
    forms = [form_name(w, s) for s in SIGMAS for w in WEIGHTINGS]
    return with_decoder_guard(row, max(forms, key=lambda f: row[f]["guard_bank_nsa"]))


def _fixed(form: str, part: str) -> Callable[[dict[str, Any]], float]:
    return lambda row: row[form][f"test_{part}"]


RULES: dict[str, Callable[[dict[str, Any]], float]] = {
    **{
        f"{form_name(w, s)}_{part}": _fixed(form_name(w, s), part)
        for s in SIGMAS
        for w in WEIGHTINGS
        for part in ("bank", *FUSIONS)
    },
    "weighted_s4_with_decoder_guard": lambda r: with_decoder_guard(r, "weighted_s4"),
    **{f"guard_picks_refined_or_plain_{probes}": _refined_or_plain(probes) for probes in PROBE_SETS},
    "guard_picks_refined_or_plain_nsa_amplified": _refined_or_plain("nsa", "amplified"),
    "guard_picks_any_form": _best_guard_of_all,
}
"""Each rule's test Image-AUROC of one category draw. ``weighted_s4_with_decoder_guard`` was the
model's map before the guard judged the refinements; ``guard_picks_refined_or_plain_<probes>`` is
the rule now, with each set of guard probes."""


def rule_summary(rows: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per rule: mean margin over the baseline (all category draws), each category's margin averaged
    over its draws, the worst of those and how many fall more than ``CATEGORY_MARGIN`` below."""
    out = {}
    for name, rule in RULES.items():
        per_category = {
            category: round(statistics.mean(rule(r) - r["baseline"] for r in draws), 4)
            for category, draws in rows.items()
        }
        margins = [rule(r) - r["baseline"] for draws in rows.values() for r in draws]
        out[name] = {
            "mean_margin": round(statistics.mean(margins), 4),
            "worst_category": min(per_category.values()),
            "categories_below": sum(m < -CATEGORY_MARGIN for m in per_category.values()),
            "per_category": per_category,
        }
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    start(args.threads)
    from synth.robustness_suite import suite_dataset, suite_spec
    from train.model.predictor import Predictor

    predictor = Predictor.from_checkpoint(args.model, device="cpu")
    result: dict[str, Any] = {"model": str(args.model), "datasets": {}}
    rows: dict[str, dict[str, list[dict[str, Any]]]] = {}  # role -> dataset/category -> draws
    for name in suite_names(args):
        spec = suite_spec()["datasets"][name]
        for offset in range(args.seed_offset, args.seed_offset + args.draws):
            data = suite_dataset(args.out, name, offset)
            for category in spec["categories"]:
                row = category_forms(predictor, data, category)
                result["datasets"].setdefault(name, {}).setdefault(str(offset), {})[category] = row
                rows.setdefault(spec["role"], {}).setdefault(f"{name}/{category}", []).append(row)
                print(f"{name} draw {offset} {category}: baseline {row['baseline']:.3f}", file=sys.stderr)
    result["rules"] = {role: rule_summary(by_category) for role, by_category in rows.items()}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
