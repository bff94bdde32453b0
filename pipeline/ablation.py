"""Table 4 of the paper: train and evaluate one model per row of part switches, table beside the paper's.

Recipe: ``synth`` the training shards once (and the instruction set, when the config uses one),
then per row ``train`` (Ray Train, resumable; a row with nothing trainable is saved untrained, as
the paper's LLM-only row is the off-the-shelf model) and ``evaluate`` in each setting of the table
(unsupervised and 1-shot). Rows and the paper's figures live in configs/ablation/table4.yaml.

Every step is a stage of the orchestrator's kind (:mod:`pipeline.orchestrate`), keyed the same way:
the shards by the normal images, synth settings and seed; a row's training by the shards, the row's
effective config (``--config``, ``--set``, then the row's switches and ``set``), the seed, the
worker count and the instruction set; each evaluation by the checkpoint's content, the test set and
the setting's protocol. ``stage.json`` (the orchestrator's record) and ``inputs.json`` (the same
inputs, readable) sit beside each step's outputs. A step whose recorded key equals the current one
is skipped ("up to date"); one interrupted with the same key resumes (training from its last
checkpoint), so a killed ablation continues where it stopped; any other is started over, and the
log says what changed ("config changed: train.max_steps 2 -> 3", "data changed (test)").
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from pipeline.core.config import ConfigError

log = logging.getLogger(__name__)

DEFAULT_TABLE = Path(__file__).resolve().parents[1] / "configs" / "ablation" / "table4.yaml"
SWITCHES = ("decoder", "prompt_learner", "llm", "lora")
METRICS = ("image_auroc", "pixel_auroc", "accuracy")


@dataclass
class Row:
    name: str
    switches: dict[str, bool]
    paper: dict[str, list[float | None]]
    overrides: list[str] = field(default_factory=list)

    def config_overrides(self) -> list[str]:
        """The row's switches as --set overrides of the model section (then its own extras).
        Without the LLM the instruction batches would train nothing (they carry only the LLM
        loss), so such rows train on the anomaly data alone."""
        s = self.switches
        extra = [] if s["llm"] else ["train.instruction_fraction=0"]
        return [
            f"model.use_decoder={str(s['decoder']).lower()}",
            f"model.use_prompt_learner={str(s['prompt_learner']).lower()}",
            f"model.use_llm={str(s['llm']).lower()}",
            f"model.lora.enabled={str(s['lora']).lower()}",
            f"model.lora.trainable={str(s['lora']).lower()}",
            *extra,
            *self.overrides,
        ]


@dataclass
class Table:
    settings: list[dict[str, Any]]
    """{name, shots, paper}: the evaluation settings (columns)."""
    rows: list[Row]


def load_table(path: str | Path = DEFAULT_TABLE) -> Table:
    """Read and check the rows file; errors name the file and the row."""
    path = Path(path)
    data = yaml.safe_load(path.read_text()) or {}
    settings = data.get("settings") or []
    names = [s.get("name") for s in settings]
    if not settings or not all(isinstance(s.get("shots"), int) for s in settings):
        raise ConfigError(f"{path}: settings must be a list of {{name, shots, paper}}")
    rows = []
    for i, raw in enumerate(data.get("rows") or []):
        where = f"{path}: rows[{i}] ({raw.get('name', '?')})"
        switches = raw.get("switches") or {}
        if set(switches) != set(SWITCHES) or not all(isinstance(v, bool) for v in switches.values()):
            raise ConfigError(f"{where}: switches must set {', '.join(SWITCHES)} to true/false")
        paper = raw.get("paper") or {}
        if set(paper) != set(names) or any(len(v) != len(METRICS) for v in paper.values()):
            raise ConfigError(f"{where}: paper needs [I-AUROC, P-AUROC, accuracy] for each of {names}")
        rows.append(Row(str(raw["name"]), switches, paper, list(raw.get("set") or [])))
    if not rows:
        raise ConfigError(f"{path}: no rows")
    return Table(settings, rows)


def run_ablation(
    config: str | Path,
    data_root: str | Path,
    out: str | Path,
    overrides: Sequence[str] = (),
    rows: Sequence[str] | None = None,
    table: str | Path = DEFAULT_TABLE,
    train_workers: int = 1,
    instruct: str | Path | None = None,
) -> dict[str, Any]:
    """Train + evaluate the chosen rows (default all) on ``data_root``; writes ablation.json/.md."""
    from pipeline.core.mlflow_store import shared_store, tracking_uri
    from pipeline.orchestrate import instruct_fingerprint
    from pipeline.pipeline_config import load_pipeline_config
    from pipeline.registry import checkpoint_digest

    spec = load_table(table)
    chosen = [r for r in spec.rows if rows is None or r.name in rows]
    unknown = sorted(set(rows or ()) - {r.name for r in spec.rows})
    if unknown:
        raise ConfigError(f"{table}: no row {unknown[0]!r} (rows: {', '.join(r.name for r in spec.rows)})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    configs = {r.name: load_pipeline_config(config, [*overrides, *r.config_overrides()]) for r in chosen}
    base = load_pipeline_config(config, overrides)
    shards = out / "shards"
    plan_id = _synth(base, data_root, shards)["plan_id"]
    if instruct is None and base.train.instruction_fraction > 0:
        instruct = _instruction_set(base, data_root, out)
    results: dict[str, Any] = {}
    with shared_store(tracking_uri(out)):  # every row's training run in one MLflow store
        for row in chosen:
            cfg = configs[row.name]
            log.info("ablation: row %s (%s)", row.name, row.switches)
            row_instruct = None if instruct is None or cfg.train.instruction_fraction == 0 else Path(instruct)
            row_instruct_id = instruct_fingerprint(row_instruct)
            train = TrainInputs(shards, plan_id, row_instruct, row_instruct_id, train_workers)
            checkpoint = _train(cfg, train, out / row.name / "train", row.name)
            digest = checkpoint_digest(checkpoint)
            test = _test_fingerprint(cfg, data_root, out)
            results[row.name] = {
                s["name"]: _evaluate(cfg, (checkpoint, digest), (data_root, test), out, row, s)
                for s in spec.settings
            }
    summary = {"data": str(data_root), "config": str(config), "settings": spec.settings, "rows": []}
    for row in chosen:
        summary["rows"].append(
            {"name": row.name, "switches": row.switches, "ours": results[row.name], "paper": row.paper}
        )
    (out / "ablation.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "ablation.md").write_text(markdown(summary))
    return summary


@dataclass(frozen=True)
class TrainInputs:
    """What every row trains from: the shards (and their plan id), the instruction set, the workers."""

    shards: Path
    plan_id: str
    instruct: Path | None
    instruct_id: str
    workers: int


def _stage(label: str, folder: Path, key: str, inputs: dict[str, Any], fn: Callable[[], dict]) -> dict:
    """Skip, resume or (re)start one step by its recorded key, saying which and why; returns its summary."""
    from pipeline.fingerprint import read_stage, write_stage
    from pipeline.stage_check import NOT_RUN, check_stage, start_stage

    check = check_stage(folder, key, inputs)
    if check.status == "complete":
        log.info("ablation: %s: skipped, %s (%s)", label, check.reason, folder)
        return (read_stage(folder) or {}).get("summary") or {}
    verb = "resuming" if check.status == "resume" else "running" if check.reason == NOT_RUN else "redoing"
    log.info("ablation: %s: %s (%s) -> %s", label, verb, check.reason, folder)
    start_stage(folder, key, inputs, check)
    result = fn()
    write_stage(folder, key, "complete", result)
    return result


def _synth(cfg: Any, data_root: str | Path, folder: Path) -> dict:
    """The shards every row trains on: the orchestrator's synth stage, keyed the same way."""
    from pipeline.core.config import flatten
    from pipeline.orchestrate import data_fingerprints, synth_key, synth_settings
    from synth.job import run_synth

    normals = data_fingerprints(cfg, Path(data_root), folder.parent)["normals"]
    inputs = {
        "config": flatten({"seed": cfg.seed, "synth": synth_settings(cfg)}),
        "data": {"normals": normals},
    }

    def synth() -> dict:
        manifest = run_synth(cfg.synth, data_root, folder, seed=cfg.seed)
        return {k: manifest[k] for k in ("plan_id", "samples", "source_fingerprint", "categories")}

    return _stage("shards", folder, synth_key(cfg, normals), inputs, synth)


