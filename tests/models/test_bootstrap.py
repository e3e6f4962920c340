"""The bootstrap trainer and stage at test size: loss decreases, resume continues, the registered model loads back.

Run: `.venv/bin/python -m pytest tests/models/test_bootstrap.py -q` (about a minute on 2 cores).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from lmmops.models.bootstrap.batches import drill_row, encode, sample_batch, sub_batches
from lmmops.models.bootstrap.corpus import corpus_texts, drill_equations, extra_math_rows, load_corpora
from lmmops.models.bootstrap.figures import reasoning_completion
from lmmops.models.bootstrap.model import build_processor
from lmmops.models.bootstrap.train import combine_losses, group_losses, mean_group_losses, train

from testutil import tiny_config, tiny_project

# A test-size run (testutil.TINY's model with one text layer): same code path as the default, a few seconds.
TINY = tiny_config("bootstrap", text_layers=1, steps=30, batch_size=8, lr=3e-3, warmup_steps=3,
                   arithmetic_drill_share=0.125,  # one drill row of the 8
                   checkpoint_every=10, log_every=5, eval_shots=[0, 1, 2])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tiny_project(tmp_path_factory.mktemp("bootstrap"), model=False, vqa={"train": 120, "val": 10, "test": 40},
                        deepscaler={"train": 30, "test": 6},
                        multimodal={"multimath_train": 3, "geo_train": 3, "perce_reason_train": 3})
    return root / "data"


def test_word_tokenizer_round_trips_the_reasoning_format(data_dir: Path) -> None:
    tok = build_processor(corpus_texts(load_corpora(data_dir, "train"))).tokenizer
    text = "<think>9 * 9 = 81. 81 - 18 = 63.</think><answer>$\\boxed{63}$</answer>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert len(tok("Short answer: bravo", add_special_tokens=False)["input_ids"]) == 4  # answers are whole words


def test_combine_losses_hand_computed() -> None:
    losses = {"icl": torch.tensor(2.0), "vqa": torch.tensor(1.0), "reasoning": torch.tensor(4.0),
              "separator": torch.tensor(0.5)}
    assert combine_losses(losses).item() == pytest.approx((2 + 1 + 4) / 3 + 0.5)
    assert combine_losses(losses, icl_weight=2.0).item() == pytest.approx((2 * 2 + 1 + 4) / 4 + 0.5)
    assert combine_losses({"vqa": torch.tensor(3.0)}, icl_weight=5.0).item() == pytest.approx(3.0)
    with pytest.raises(ValueError, match="no loss groups"):
        combine_losses({"separator": torch.tensor(1.0)})


def test_group_losses_average_each_group_over_every_sub_batch_hand_computed() -> None:
    # Two sub-batches: the "icl" answers' summed losses 3 (1 position) and 5 (3 positions) pool to 8 / 4 = 2,
    # not to the mean of the sub-batch means ((3 + 5/3) / 2 = 2.33).
    parts = [{"icl": (torch.tensor(3.0), torch.tensor(1))},
             {"icl": (torch.tensor(5.0), torch.tensor(3)), "vqa": (torch.tensor(1.5), torch.tensor(3))}]
    losses = mean_group_losses(parts)
    assert losses["icl"].item() == pytest.approx(2.0) and losses["vqa"].item() == pytest.approx(0.5)
    # group_losses on one batch: row 0 ("icl") labels positions 1, 2; row 1 ("vqa") position 1 is a separator.
    logits = torch.log(torch.tensor([[[0.5, 0.5, 0.0], [0.25, 0.75, 0.0], [1 / 3, 1 / 3, 1 / 3]],
                                     [[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3], [1 / 3, 1 / 3, 1 / 3]]]))
    batch = {"input_ids": torch.tensor([[0, 1, 1], [0, 2, 0]]),
             "loss_mask": torch.tensor([[False, True, True], [False, True, False]])}
    out = group_losses(logits, batch, ["icl", "vqa"], sep_id=2)
    assert out["icl"].item() == pytest.approx((-math.log(0.5) - math.log(0.75)) / 2)
    assert out["separator"].item() == pytest.approx(-math.log(0.25))
    assert out["vqa"].item() == 0.0  # no content positions left


def test_long_icl_episodes_take_the_place_of_ordinary_ones_and_forward_apart(data_dir: Path) -> None:
    import numpy as np

    corpora = load_corpora(data_dir, "train")
    processor = build_processor(corpus_texts(corpora))
    enc = encode(corpora, processor, image_seq_length=4)
    cfg = dataclasses.replace(TINY, batch_size=16, icl_share=0.5, long_icl_rows=2, long_max_shots=4)
    rows = sample_batch(np.random.default_rng(0), corpora, enc, processor.tokenizer, cfg)
    icl = [r for r in rows if r.group == "icl"]
    # 8 ICL rows of 2 shots -> 4 of 2 shots + 2 of 4 shots (each long one replaces 4 // 2 = 2): the same answers
    assert [len(r.images) for r in icl] == [3, 3, 3, 3, 5, 5]
    assert [r.long for r in rows][-2:] == [True, True] and sum(r.long for r in rows) == 2
    assert len(rows) == cfg.batch_size - 2
    short, long = sub_batches(rows)
    assert all(not r.long for r in short) and long == rows[-2:]
    assert sub_batches(rows[:-2]) == [rows[:-2]]  # no long episodes: one batch, as before
    with pytest.raises(ValueError, match="long_icl_rows 5 take the place of 10 ICL episodes"):
        sample_batch(np.random.default_rng(0), corpora, enc, processor.tokenizer,
                     dataclasses.replace(cfg, long_icl_rows=5))


def test_extra_math_rows_take_the_levels_in_turn_and_skip_excluded_problems() -> None:
    rows = extra_math_rows(6, seed=0, exclude=set(), levels=(1, 2))
    assert [r.level for r in rows] == [1, 2, 1, 2, 1, 2]
    skipped = extra_math_rows(3, seed=0, exclude={rows[0].problem}, levels=(1, 2))
    assert rows[0].problem not in {r.problem for r in skipped} and len(skipped) == 3
    # Each worked trace restates its quantities before computing (see lmmops.data.synthetic.deepscaler).
    assert rows[0].solution.startswith("<think>has ")
    with pytest.raises(ValueError, match="extra_reasoning_levels"):
        extra_math_rows(1, seed=0, exclude=set(), levels=(1, 7))


def test_drill_equations_are_the_traces_integer_equations_and_hold() -> None:
    equations = drill_equations(40, seed=0, levels=(1, 2))
    assert len(equations) == 40
    for eq in equations:
        lhs, result = eq.removesuffix(".").split(" = ")
        a, op, b = lhs.split(" ")
        assert {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op] == int(result), eq
    # A level-2 trace holds two equations, the second using the first's result.
    level2 = drill_equations(2, seed=0, levels=(2,))
    assert level2[1].startswith(level2[0].split(" = ")[1].removesuffix(".") + " ")
    with pytest.raises(ValueError, match="arithmetic_drill_levels"):
        drill_equations(1, seed=0, levels=(0,))


def test_drill_row_puts_the_loss_on_each_result_and_its_full_stop_only(data_dir: Path) -> None:
    corpora = load_corpora(data_dir, "train")
    processor = build_processor(corpus_texts(corpora))
    tok = processor.tokenizer
    enc = encode(corpora, processor, image_seq_length=4)
    row = drill_row(enc, tok, ["8 + 7 = 15.", "6 * 5 = 30."])
    assert row.group == "arithmetic" and row.ids[0] == enc.bos and row.images == []
    assert tok.decode(row.ids[1:]) == " so 8 + 7 = 15. so 6 * 5 = 30."  # the traces' own wording
    assert tok.unk_token_id not in row.ids
    # labelled: "▁1" "5" "." and "▁3" "0" "."; nothing of "so 8 + 7 =" (random operands)
    labelled = [tok.convert_ids_to_tokens(i) for i, lab in zip(row.ids, row.labels, strict=True) if lab]
    assert labelled == ["▁1", "5", ".", "▁3", "0", "."]


def test_the_drill_share_takes_its_rows_from_the_text_reasoning_rows(data_dir: Path) -> None:
    import numpy as np

    corpora = load_corpora(data_dir, "train")
    corpora.drill = drill_equations(50, seed=0)
    processor = build_processor(corpus_texts(corpora))
    enc = encode(corpora, processor, image_seq_length=4)
    cfg = dataclasses.replace(TINY, arithmetic_drill_share=0.25, arithmetic_drill_pack=3, long_icl_rows=0)
    groups = [r.group for r in sample_batch(np.random.default_rng(0), corpora, enc, processor.tokenizer, cfg)]
    no_drill = dataclasses.replace(cfg, arithmetic_drill_share=0.0)
    base = [r.group for r in sample_batch(np.random.default_rng(0), corpora, enc, processor.tokenizer, no_drill)]
    assert len(groups) == len(base) == cfg.batch_size
    assert base.count("arithmetic") == 0 and groups.count("arithmetic") == 2
    assert groups.count("reasoning") == base.count("reasoning") - 2
    with pytest.raises(ValueError, match="shares must sum to at most 1"):
        sample_batch(np.random.default_rng(0), corpora, enc, processor.tokenizer,
                     dataclasses.replace(cfg, arithmetic_drill_share=0.9))


def test_tiny_bootstrap_trains_and_loss_decreases(data_dir: Path, tmp_path: Path) -> None:
    result = train(TINY, data_dir, tmp_path / "ckpt", progress=False)
    losses = [h["loss"] for h in result.history]
    assert result.steps == TINY.steps and len(losses) == TINY.steps // TINY.log_every
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 * 0.9, losses
    assert result.train_seconds < 60


def test_resume_continues_at_the_saved_step(data_dir: Path, tmp_path: Path) -> None:
    first = train(TINY, data_dir, tmp_path / "ckpt", stop_after=10, progress=False)
    assert first.steps == 10 and first.checkpoint is not None and first.checkpoint.is_file()
    assert torch.load(first.checkpoint, weights_only=False)["step"] == 10
    logged: list[int] = []
    second = train(TINY, data_dir, tmp_path / "ckpt", on_log=lambda step, m: logged.append(step), progress=False)
    assert second.resumed_from == 10 and second.steps == TINY.steps
    assert logged == list(range(TINY.log_every, TINY.steps + 1, TINY.log_every))  # restored + new steps
    # A different config trains from scratch (the checkpoint key is the config + data hash).
    other = train(dataclasses.replace(TINY, seed=1, steps=5), data_dir, tmp_path / "ckpt", progress=False)
    assert other.resumed_from == 0


def test_stage_registers_champion_that_loads_back(data_dir: Path, project: Path) -> None:
    from lmmops import tracking
    from lmmops.models import load_model
    from lmmops.stages import metrics_path, run_stage

    cfg = dataclasses.replace(TINY, data_dir=str(data_dir), steps=10)
    metrics = run_stage("bootstrap", cfg, root=project)
    for key in ("icl_acc_0shot", "icl_acc_2shot", "icl_chance", "reasoning_format_rate", "reasoning_accuracy",
                "params"):
        assert key in metrics
    for domain in ("multimath", "geo", "perce_reason"):
        for name in ("reading_acc", "task_acc", "blind_acc", f"pass_at_{cfg.figure_eval_samples}"):
            assert 0.0 <= metrics[f"{name}/{domain}"] <= 1.0 and f"{name}_se/{domain}" in metrics
    assert metrics_path(project, "bootstrap").is_file()
    saved, _ = load_model(project / cfg.out_dir)
    registered, processor = load_model(tracking.resolve_model_spec("models:/lmmops-base@champion"))
    assert type(registered).__name__ == "LlavaForConditionalGeneration"
    assert processor.tokenizer.decode(processor.tokenizer("<think>1</think>")["input_ids"], skip_special_tokens=True) \
        == "<think>1</think>"
    a, b = saved.state_dict(), registered.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # ... and they are the trained weights, not a fresh initialisation.
    ckpt = next((project / cfg.checkpoint_dir).glob("*/last.pt"))
    trained = torch.load(ckpt, weights_only=False)["model"]
    assert all(torch.equal(trained[k], b[k]) for k in trained if k in b)


def test_figure_rows_read_the_values_and_trace_from_the_reading(data_dir: Path) -> None:
    import numpy as np

    from lmmops.data.duplicates import image_digest, multimodal_digests
    from lmmops.models.bootstrap.figures import figure_pools, fresh_figures

    cfg = dataclasses.replace(TINY, perception_figures=30, multimodal_examples=10, perception_rows=2,
                              perception_pack=3, multimodal_reasoning_share=0.125, multimodal_pack=2, long_icl_rows=0,
                              figure_eval_items=20)
    corpora = load_corpora(data_dir, "train")
    corpora.figures = figure_pools(cfg, data_dir, size=32)
    assert len(corpora.figures.perception) == 3 * 30 and len(corpora.figures.reasoning) == 3 * 10
    # no generated figure is an image of data/, and the fresh evaluation items are none of the training figures
    data = multimodal_digests(data_dir)
    assert data and not data & {image_digest(f.problem.image) for f in corpora.figures.perception}
    fresh = fresh_figures(cfg, data_dir, corpora.figures, size=32)
    assert {len(v) for v in fresh.values()} == {20}
    trained = corpora.figures.trained_keys()
    assert not any((d, p.key) in trained for d, items in fresh.items() for p in items)

    processor = build_processor(corpus_texts(corpora))
    tok = processor.tokenizer
    enc = encode(corpora, processor, image_seq_length=4)
    rows = sample_batch(np.random.default_rng(0), corpora, enc, tok, cfg)
    perception = [r for r in rows if r.group == "perception"]
    assert len(perception) == 2 and len(rows) == cfg.batch_size + 2  # perception rows come on top
    readings = {f.problem.reading for f in corpora.figures.perception}
    for row in perception:
        assert len(row.images) == 3 and row.ids.count(tok.convert_tokens_to_ids("<image>")) == 3 * 4
        labelled = [i for i, lab in zip(row.ids, row.labels, strict=True) if lab]  # each reading, then EOS
        ends = [k for k, i in enumerate(labelled) if i == enc.eos]
        parts = [tok.decode(labelled[a + 1 if a else 0 : b]) for a, b in zip([0, *ends[:-1]], ends, strict=True)]
        assert len(parts) == 3 and all(part.strip() in readings for part in parts), parts
        assert tok.unk_token_id not in row.ids
    (mm,) = [r for r in rows if r.group == "mm_reasoning"]
    trace = tok.decode([i for i, lab in zip(mm.ids, mm.labels, strict=True) if lab], skip_special_tokens=True)
    assert trace.startswith("<think>The figure shows ") and "work out the answer" not in trace
    for figure in corpora.figures.reasoning:  # the trace works the plan out one equation at a time
        completion = reasoning_completion(figure.problem)
        assert all(f"{step}." in completion for step in figure.problem.steps)
        assert completion.startswith(f"<think>The figure shows {figure.problem.reading} . {figure.problem.plan}")
        assert (f"is choice {figure.problem.answer}." in completion) == (figure.problem.options is not None)
    assert trace.count("<answer>$\\boxed{") == 2 and len(mm.images) == 2


def test_evaluate_figures_scores_reading_task_blind_and_pass_at_k_hand_computed(monkeypatch: pytest.MonkeyPatch
                                                                                ) -> None:
    import numpy as np

    from lmmops.data.synthetic.diagrams import draw_problem
    from lmmops.evaluation import figures as evaluation

    rng = np.random.default_rng(0)
    problems = [draw_problem("perce_reason", rng, 32, kind_index=2) for _ in range(2)]  # expressions "a op b"
    answers = [p.answer for p in problems]

    def fake_generate(model, processor, prompts, *, images, temperature=None, samples=1, **_):
        blank = all(im.getextrema() == ((255, 255), (255, 255), (255, 255)) for im in images)
        if "What does the figure show?" in prompts[0]:  # item 0 read exactly (extra spaces are fine), item 1 not
            return [f"  {problems[0].reading} ", "1 + 1"]
        box = "<think>t</think><answer>$\\boxed{%s}$</answer>"
        if temperature is None:  # greedy: item 0 right with its image, nothing right blind
            return [box % ("0" if blank else answers[0]), box % "0"]
        # 2 samples each: item 0 wrong twice, item 1 right once
        return [box % "0", box % "0", box % "0", box % answers[1]]

    monkeypatch.setattr(evaluation, "generate_completions", fake_generate)
    out = evaluation.evaluate_figures(None, None, {"perce_reason": problems}, samples=2)
    assert out["reading_acc/perce_reason"] == 0.5 and out["task_acc/perce_reason"] == 0.5
    assert out["blind_acc/perce_reason"] == 0.0 and out["pass_at_2/perce_reason"] == 0.5
    assert out["task_acc_se/perce_reason"] == pytest.approx(math.sqrt(0.5 * 0.5 / 2))
