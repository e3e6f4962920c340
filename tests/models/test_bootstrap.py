"""The bootstrap trainer and stage at test size: loss decreases, resume continues, the registered model loads back.

Run: `.venv/bin/python -m pytest tests/models/test_bootstrap.py -q` (about a minute on 2 cores).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from lmmops.config import (
    BootstrapConfig,
    GenerateConfig,
    MathGenConfig,
    MultimodalMathGenConfig,
    SokobanGenConfig,
    VQAGenConfig,
)
from lmmops.models.bootstrap import (
    build_processor,
    combine_losses,
    corpus_texts,
    drill_equations,
    drill_row,
    encode,
    extra_icl_items,
    extra_math_rows,
    group_losses,
    load_corpora,
    mean_group_losses,
    sample_batch,
    shared_icl_pools,
    sub_batches,
    telling_twin_answer,
    train,
)

# A test-size model and run: same code path as the default, a few seconds of training.
TINY = BootstrapConfig(
    text_hidden=32,
    text_layers=1,
    text_heads=2,
    text_kv_heads=1,
    text_intermediate=64,
    vision_hidden=16,
    vision_layers=1,
    vision_heads=1,
    vision_intermediate=32,
    steps=30,
    batch_size=8,
    lr=3e-3,
    warmup_steps=3,
    max_shots=2,
    vqa_pack=2,
    extra_reasoning_rows=0,
    arithmetic_drill_share=0.125,  # one drill row of the 8
    long_icl_rows=1,  # one 4-shot episode in place of two 2-shot ones, forwarded as a second sub-batch
    long_max_shots=4,
    checkpoint_every=10,
    log_every=5,
    eval_shots=(0, 1, 2),
    eval_repeats=1,
    eval_max_new_tokens=8,
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lmmops.data import generate_all

    root = tmp_path_factory.mktemp("bootstrap")
    cfg = GenerateConfig(
        out_dir="data",
        vqa=VQAGenConfig(train=120, val=10, test=40),
        deepscaler=MathGenConfig(train=30, test=6),
        multimodal=MultimodalMathGenConfig(multimath_train=3, multimath_test=1, geo_train=3, geo_test=1,
                                           perce_reason_train=3, perce_reason_test=1),
        sokoban=SokobanGenConfig(train=1, test=1, sizes=(6,), num_boxes=(1,)),
    )
    generate_all(cfg, root=root, progress=False)
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


def test_extra_icl_items_follow_their_tasks_on_fresh_images(data_dir: Path) -> None:
    import numpy as np

    from lmmops.data.icl_tasks import ICL_TASK_NAMES, get_icl_task
    from lmmops.data.synthetic.scenes import COLOUR_RGB, POSITION_CELL

    items, images, scenes = extra_icl_items(6, seed=0, size=32)
    assert sorted(items) == sorted(ICL_TASK_NAMES) and all(len(pool) == 6 for pool in items.values())
    flat = [it for pool in items.values() for it in pool]
    assert len({it.question_id for it in flat}) == len(flat) and all(it.question_id < 0 for it in flat)
    assert {it.image_path for it in flat} == set(images) and all(im.size == (32, 32) for im in images.values())
    for it in flat:
        task = get_icl_task(it.question_type)
        (o,) = scenes[it.image_id].objects
        assert it.multiple_choice_answer == task.answer(o.colour, o.shape, o.position), it
        pixels = np.asarray(images[it.image_path], dtype=int)
        # the object: the pixels furthest from the grey background; its colour and cell, read off the image
        far = np.abs(pixels - pixels[..., :1]).sum(-1)
        ys, xs = np.nonzero(far > 60)
        colour = min(COLOUR_RGB, key=lambda c: np.abs(pixels[ys, xs] - COLOUR_RGB[c]).sum())
        cell = (int(np.median(xs)) // 16, int(np.median(ys)) // 16)
        position = next(p for p, c in POSITION_CELL.items() if c == cell)
        assert (colour, position) == (o.colour, o.position), it  # the image is the scene's
    again, again_images, _ = extra_icl_items(6, seed=0, size=32)
    assert again == items and all(np.array_equal(np.asarray(images[p]), np.asarray(again_images[p])) for p in images)
    other, _, _ = extra_icl_items(6, seed=1, size=32)
    assert other != items  # another seed, other items

    # in the trainer they join the train split's pools, and episodes draw from both
    corpora = load_corpora(data_dir, "train")
    cfg = dataclasses.replace(TINY, steps=2, extra_icl_items=5)
    result = train(cfg, data_dir, None, progress=False)
    assert result.data_sizes["generated_icl_items"] == 45
    assert result.data_sizes["icl_items"] == sum(map(len, corpora.icl.values())) + 45
    assert result.data_sizes["describe_items"] == len(corpora.describe) + 3 * 45  # 3 questions per fresh image


def test_shared_icl_pools_answer_every_tasks_images_by_each_tasks_rule(data_dir: Path) -> None:
    import numpy as np

    from lmmops.data.icl_tasks import ICL_TASK_NAMES

    corpora = load_corpora(data_dir, "train")
    pools = shared_icl_pools(corpora.icl, corpora.scenes)
    sources = [it for pool in corpora.icl.values() for it in pool]
    assert sorted(pools) == sorted(corpora.icl) and set(pools) <= set(ICL_TASK_NAMES)
    # every task's pool holds every ICL image once: an image no longer tells its task
    for pool in pools.values():
        assert sorted(it.image_id for it in pool) == sorted(it.image_id for it in sources)
    flat = [it for pool in pools.values() for it in pool]
    assert len({it.question_id for it in flat}) == len(flat) and all(it.question_id < 0 for it in flat)
    original = {it.question_id: it for it in sources}
    assert not original.keys() & {it.question_id for it in flat}
    # hand-checked against the rules: colour/alias says crimson for red and lime for green, shape/code echo for circle
    by_image = {(it.question_type, it.image_id): it.multiple_choice_answer for it in flat}
    for it in sources:
        (o,) = corpora.scenes[it.image_id].objects
        assert by_image[("icl/colour/en", it.image_id)] == o.colour
        aliased = {"red": "crimson", "green": "lime"}.get(o.colour, o.colour)
        assert by_image[("icl/colour/alias", it.image_id)] == aliased
        assert by_image[("icl/shape/code", it.image_id)] == {"circle": "echo", "square": "foxtrot", "triangle": "golf",
                                                            "cross": "hotel"}[o.shape]
        assert by_image[(it.question_type, it.image_id)] == it.multiple_choice_answer  # its own task: as generated

    # in the trainer: shared episodes draw from these pools, and with share 0 no draw changes
    corpora.shared_icl = pools

    processor = build_processor(corpus_texts(corpora))
    enc = encode(corpora, processor, image_seq_length=4)
    task_of_image = {enc.image_index[it.image_path]: it.question_type for it in sources}

    def tasks_per_episode(rows: list) -> list[int]:
        return [len({task_of_image[i] for i in r.images}) for r in rows if r.group == "icl"]

    shared = tasks_per_episode(sample_batch(np.random.default_rng(0), corpora, enc, processor.tokenizer, TINY,
                                            shared=1.0))
    plain = sample_batch(np.random.default_rng(0), corpora, enc, processor.tokenizer, TINY)
    assert shared and max(shared) > 1  # images of several tasks in one episode
    assert set(tasks_per_episode(plain)) == {1}  # without sharing, an episode's images are its task's own
    corpora.shared_icl = {}
    assert [r.ids for r in plain] == [r.ids for r in sample_batch(np.random.default_rng(0), corpora, enc,
                                                                  processor.tokenizer, TINY)]
    for bad in (1.5, -0.5):
        with pytest.raises(ValueError, match="shared_icl_images"):
            train(dataclasses.replace(TINY, steps=1, shared_icl_images=bad), data_dir, None, progress=False)


def test_telling_twin_answer_hand_computed() -> None:
    from lmmops.data.schemas import VQAItem

    def item(task: str, answer: str) -> VQAItem:
        return VQAItem(0, 0, "What is this?", task, "other", answer, (), Path("x.png"), "test")

    # colour/alias says crimson for red, lime for green, and blue, yellow as en does.
    red = item("icl/colour/alias", "crimson")  # a red image
    assert telling_twin_answer(red, [item("icl/colour/alias", "lime")]) == "red"  # a green demo tells
    assert telling_twin_answer(red, [item("icl/colour/alias", "blue")]) is None  # fixed point: no
    assert telling_twin_answer(item("icl/colour/alias", "yellow"), [item("icl/colour/alias", "crimson")]) is None
    assert telling_twin_answer(item("icl/shape/en", "square"), [item("icl/shape/en", "circle")]) == "box"
    # position/alias: northeast for top right, southwest for bottom left
    assert telling_twin_answer(item("icl/position/en", "top right"),
                               [item("icl/position/en", "top left"), item("icl/position/en", "bottom left")]) \
        == "northeast"
    assert telling_twin_answer(item("icl/colour/code", "alpha"), [item("icl/colour/code", "bravo")]) is None
    assert telling_twin_answer(red, []) is None


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
    from lmmops.models import load_model
    from lmmops.stages import metrics_path, run_stage

    cfg = dataclasses.replace(TINY, data_dir=str(data_dir), steps=10)
    metrics = run_stage("bootstrap", cfg, root=project)
    for key in ("icl_acc_0shot", "icl_acc_2shot", "icl_chance", "reasoning_format_rate", "reasoning_accuracy",
                "params"):
        assert key in metrics
    assert metrics_path(project, "bootstrap").is_file()
    saved, _ = load_model(project / cfg.out_dir)
    registered, processor = load_model("models:/lmmops-base@champion")
    assert type(registered).__name__ == "LlavaForConditionalGeneration"
    assert processor.tokenizer.decode(processor.tokenizer("<think>1</think>")["input_ids"], skip_special_tokens=True) \
        == "<think>1</think>"
    a, b = saved.state_dict(), registered.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # ... and they are the trained weights, not a fresh initialisation.
    ckpt = next((project / cfg.checkpoint_dir).glob("*/last.pt"))
    trained = torch.load(ckpt, weights_only=False)["model"]
    assert all(torch.equal(trained[k], b[k]) for k in trained if k in b)


def test_icl_accuracy_without_near_duplicates_leaves_their_scores_out(data_dir: Path) -> None:
    """icl_acc_nodup_<k>shot: the same per-query scores without the near-duplicate queries. The scores do not
    depend on the flags, so flagging every query of some tasks must leave exactly the other tasks' scores. The
    model is an oracle that gets a prompt right when its token ids sum to an even number (about half of them,
    whatever the batch), so the accuracies are not all 0 as a barely trained model's are."""
    from types import SimpleNamespace

    import torch.nn.functional as F

    from lmmops.data.loaders import load_vqa
    from lmmops.models.bootstrap import evaluate_icl

    class ParityOracle(torch.nn.Module):
        def __init__(self, base: torch.nn.Module):
            super().__init__()
            self.base = base

        def get_base_model(self) -> torch.nn.Module:  # adapter_for reads the LLaVA behind it
            return self.base

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kw: object) -> SimpleNamespace:
            vocab = self.base.config.text_config.vocab_size
            right = (input_ids * attention_mask).sum(1) % 2 == 0
            target = torch.roll(input_ids, -1, dims=1)  # the next token: teacher forced, all right ...
            target = torch.where(right[:, None], target, (target + 1) % vocab)  # ... or all wrong
            return SimpleNamespace(logits=F.one_hot(target, vocab).float())

    result = train(dataclasses.replace(TINY, steps=1), data_dir, None, progress=False)
    model = ParityOracle(result.model)
    items = load_vqa(data_dir, "test")
    queries = [it for it in items if it.is_icl]
    kw = {"shots": (0, 2), "repeats": 1, "demo_pool": load_vqa(data_dir, "train")}
    natural = evaluate_icl(model, result.processor, items, **kw)
    assert 0 < natural["icl_acc_2shot"] < 1
    assert natural["icl_queries_nodup"] == sum(q.near_duplicate_of is None for q in queries)

    clean = [dataclasses.replace(it, near_duplicate_of=None) for it in items]
    plain = evaluate_icl(model, result.processor, clean, **kw)
    assert plain["icl_queries_nodup"] == plain["icl_queries"]
    for k in (0, 2):  # no near-duplicates (real data): both numbers are the same
        assert plain[f"icl_acc_nodup_{k}shot"] == plain[f"icl_acc_{k}shot"] == natural[f"icl_acc_{k}shot"]

    flagged = {"icl/colour/en", "icl/shape/code"}
    marked = [dataclasses.replace(it, near_duplicate_of=0) if it.question_type in flagged else it for it in clean]
    out = evaluate_icl(model, result.processor, marked, **kw)
    count = {t: sum(q.question_type == t for q in queries) for t in {q.question_type for q in queries}}
    others = [t for t in count if t not in flagged]
    assert all(count.get(t) for t in flagged) and others
    for k in (0, 2):
        assert out[f"icl_acc_{k}shot"] == plain[f"icl_acc_{k}shot"]
        expected = sum(plain[f"icl_acc_{k}shot/{t.removeprefix('icl/')}"] * count[t] for t in others) / sum(
            count[t] for t in others)
        assert out[f"icl_acc_nodup_{k}shot"] == pytest.approx(expected)
        for t in count:
            key = f"icl_acc_nodup_{k}shot/{t.removeprefix('icl/')}"
            assert (key in out) == (t not in flagged)
            if t not in flagged:
                assert out[key] == plain[key]
