"""Benchmark of the demo feature cache: ICL examples per second with and without it, at 4 and 16 shots, on
the base model, next to the share of the uncached ICL time that the vision encoder takes.

Run: .venv/bin/python benchmarks/icl_eval.py [--model models/base] [--data data] [--shots 4 16]
                                             [--queries 96] [--batch-size 16] [--repeats 2] [--threads 2]

What it measures: the same prompts (random demonstrations from the train split for `--queries` test
queries) through `lmmops.icl.inference.ICLRunner.predict` (batched greedy generation, stopping at the item
separator), once with the vision encoder running on every image of every prompt (uncached) and once with
the support images' features read from a `DemoFeatureCache` (cached: only the query images are encoded, and,
for LLaVA, only they go through the image processor; the demo images' tokens are written from their size).
Both paths produce the same answers (checked). Columns:
  uncached ex/s, cached ex/s    examples (prompts) per second, best of `--repeats`
  speed-up                      cached / uncached
  vision share                  the share of the uncached time spent inside the vision encoder's forward
                                (timed with forward hooks on the adapter's `vision_model`)
  ideal                         1 / (1 - share x demo images / all images): the speed-up if every demo
                                image's encoding cost vanished and nothing else changed (the cached path
                                also skips the demo images' preprocessing, so it can beat this)
  prep share                    the share of the uncached time spent in the image processor (resize,
                                normalise), timed around its calls
  ideal +prep                   the same bound with the demo images' preprocessing removed as well
  recovered                     (1 - 1/speed-up) / (share x demo share): the part of the removable vision
                                time that the cache actually removes
The cache build time (once per support set, in the `index` stage) is printed separately.
Timings depend on the machine (2 shared CPU cores when written); the tiny base model's vision tower is
small next to its decoder, so its share is smaller than for a real LMM (the issue quotes an H100 with the
Idefics2-8b architecture: 32-shot latency 1756 ms -> 763 ms).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from lmmops import tracking
from lmmops.data.loaders import load_vqa
from lmmops.icl.cache import DemoFeatureCache
from lmmops.icl.embedders import ModelImageEmbedder
from lmmops.icl.inference import ICLRunner
from lmmops.icl.retrieval import Retriever
from lmmops.models import load_model


class CallTimer:
    """Wall time spent in calls of a wrapped object (the processor's image processor); attributes pass through."""

    def __init__(self, inner: object):
        self.inner, self.seconds = inner, 0.0

    def __call__(self, *args: object, **kwargs: object) -> object:
        t0 = time.perf_counter()
        try:
            return self.inner(*args, **kwargs)  # type: ignore[operator]
        finally:
            self.seconds += time.perf_counter() - t0

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


class VisionTimer:
    """Wall time spent inside a module's forward (pre/post hooks)."""

    def __init__(self, module: torch.nn.Module):
        self.seconds, self._t0 = 0.0, 0.0
        self.handles = [module.register_forward_pre_hook(self._pre), module.register_forward_hook(self._post)]

    def _pre(self, *args: object) -> None:
        self._t0 = time.perf_counter()

    def _post(self, *args: object) -> None:
        self.seconds += time.perf_counter() - self._t0

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/base", help="base model dir or URI (default: models/base)")
    parser.add_argument("--data", default="data", type=Path)
    parser.add_argument("--shots", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--queries", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.model.startswith(("models:/", "runs:/", "tiny:")) and not Path(args.model).is_dir():
        print(f"no base model at {args.model}: run `make run` (or `lmmops bootstrap`) first", file=sys.stderr)
        return 2

    model, processor = load_model(tracking.resolve_model_spec(args.model))
    support, queries = load_vqa(args.data, "train"), load_vqa(args.data, "test")[: args.queries]
    embedder = ModelImageEmbedder(model, processor, batch_size=64)
    t0 = time.perf_counter()
    cache = DemoFeatureCache.build(embedder, [it.image_path for it in support], data_version="benchmark")
    build_s = time.perf_counter() - t0
    retriever = Retriever(support)

    rows = []
    for k in args.shots:
        picks = retriever.retrieve("RS", queries, k, seed=0)
        prompts = [([support[i] for i in row], q) for row, q in zip(picks, queries, strict=True)]
        uncached_runner = ICLRunner(model, processor, batch_size=args.batch_size, progress=False)
        cached_runner = ICLRunner(model, processor, cache=cache, batch_size=args.batch_size, progress=False)
        uncached_runner.predict(prompts[: args.batch_size])  # warm-up (allocator, first-call overheads)
        best = {"uncached": float("inf"), "cached": float("inf")}
        vision_s = prep_s = 0.0
        answers: dict[str, list[str]] = {}
        for _ in range(args.repeats):
            for name, runner in (("uncached", uncached_runner), ("cached", cached_runner)):
                timer = VisionTimer(embedder.adapter.vision_model)
                original = processor.image_processor
                processor.image_processor = prep = CallTimer(original)
                t = time.perf_counter()
                try:
                    answers[name] = runner.predict(prompts)
                finally:
                    processor.image_processor = original
                dt = time.perf_counter() - t
                timer.close()
                if dt < best[name]:
                    best[name] = dt
                    if name == "uncached":
                        vision_s, prep_s = timer.seconds, prep.seconds
        if answers["cached"] != answers["uncached"]:
            raise AssertionError(f"{k}-shot: cached and uncached answers differ")
        share, prep_share = vision_s / best["uncached"], prep_s / best["uncached"]
        demo_share = k / (k + 1)  # demo images among all images of a prompt
        speedup = best["uncached"] / best["cached"]
        removable = share * demo_share
        rows.append((k, len(prompts) / best["uncached"], len(prompts) / best["cached"], speedup, share,
                     1 / (1 - removable), (1 - 1 / speedup) / removable if removable > 0 else float("nan"),
                     prep_share, 1 / (1 - (share + prep_share) * demo_share)))

    print(f"\nICL with and without the demo feature cache: {args.model}, {len(queries)} test queries, RS demos, "
          f"batch {args.batch_size}, {args.threads} threads")
    print(f"demo feature cache build: {len(cache)} support images in {build_s:.2f} s\n")
    print("| shots | uncached ex/s | cached ex/s | speed-up | vision share (uncached) | ideal | recovered "
          "| prep share | ideal +prep |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for k, u, c, s, share, ideal, rec, prep_share, ideal_prep in rows:
        print(f"| {k} | {u:.1f} | {c:.1f} | {s:.2f}x | {100 * share:.1f}% | {ideal:.2f}x | {100 * rec:.0f}% "
              f"| {100 * prep_share:.1f}% | {ideal_prep:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
