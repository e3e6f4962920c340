"""Benchmark: does multimodal rule-based RL on the base model have a signal to learn from?

    .venv/bin/python benchmarks/rl_signal.py [--model models/base] [--domains geo perce_reason] [--seconds 360]
                                             [--seeds 0 1 2] [--eval-items 500] [--train-items 2000]

For each domain and seed: `--train-items` generated items to train on and `--eval-items` fresh items to score, none
repeating a figure the base was trained on (its bootstrap pools, rebuilt from params.yaml) or each other, none equal
to an image of data/; greedy task accuracy of the base, then `lmmops.rl.grpo.train_grpo` (GRPO, 32 prompts x 8
samples, lr 5e-5, one Adam step per rollout, no reference model) for `--seconds`, then greedy task accuracy again on
the same items. Prints a table: accuracy before and after, the gain with its paired standard error (per-item
differences), steps, and the mean training reward of the first and last 10 steps. The machine is printed too.
"""

from __future__ import annotations

import argparse
import copy
import platform

import numpy as np
import torch

from lmmops.config import load_stage_config
from lmmops.data.duplicates import image_digest, multimodal_digests
from lmmops.data.synthetic.diagrams import HeldOut, draw_split
from lmmops.env import configure_environment, find_root
from lmmops.eval.scoring import verify_batch
from lmmops.evaluation.reasoning import generate_completions
from lmmops.models import load_model
from lmmops.models.bootstrap.corpus import reasoning_prompt
from lmmops.models.bootstrap.figures import figure_pools
from lmmops.models.bootstrap.model import IMAGE_SIZE
from lmmops.rl.grpo import GrpoConfig, RLItem, train_grpo


def greedy_correct(model, processor, items: list[RLItem]) -> np.ndarray:
    completions = generate_completions(model, processor, [it.prompt for it in items], images=[it.image for it in items],
                                       max_new_tokens=128, batch_size=100)
    return np.array([float(a or 0.0) for a in verify_batch(completions, [it.answer for it in items])])


def item_sets(domain: str, seed: int, n_train: int, n_eval: int, avoid: HeldOut, digests: set[str]
              ) -> tuple[list[RLItem], list[RLItem]]:
    rng = np.random.default_rng([seed, 7_001])
    train = [p for p in draw_split(domain, n_train + n_train // 4, rng, IMAGE_SIZE, 0.0, avoid=avoid)
             if image_digest(p.image) not in digests][:n_train]
    held = HeldOut()  # what `avoid` holds plus the train items (a copy: `avoid` serves every seed)
    held.keys = set(avoid.keys)
    held.text_answers = {text: set(answers) for text, answers in avoid.text_answers.items()}
    for p in train:
        held.add(p)
    fresh = [p for p in draw_split(domain, n_eval + n_eval // 4, rng, IMAGE_SIZE, 0.0, avoid=held)
             if image_digest(p.image) not in digests][:n_eval]

    def rl(problems):
        return [RLItem(reasoning_prompt(p.question, with_image=True), p.image, p.answer) for p in problems]

    return rl(train), rl(fresh)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/base")
    parser.add_argument("--domains", nargs="+", default=["geo"])
    parser.add_argument("--seconds", type=float, default=360.0)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--eval-items", type=int, default=500)
    parser.add_argument("--train-items", type=int, default=2000)
    args = parser.parse_args()
    root = find_root()
    configure_environment(root)
    torch.set_num_threads(2)
    bootstrap = load_stage_config("bootstrap", root / "params.yaml")
    data_dir = root / bootstrap.data_dir
    pools = figure_pools(bootstrap, data_dir, IMAGE_SIZE)
    digests = multimodal_digests(data_dir)
    base, processor = load_model(root / args.model)
    rows = []
    for domain in args.domains:
        avoid = HeldOut()
        avoid.keys = {key for d, key in pools.trained_keys() if d == domain}
        for seed in args.seeds:
            train, fresh = item_sets(domain, seed, args.train_items, args.eval_items, avoid, digests)
            model = copy.deepcopy(base)
            torch.manual_seed(seed)
            before = greedy_correct(model, processor, fresh)
            history = train_grpo(model, processor, train, GrpoConfig(seconds=args.seconds),
                                 rng=np.random.default_rng(seed))
            after = greedy_correct(model, processor, fresh)
            diff = after - before
            rewards = [h["reward"] for h in history]
            rows.append((domain, seed, len(history), before.mean(), after.mean(), diff.mean(),
                         diff.std(ddof=1) / np.sqrt(len(diff)), np.mean(rewards[:10]), np.mean(rewards[-10:])))
            print(f"{domain} seed {seed}: {len(history)} steps, {100 * before.mean():.1f} -> {100 * after.mean():.1f}",
                  flush=True)
    print(f"\nmachine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; "
          f"{args.seconds:.0f} s of GRPO per run; {args.eval_items} fresh items per domain (greedy)")
    print(f"{'domain':<14} {'seed':>4} {'steps':>6} {'before %':>9} {'after %':>8} {'gain':>6} {'± SE':>6} "
          f"{'reward first10':>15} {'last10':>7}")
    for domain, seed, steps, b, a, g, se, r0, r1 in rows:
        print(f"{domain:<14} {seed:>4} {steps:>6} {100 * b:>9.1f} {100 * a:>8.1f} {100 * g:>+6.1f} {100 * se:>6.1f} "
              f"{r0:>15.3f} {r1:>7.3f}")


if __name__ == "__main__":
    main()
