"""Stage implementation of the model layer: `bootstrap` (glue: lmmops.models.bootstrap -> MLflow/DVC).

    lmmops bootstrap    train the embedded default base model (resuming from checkpoints/bootstrap),
                        evaluate it on the held-out test splits, save it to models/base (a DVC output),
                        log it to MLflow and register it as `lmmops-base` with alias `champion`

The trainer lives in `lmmops.models.bootstrap`, the evaluations in `lmmops.evaluation`; this module records
their results: per-step losses (MLflow metrics with step=), a loss-curve PNG, sample generations, the eval table.
The returned metrics (metrics/bootstrap.json) hold no timings, so that the file is deterministic;
the training wall time is logged to MLflow as `train_seconds`.
"""

from __future__ import annotations

import json
import logging
import shutil
from typing import Any

import torch

from lmmops import tracking
from lmmops.config import BootstrapConfig
from lmmops.data.loaders import load_deepscaler, load_vqa
from lmmops.evaluation.figures import evaluate_figures
from lmmops.evaluation.icl import evaluate_icl
from lmmops.evaluation.reasoning import evaluate_reasoning
from lmmops.models.bootstrap import count_params, train
from lmmops.models.bootstrap.figures import FIGURE_DOMAINS, fresh_figures
from lmmops.models.bootstrap.model import IMAGE_SIZE
from lmmops.stages import StageContext

log = logging.getLogger(__name__)


def loss_figure(history: list[dict[str, float]]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [h["step"] for h in history]
    for key in sorted({k for h in history for k in h if k.startswith("loss")}):
        ax.plot(steps, [h.get(key, float("nan")) for h in history], label=key, lw=2 if key == "loss" else 1)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (answer tokens)")
    ax.set_yscale("log")
    ax.set_title("bootstrap: training loss")
    ax.legend()
    fig.tight_layout()
    return fig


def eval_table(metrics: dict[str, float], shots: tuple[int, ...]) -> str:
    """Markdown table: ICL accuracy per task and shot count, then the reasoning numbers."""
    tasks = sorted({k.split("/", 1)[1] for k in metrics if k.startswith("icl_acc_") and "/" in k})
    lines = ["| task | " + " | ".join(f"{k}-shot" for k in shots) + " |", "|---" * (len(shots) + 1) + "|"]
    for t in [*tasks, None]:
        name = t or "**mean**"
        cells = [metrics.get(f"icl_acc_{k}shot" + (f"/{t}" if t else ""), float("nan")) for k in shots]
        lines.append(f"| {name} | " + " | ".join(f"{100 * c:.1f}" for c in cells) + " |")
    lines.append(f"\nchance (uniform task guess): {100 * metrics.get('icl_chance', 0):.1f}%")
    twins = [(k, metrics[f"icl_twin_rate_{k}shot"]) for k in shots if f"icl_twin_rate_{k}shot" in metrics]
    if twins:
        lines.append("en/alias queries the demos tell apart, answered with the twin task's word (0 = learned from "
                     "the demos, ~50 = a guess between the twins): "
                     + ", ".join(f"{k}-shot {100 * r:.1f}%" for k, r in twins))
    lines.append(f"reasoning format rate: {100 * metrics.get('reasoning_format_rate', 0):.1f}%, "
                 f"accuracy: {100 * metrics.get('reasoning_accuracy', 0):.1f}%")
    levels = sorted(k for k in metrics if k.startswith("reasoning_accuracy/"))
    lines += [f"  {k.split('/')[1]}: {100 * metrics[k]:.1f}%" for k in levels]
    domains = [d for d in FIGURE_DOMAINS if f"task_acc/{d}" in metrics]
    if domains:
        columns = [c for c in ("reading_acc", "task_acc", "blind_acc") if f"{c}/{domains[0]}" in metrics]
        columns += sorted(k.split("/")[0] for k in metrics if k.startswith("pass_at_") and k.endswith(f"/{domains[0]}")
                          and "_se" not in k)
        lines += ["", "fresh figure items (greedy; pass@k sampled at temperature 1), % +- standard error:", "",
                  "| domain | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        for d in domains:
            cells = [f"{100 * metrics[f'{c}/{d}']:.1f} +- {100 * metrics[f'{c}_se/{d}']:.1f}" for c in columns]
            lines.append(f"| {d} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bootstrap(cfg: BootstrapConfig, ctx: StageContext) -> dict[str, float]:
    torch.set_num_threads(cfg.threads)
    data_dir = ctx.path(cfg.data_dir)

    # 1. Train (or resume, or reload a finished run of the same config and data from its checkpoint).
    def on_log(step: int, values: dict[str, float]) -> None:
        ctx.run.log_metrics(values, step=step)

    result = train(cfg, data_dir, ctx.path(cfg.checkpoint_dir), on_log=on_log)
    if result.resumed_from:
        log.info("bootstrap: resumed from step %d of %s", result.resumed_from, result.checkpoint)
    ctx.run.set_tags({"lmmops.bootstrap.resumed_from": result.resumed_from})
    ctx.run.log_metrics({"train_seconds": result.train_seconds})
    ctx.run.log_figure(loss_figure(result.history), "bootstrap/loss_curve.png")

    # 2. Evaluate on the held-out test splits.
    model, processor = result.model, result.processor
    icl_samples: list[dict[str, Any]] = []
    reasoning_samples: list[dict[str, Any]] = []
    metrics: dict[str, float] = {}
    metrics.update(evaluate_icl(model, processor, load_vqa(data_dir, "test"), cfg.eval_shots,
                                repeats=cfg.eval_repeats, seed=cfg.seed, samples_out=icl_samples))
    metrics.update(evaluate_reasoning(model, processor, load_deepscaler(data_dir, "test"),
                                      max_new_tokens=cfg.eval_max_new_tokens, samples_out=reasoning_samples))
    figure_samples: list[dict[str, Any]] = []
    if cfg.figure_eval_items:
        fresh = fresh_figures(cfg, data_dir, result.figures, IMAGE_SIZE)
        metrics.update(evaluate_figures(model, processor, fresh, samples=cfg.figure_eval_samples,
                                        max_new_tokens=cfg.figure_eval_max_new_tokens, samples_out=figure_samples))
    metrics["params"] = float(count_params(model))
    metrics["steps"] = float(result.steps)
    table = eval_table(metrics, cfg.eval_shots)
    log.info("bootstrap eval:\n%s", table)
    ctx.run.log_text(table, "bootstrap/eval_table.md")
    ctx.run.log_text(json.dumps(reasoning_samples, indent=2), "bootstrap/samples_reasoning.json")
    ctx.run.log_text(json.dumps(icl_samples, indent=2), "bootstrap/samples_icl.json")
    ctx.run.log_text(json.dumps(figure_samples, indent=2), "bootstrap/samples_figures.json")

    # 3. Save (the DVC output), log and register as <name>@champion.
    out_dir = ctx.path(cfg.out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    uri = tracking.log_model_dir(ctx.run, out_dir, "model")
    version = tracking.register_model(uri, cfg.registered_name, tags={"stage": "bootstrap", "steps": result.steps})
    tracking.set_alias(cfg.registered_name, "champion", version)
    ctx.run.set_tags({"lmmops.model_version": f"{cfg.registered_name}/{version}"})
    log.info("bootstrap: registered %s version %s as champion (%s)", cfg.registered_name, version, uri)
    return metrics

