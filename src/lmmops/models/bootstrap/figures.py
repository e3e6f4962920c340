"""Generated figures for the base model: perception rows (read the figure), multimodal reasoning rows (a trace that
starts from what was read), and the fresh items its figure evaluations score.

    pools = figure_pools(cfg, data_dir)     # FigurePools(perception=[...], reasoning=[...])
    fresh = fresh_figures(cfg, data_dir, pools)   # {"geo": [FigureProblem, ...], ...}

Every figure comes from `lmmops.data.synthetic.diagrams` with random streams of the bootstrap's own (never the
data splits' seeds), and a figure whose pixels equal an image of any split in data/ is skipped, so the base
never reads or solves an RL or evaluation item. The fresh evaluation items also skip every training figure
(by generating values). Perception is taught apart from solving: a reading row's target is the figure's values
(`FigureProblem.reading`, e.g. "35 , 70"); a reasoning row's trace is the reading and the plan, never the
computed result ("The figure shows 35 , 70 . x = 180 - 35 - 70 ."), followed by the boxed answer, so the
arithmetic is left for RL to sharpen.

Departure from LMM-R1: its base (Qwen2.5-VL) was pretrained on real images at scale; here perception is trained
from scratch on toy figures, in one phase with everything else.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmmops.config import BootstrapConfig
from lmmops.data.duplicates import image_digest, multimodal_digests
from lmmops.data.synthetic.diagrams import SUBSETS, FigureProblem, draw_problem

FIGURE_DOMAINS: tuple[str, ...] = SUBSETS  # multimath, geo, perce_reason
READ_QUESTION = "What does the figure show?"
_STREAMS = {"perception": 9_101, "reasoning": 9_102, "fresh": 9_103}


@dataclass(frozen=True)
class Figure:
    """A generated item of one domain."""

    domain: str
    problem: FigureProblem


@dataclass
class FigurePools:
    perception: list[Figure]
    reasoning: list[Figure]

    def trained_keys(self) -> set[tuple[str, tuple[Hashable, ...]]]:
        return {(f.domain, f.problem.key) for f in [*self.perception, *self.reasoning]}


def reading_prompt() -> str:
    """The prompt of a reading row (the image placeholder first, as in every multimodal prompt)."""
    return f"<image>Question: {READ_QUESTION}\nAnswer:"


def reading_completion(problem: FigureProblem) -> str:
    return f" {problem.reading}"


def reasoning_completion(problem: FigureProblem) -> str:
    """The trace of a multimodal reasoning row: what was read, the plan, its arithmetic one equation at a time in
    the style of the text traces ("..., so 180 - 35 = 145. 145 - 70 = 75."), for multiple choice the option
    that value is, then the boxed answer. The written-out equations let the arithmetic the text rows (and
    text-only RL) teach carry over to figures."""
    steps = problem.steps
    work = f"{problem.plan}, so {'. '.join(steps)}." if steps else f"{problem.plan}."
    choice = f" {problem.value} is choice {problem.answer}." if problem.options else ""
    return (f"<think>The figure shows {problem.reading} . {work}{choice}</think>"
            f"<answer>$\\boxed{{{problem.answer}}}$</answer>")


def _draw(n_per_domain: int, seed: int, stream: str, size: int, avoid_digests: set[str],
          avoid_keys: set[tuple[str, tuple[Hashable, ...]]], domains: Sequence[str]) -> list[Figure]:
    """`n_per_domain` distinct figures of each domain (kinds in turn), none in `avoid_*`."""
    out: list[Figure] = []
    for d, domain in enumerate(domains):
        rng = np.random.default_rng([seed, _STREAMS[stream], d])
        keys = set()
        draws = 0
        while len(keys) < n_per_domain:
            draws += 1
            if draws > 50 * n_per_domain + 1000:
                raise ValueError(f"bootstrap: cannot draw {n_per_domain} distinct {domain} figures for {stream}")
            problem = draw_problem(domain, rng, size, kind_index=len(keys))
            if (problem.key in keys or (domain, problem.key) in avoid_keys
                    or image_digest(problem.image) in avoid_digests):
                continue
            keys.add(problem.key)
            out.append(Figure(domain, problem))
    return out


def figure_pools(cfg: BootstrapConfig, data_dir: Path, size: int, domains: Sequence[str] = FIGURE_DOMAINS
                 ) -> FigurePools:
    """The perception and reasoning figures the base trains on, none equal to an image of data/."""
    if not cfg.perception_figures and not cfg.multimodal_examples:
        return FigurePools([], [])
    avoid = multimodal_digests(data_dir)
    return FigurePools(
        perception=_draw(cfg.perception_figures, cfg.seed, "perception", size, avoid, set(), domains),
        reasoning=_draw(cfg.multimodal_examples, cfg.seed, "reasoning", size, avoid, set(), domains),
    )


def fresh_figures(cfg: BootstrapConfig, data_dir: Path, pools: FigurePools, size: int,
                  domains: Sequence[str] = FIGURE_DOMAINS) -> dict[str, list[FigureProblem]]:
    """`cfg.figure_eval_items` items per domain that the base never trained on and that are in no data split."""
    fresh = _draw(cfg.figure_eval_items, cfg.seed, "fresh", size, multimodal_digests(data_dir), pools.trained_keys(),
                  domains)
    return {d: [f.problem for f in fresh if f.domain == d] for d in domains}
