"""Figures of the ICL analyses (matplotlib, Agg backend): accuracy vs shots per strategy and copy rate per
strategy. They return a Figure; the caller logs it (`StageRun.log_figure`) and closes it.

    fig = accuracy_vs_shots({"RS": {1: 0.4, 2: 0.5}, "SI": {...}}, zero_shot=0.12, oracle={"SQA"})

Run: used by the `icl-eval` stage; `pytest tests/icl/test_icl_eval.py -q` draws both.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def accuracy_vs_shots(curves: Mapping[str, Mapping[int, float]], *, zero_shot: float | None = None,
                      oracle: Collection[str] = (), title: str = "ICL accuracy vs shots") -> Any:
    """One line per strategy (x: shots, log2 scale), zero-shot as a dashed line, oracles dotted."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, curve in curves.items():
        shots = sorted(curve)
        label = f"{name} (oracle)" if name in oracle else name
        ax.plot(shots, [100 * curve[k] for k in shots], marker="o", ls=":" if name in oracle else "-", label=label)
    if zero_shot is not None:
        ax.axhline(100 * zero_shot, color="grey", ls="--", label="zero-shot")
    all_shots = sorted({k for c in curves.values() for k in c})
    if all_shots:
        ax.set_xscale("log", base=2)
        ax.set_xticks(all_shots, [str(k) for k in all_shots])
    ax.set_xlabel("shots")
    ax.set_ylabel("VQA accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return fig


def copy_rates(rates: Mapping[str, Mapping[int, float]], *, oracle: Collection[str] = (),
               title: str = "copy rate per strategy") -> Any:
    """Grouped bars: one group per strategy, one bar per shot count."""
    plt = _pyplot()
    names = list(rates)
    shots = sorted({k for r in rates.values() for k in r})
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(names) + 2), 4.5))
    width = 0.8 / max(1, len(shots))
    for j, k in enumerate(shots):
        xs = [i + (j - (len(shots) - 1) / 2) * width for i in range(len(names))]
        ax.bar(xs, [100 * rates[n].get(k, float("nan")) for n in names], width=width, label=f"{k}-shot")
    ax.set_xticks(range(len(names)), [f"{n}*" if n in oracle else n for n in names], rotation=30)
    ax.set_ylabel("copy rate (%)")
    ax.set_title(title + (" (* oracle)" if any(n in oracle for n in names) else ""))
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