def _instruction_set(cfg: Any, data_root: str | Path, out: Path) -> Path | None:
    from pipeline.fingerprint import dataset_fingerprint, stage_key
    from synth.fingerprint import HashCache
    from train.instruct import write_instruction_set

    if cfg.synth.format != "mvtec":
        log.warning("ablation: instruction data is written from MVTec-layout data only; training without")
        return None
    target = out / "instruct"
    cache = HashCache(out / "hashes.json")
    images = dataset_fingerprint(data_root, "mvtec", "train", (), cache)  # every category's train images
    cache.save()
    settings = {"seed": cfg.seed, "size": cfg.model.image_size}
    key = stage_key(images=images, **settings)
    inputs = {"config": settings, "data": {"train images": images}}

    def write() -> dict:
        written = write_instruction_set(data_root, target, seed=cfg.seed, size=cfg.model.image_size)
        return {"json": str(written)}

    _stage("instruction set", target, key, inputs, write)
    return target


def _train(cfg: Any, train: TrainInputs, out: Path, row: str) -> Path:
    """The row's model: the orchestrator's train stage key over the row's effective config."""
    from pipeline.core.config import flatten
    from pipeline.orchestrate import model_fingerprint, model_settings, train_key

    key = train_key(train.plan_id, model_fingerprint(cfg), train.workers, train.instruct_id)
    inputs = {
        "config": flatten(model_settings(cfg)),
        "data": {"shards": train.plan_id, "instruction set": train.instruct_id},
        "workers": train.workers,
    }

    def fit() -> dict:
        from train.job import run_training
        from train.model import build_model, save_checkpoint

        model = build_model(cfg.model)
        if not any(p.requires_grad for p in model.parameters()):
            log.info("ablation: nothing trainable in this row; evaluating the model as built")
            save_checkpoint(model, cfg.model, out)
            return {"trained": False}
        del model
        job = cfg.train_job()
        return run_training(job, train.shards, out, instruct=train.instruct, workers=train.workers)

    _stage(f"row {row} train", out, key, inputs, fit)
    return out


