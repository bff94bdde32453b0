"""Table 4 of the paper: train and evaluate one model per row of part switches, table beside the paper's.

Recipe: ``synth`` the training shards once (and the instruction set, when the config uses one),
then per row ``train`` (Ray Train, resumable; a row with nothing trainable is saved untrained, as
the paper's LLM-only row is the off-the-shelf model) and ``evaluate`` in each setting of the table
(unsupervised and 1-shot). A row whose metrics.json exists is not redone, so a killed ablation
continues where it stopped. Rows and the paper's figures live in configs/ablation/table4.yaml.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import ConfigError

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
    from pipeline.pipeline_config import load_pipeline_config
    from pipeline.tracking import shared_store, tracking_uri
    from synth.job import run_synth

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
    run_synth(base.synth, data_root, shards, seed=base.seed)
    if instruct is None and base.train.instruction_fraction > 0:
        instruct = _instruction_set(base, data_root, out)
    results: dict[str, Any] = {}
    with shared_store(tracking_uri(out)):  # every row's training run in one MLflow store
        for row in chosen:
            cfg = configs[row.name]
            log.info("ablation: row %s (%s)", row.name, row.switches)
            row_instruct = instruct if cfg.train.instruction_fraction > 0 else None
            checkpoint = _train(cfg, shards, out / row.name / "train", row_instruct, train_workers)
            results[row.name] = {
                s["name"]: _evaluate(cfg, checkpoint, data_root, out, row, s) for s in spec.settings
            }
    summary = {"data": str(data_root), "config": str(config), "settings": spec.settings, "rows": []}
    for row in chosen:
        summary["rows"].append(
            {"name": row.name, "switches": row.switches, "ours": results[row.name], "paper": row.paper}
        )
    (out / "ablation.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "ablation.md").write_text(markdown(summary))
    return summary


def _instruction_set(cfg: Any, data_root: str | Path, out: Path) -> Path | None:
    from train.instruct import write_instruction_set

    if cfg.synth.format != "mvtec":
        log.warning("ablation: instruction data is written from MVTec-layout data only; training without")
        return None
    target = out / "instruct"
    if not target.is_dir():
        write_instruction_set(data_root, target, seed=cfg.seed, size=cfg.model.image_size)
    return target


def _train(cfg: Any, shards: Path, out: Path, instruct: Path | None, workers: int) -> Path:
    from train.job import run_training
    from train.model import build_model, save_checkpoint

    if (out / "model.safetensors").is_file() and (out / "config.yaml").is_file():
        return out
    model = build_model(cfg.model)
    if not any(p.requires_grad for p in model.parameters()):
        log.info("ablation: nothing trainable in this row; evaluating the model as built")
        return save_checkpoint(model, cfg.model, out)
    del model
    run_training(cfg, shards, out, instruct=instruct, workers=workers)
    return out


def _evaluate(cfg: Any, checkpoint: Path, data_root: str | Path, out: Path, row: Row, setting: dict) -> dict:
    from evaluate.job import run_evaluation

    target = out / row.name / f"eval-{setting['name']}"
    done = target / "metrics.json"
    if done.is_file():
        result = json.loads(done.read_text())
    else:
        result = run_evaluation(checkpoint, data_root, target, shots=setting["shots"], config=cfg.evaluate)
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
