"""The minimal GRPO loop on a tiny LLaVA: log-probabilities of the update are those of the sampled tokens, a batch
without reward spread changes nothing, and multimodal prompts roll out and train."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from lmmops.models import build_tiny
from lmmops.rl.grpo import GrpoConfig, RLItem, completion_logprobs, grpo_step, rewards_of, train_grpo


def _image(colour: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (32, 32), colour)


def test_completion_logprobs_are_the_next_token_logprobs_of_each_sequence():
    model, processor = build_tiny("llava")
    tok = processor.tokenizer
    prompt = dict(tok(["add 2 and 3", "hello"], padding=True, padding_side="left", return_tensors="pt"))
    completions = torch.tensor([[5, 6, 7], [8, 9, tok.pad_token_id]] * 1).repeat_interleave(2, 0)  # G = 2
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0]]).repeat_interleave(2, 0)
    logp = completion_logprobs(model, prompt, completions, mask, group_size=2)
    assert logp.shape == (4, 3)
    # row 2 = prompt 1's first sample: its own forward, without padding, gives the same numbers
    ids = tok(["hello"], return_tensors="pt")["input_ids"]
    full = torch.cat([ids, completions[2:3, :2]], dim=1)
    ref = torch.log_softmax(model(input_ids=full).logits[0, ids.shape[1] - 1 : -1].float(), -1)
    assert torch.allclose(logp[2, :2], ref.gather(-1, completions[2, :2, None]).squeeze(-1), atol=1e-5)


def test_rewards_are_half_format_plus_accuracy():
    completions = ["<think>x</think><answer>$\\boxed{5}$</answer>", "5", "<think>x</think><answer>4</answer>"]
    total, fmt, acc = rewards_of(completions, ["5", "5", "5"])
    assert fmt.tolist() == [1.0, 0.0, 1.0] and acc.tolist() == [1.0, 1.0, 0.0]
    assert total.tolist() == [1.5, 1.0, 0.5]


def test_no_reward_spread_means_no_update_and_multimodal_prompts_train():
    model, processor = build_tiny("llava")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # an answer no completion of 4 tokens can verify: every reward 0, every advantage 0, Adam moves nothing
    items = [RLItem("<image>what colour ?", _image((200, 0, 0)), "123456789"),
             RLItem("<image>what colour ?", _image((0, 0, 200)), "123456789")]
    cfg = GrpoConfig(prompts_per_step=2, group_size=3, max_new_tokens=4, lr=1e-2)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    torch.manual_seed(0)
    stats = grpo_step(model, processor, optimizer, items, cfg)
    assert stats["reward"] == 0.0 and stats["groups_with_spread"] == 0.0 and stats["loss"] == 0.0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # the loop: two steps within its step limit, finite statistics
    history = train_grpo(model, processor, items, GrpoConfig(prompts_per_step=2, group_size=3, max_new_tokens=4,
                                                             max_steps=2, seconds=60), rng=np.random.default_rng(0))
    assert len(history) == 2 and all(np.isfinite(h["loss"]) for h in history)