def _test_fingerprint(cfg: Any, data_root: str | Path, out: Path) -> str:
    from pipeline.orchestrate import data_fingerprints

    return data_fingerprints(cfg, Path(data_root), out)["test"]


def _evaluate(
    cfg: Any, model: tuple[Path, str], data: tuple[str | Path, str], out: Path, row: Row, setting: dict
) -> dict:
    """One cell group of the table: the orchestrator's evaluate key over the setting's protocol.
    ``model``: the checkpoint and its digest; ``data``: the dataset root and its test fingerprint."""
    from pipeline.core.config import flatten
    from pipeline.orchestrate import eval_identity, eval_protocol, evaluate_key

    (checkpoint, digest), (data_root, test) = model, data
    setting_cfg = replace(cfg, evaluate=replace(cfg.evaluate, shots=setting["shots"]))
    key = evaluate_key(digest, eval_identity(setting_cfg, test))
    inputs = {
        "config": flatten({"evaluate": eval_protocol(setting_cfg)}),
        "data": {"test": test},
        "model": digest,
    }
    target = out / row.name / f"eval-{setting['name']}"

    def score() -> dict:
        from evaluate.job import run_evaluation

        return run_evaluation(checkpoint, data_root, target, shots=setting["shots"], config=cfg.evaluate)

    result = _stage(f"row {row.name} eval-{setting['name']}", target, key, inputs, score)
    return {k: result["mean"][k] for k in METRICS}


def _cell(ours: float | None, paper: float | None) -> str:
    mine = "–" if ours is None else f"{100 * ours:.1f}"
    return f"{mine} ({'–' if paper is None else f'{paper:.1f}'})"


def markdown(summary: dict[str, Any]) -> str:
    """The paper's layout: the four switches, then I-AUROC / P-AUROC / accuracy per setting;
    each cell is ours with the paper's figure in brackets."""
    settings = summary["settings"]
    head = ["Decoder", "Prompt learner", "LLM", "LoRA"]
    for s in settings:
        head += [f"{s['name']} I-AUROC", f"{s['name']} P-AUROC", f"{s['name']} Acc"]
    lines = [
        "# Ablation (Table 4 of the paper)",
        "",
        f"Ours on `{summary['data']}` with `{summary['config']}`; in brackets the paper's figures ("
        + "; ".join(f"{s['name']}: {s['paper']}" for s in settings)
        + "). Percent; – where the parts give no such figure.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for row in summary["rows"]:
        cells = ["✓" if row["switches"][k] else "" for k in SWITCHES]
        for s in settings:
            ours, paper = row["ours"][s["name"]], row["paper"][s["name"]]
            cells += [_cell(ours[m], p) for m, p in zip(METRICS, paper, strict=True)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
