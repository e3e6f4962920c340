"""Tests for lmmops.rl.algorithms: advantages, KL estimators and PPO losses against hand-computed values.

Every case uses B=4 rows (2 prompts x G=2 unless said otherwise), T=3 tokens, and MASK below, whose rows have
3, 2, 1 and 3 valid tokens. Padded inputs are set to junk (9, 1e6, inf) to show they cannot leak.

Run: .venv/bin/python -m pytest tests/rl/test_algorithms.py -q
"""

from __future__ import annotations

import math

import pytest
import torch

from lmmops.rl.algorithms import (
    gae,
    group_advantages,
    grpo_advantages,
    kl_estimate,
    ppo_policy_loss,
    reinforce_pp_baseline_advantages,
    value_loss,
)

MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
PAD = MASK == 0
REWARDS = torch.tensor([1.0, 0.0, 3.0, 1.0])  # groups [1, 0] and [3, 1]


def close(actual: torch.Tensor, expected: list, atol: float = 1e-5) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


def with_padding(x: torch.Tensor, value: float) -> torch.Tensor:
    return torch.where(PAD, torch.full_like(x, value), x)


# --------------------------------------------------------------------------------------------------
# Group advantages: GRPO, Dr.GRPO, RLOO


def test_grpo_uses_unbiased_group_std() -> None:
    # G=2: group [1, 0]: mean 0.5, unbiased std sqrt((0.25 + 0.25) / 1) = 0.7071 -> ±0.5 / 0.7071 = ±0.7071;
    # group [3, 1]: mean 2, std sqrt(2) -> ±1 / 1.4142 = ±0.7071.
    close(grpo_advantages(REWARDS, 2, eps=0.0), [0.707107, -0.707107, 0.707107, -0.707107])
    # Default eps=1e-6: 0.5 / (0.70710678 + 1e-6) = 0.70710578.
    close(grpo_advantages(REWARDS, 2), [0.707106, -0.707106, 0.707106, -0.707106], atol=1e-6)
    # G=4: [3, 1, 0, 0], mean 1, deviations [2, 0, -1, -1], unbiased var 6 / 3 = 2 (the biased 1.5 would give 1.633).
    close(grpo_advantages(torch.tensor([3.0, 1.0, 0.0, 0.0]), 4, eps=0.0), [1.414214, 0.0, -0.707107, -0.707107])


def test_dr_grpo_and_rloo() -> None:
    # Dr.GRPO: r - group mean = [1 - 0.5, 0 - 0.5, 3 - 2, 1 - 2].
    close(group_advantages(REWARDS, 2, estimator="dr_grpo"), [0.5, -0.5, 1.0, -1.0])
    # RLOO: r_i minus the other reward of its pair: [1 - 0, 0 - 1, 3 - 1, 1 - 3].
    close(group_advantages(REWARDS, 2, estimator="rloo"), [1.0, -1.0, 2.0, -2.0])
    # G=4 RLOO on [3, 1, 0, 0]: 3 - 1/3, 1 - 3/3, 0 - 4/3, 0 - 4/3.
    close(group_advantages(torch.tensor([3.0, 1.0, 0.0, 0.0]), 4, estimator="rloo"),
          [2.666667, 0.0, -1.333333, -1.333333])
    # The default estimator is GRPO.
    close(group_advantages(REWARDS, 2), grpo_advantages(REWARDS, 2).tolist())


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo"])
def test_equal_reward_groups_give_exactly_zero(estimator: str) -> None:
    # 0.1 and 0.7 are not exact in float32, so the group mean may differ from them by rounding.
    equal = torch.tensor([0.1, 0.1, 0.7, 0.7, 0.3, 0.3])
    assert torch.equal(group_advantages(equal, 2, estimator=estimator), torch.zeros(6))
    assert torch.equal(group_advantages(torch.full((6,), 0.1), 3, estimator=estimator), torch.zeros(6))
    # One equal group next to a mixed one: only the equal group is zeroed.
    mixed = group_advantages(torch.tensor([0.1, 0.1, 1.0, 0.0]), 2, estimator=estimator)
    assert torch.equal(mixed[:2], torch.zeros(2)) and torch.all(mixed[2:] != 0)


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo"])
def test_group_size_one_gives_zero_not_nan(estimator: str) -> None:
    assert torch.equal(group_advantages(torch.tensor([1.0, 0.0, 5.0]), 1, estimator=estimator), torch.zeros(3))


def test_group_advantages_reject_bad_arguments() -> None:
    with pytest.raises(ValueError, match="divisible"):
        grpo_advantages(torch.ones(5), 2)
    with pytest.raises(ValueError, match="grpo, dr_grpo, rloo"):
        group_advantages(REWARDS, 2, estimator="ppo")


# --------------------------------------------------------------------------------------------------
# REINFORCE++-baseline

KL_PENALTY = torch.tensor([[0.1, 0.1, 0.1], [0.2, 0.0, 9.0], [0.0, 9.0, 9.0], [0.1, 0.2, 0.3]])


def test_reinforce_pp_baseline_hand_computed() -> None:
    # r' = r - group mean = [0.5, -0.5, 1, -1] (within clip 10). Token rewards = -kl, plus r' on the last valid token:
    #   row0 [-0.1, -0.1, -0.1 + 0.5] -> return-to-go [0.2, 0.3, 0.4]
    #   row1 [-0.2, -0.0 - 0.5]       -> [-0.7, -0.5]
    #   row2 [0.0 + 1.0]              -> [1.0]
    #   row3 [-0.1, -0.2, -0.3 - 1.0] -> [-1.6, -1.5, -1.3]
    # Over the 9 valid tokens: mean -3.7 / 9 = -0.411111, biased var 7.008889 / 9 = 0.778765, std 0.882477;
    # e.g. (0.2 + 0.411111) / 0.882477 = 0.692495.
    adv = reinforce_pp_baseline_advantages(REWARDS, 2, KL_PENALTY, MASK)
    close(adv, [[0.692495, 0.805813, 0.919130], [-0.327361, -0.100727, 0.0], [1.599035, 0.0, 0.0],
                [-1.347218, -1.233901, -1.007266]])


def test_reinforce_pp_baseline_clips_the_shaped_reward() -> None:
    # clip=0.75: r' = [0.5, -0.5, 0.75, -0.75]; returns row2 [0.75], row3 [-1.35, -1.25, -1.05], rows 0-1 as above.
    # Mean -3.2 / 9 = -0.355556, biased var 4.942222 / 9 = 0.549136, std 0.741037.
    adv = reinforce_pp_baseline_advantages(REWARDS, 2, KL_PENALTY, MASK, clip=0.75)
    close(adv, [[0.749700, 0.884646, 1.019592], [-0.464814, -0.194922, 0.0], [1.491903, 0.0, 0.0],
                [-1.341963, -1.207017, -0.937125]])


def test_reinforce_pp_baseline_ignores_padding() -> None:
    reference = reinforce_pp_baseline_advantages(REWARDS, 2, KL_PENALTY, MASK)
    for junk in (-1e6, math.inf):
        adv = reinforce_pp_baseline_advantages(REWARDS, 2, with_padding(KL_PENALTY, junk), MASK)
        assert torch.equal(adv, reference)
        assert torch.equal(adv[PAD], torch.zeros(int(PAD.sum())))


def test_reinforce_pp_baseline_equal_rewards_and_no_kl_is_zero() -> None:
    adv = reinforce_pp_baseline_advantages(torch.full((4,), 0.3), 2, torch.zeros(4, 3), MASK)
    assert torch.equal(adv, torch.zeros(4, 3))


# --------------------------------------------------------------------------------------------------
# GAE

TOKEN_REWARDS = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.5, 7.0], [2.0, 7.0, 7.0], [0.0, 0.0, 0.0]])
VALUES = torch.tensor([[0.5, 0.6, 0.7], [0.2, 0.3, 5.0], [1.0, 5.0, 5.0], [0.1, 0.2, 0.3]])


def test_gae_gamma_lambda_one_is_return_to_go_minus_value() -> None:
    # gamma = lam = 1 telescopes: A_t = sum_{k>=t} r_k - V_t, returns = sum_{k>=t} r_k (no bootstrap past the end).
    # row0: returns [1, 1, 1], A = [1 - 0.5, 1 - 0.6, 1 - 0.7]; row1: returns [0.5, 0.5], A = [0.3, 0.2];
    # row2: returns [2], A = [1]; row3: returns [0, 0, 0], A = [-0.1, -0.2, -0.3].
    adv, ret = gae(TOKEN_REWARDS, VALUES, MASK)
    close(adv, [[0.5, 0.4, 0.3], [0.3, 0.2, 0.0], [1.0, 0.0, 0.0], [-0.1, -0.2, -0.3]])
    close(ret, [[1.0, 1.0, 1.0], [0.5, 0.5, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])


def test_gae_discounted() -> None:
    # gamma 0.9, lam 0.5 (gamma * lam = 0.45); delta_t = r_t + 0.9 V_{t+1} - V_t with V after the last valid = 0.
    # row0: d2 = 1 - 0.7 = 0.3, A2 = 0.3; d1 = 0.63 - 0.6 = 0.03, A1 = 0.03 + 0.45 * 0.3 = 0.165;
    #       d0 = 0.54 - 0.5 = 0.04, A0 = 0.04 + 0.45 * 0.165 = 0.11425; returns A + V = [0.61425, 0.765, 1.0].
    # row1: d1 = 0.5 - 0.3 = 0.2, A1 = 0.2; d0 = 0.27 - 0.2 = 0.07, A0 = 0.07 + 0.09 = 0.16; returns [0.36, 0.5].
    # row2: A0 = 2 - 1 = 1, returns [2].
    # row3: A2 = -0.3; d1 = 0.27 - 0.2 = 0.07, A1 = 0.07 - 0.135 = -0.065;
    #       d0 = 0.18 - 0.1 = 0.08, A0 = 0.08 - 0.02925 = 0.05075; returns [0.15075, 0.135, 0.0].
    adv, ret = gae(TOKEN_REWARDS, VALUES, MASK, gamma=0.9, lam=0.5)
    close(adv, [[0.11425, 0.165, 0.3], [0.16, 0.2, 0.0], [1.0, 0.0, 0.0], [0.05075, -0.065, -0.3]])
    close(ret, [[0.61425, 0.765, 1.0], [0.36, 0.5, 0.0], [2.0, 0.0, 0.0], [0.15075, 0.135, 0.0]])


def test_gae_ignores_padding() -> None:
    reference = gae(TOKEN_REWARDS, VALUES, MASK, gamma=0.9, lam=0.5)
    for junk in (1e6, math.inf):
        adv, ret = gae(with_padding(TOKEN_REWARDS, junk), with_padding(VALUES, -junk), MASK, gamma=0.9, lam=0.5)
        assert torch.equal(adv, reference[0]) and torch.equal(ret, reference[1])
        assert torch.equal(adv[PAD], torch.zeros(int(PAD.sum()))) and torch.equal(ret[PAD], adv[PAD])


def test_gae_skips_a_masked_token_inside_a_row() -> None:
    # [r0, masked, r2] gives the same advantages on the valid tokens as the two-token row [r0, r2].
    adv, _ = gae(torch.tensor([[0.0, 5.0, 1.0]]), torch.tensor([[0.5, 9.0, 0.7]]), torch.tensor([[1.0, 0.0, 1.0]]),
                 gamma=0.9, lam=0.5)
    compact, _ = gae(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 0.7]]), torch.ones(1, 2), gamma=0.9, lam=0.5)
    # d1 = 1 - 0.7 = 0.3; d0 = 0.63 - 0.5 = 0.13, A0 = 0.13 + 0.45 * 0.3 = 0.265.
    close(adv, [[0.265, 0.0, 0.3]])
    close(compact, [[0.265, 0.3]])


# --------------------------------------------------------------------------------------------------
# KL estimators


def test_kl_estimators_hand_computed() -> None:
    logp = torch.tensor([[-1.0, -2.0, -0.3]])
    logp_ref = torch.tensor([[-1.5, -1.0, -0.3]])
    # logp - logp_ref = [0.5, -1.0, 0]
    close(kl_estimate(logp, logp_ref, "k1"), [[0.5, -1.0, 0.0]])
    close(kl_estimate(logp, logp_ref, "k2"), [[0.125, 0.5, 0.0]])  # half the squares
    # k3 with x = logp_ref - logp = [-0.5, 1, 0]: e^-0.5 + 0.5 - 1 = 0.106531; e - 1 - 1 = 0.718282; 1 - 0 - 1 = 0.
    close(kl_estimate(logp, logp_ref, "k3"), [[0.106531, 0.718282, 0.0]])


def test_kl_unknown_kind_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_estimate(torch.zeros(1, 1), torch.zeros(1, 1), "k4")


# --------------------------------------------------------------------------------------------------
# PPO policy loss

# Ratios exp(logp - logp_old) with logp_old = 0; padded logp is junk.
RATIOS = torch.tensor([[1.5, 1.0, 0.5], [1.5, 0.5, 1.0], [1.1, 1.0, 1.0], [1.5, 1.5, 1.5]])
SEQ_ADVANTAGES = torch.tensor([1.0, -1.0, 2.0, 0.0])


def policy_loss(logp: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    return ppo_policy_loss(logp, torch.zeros(4, 3), SEQ_ADVANTAGES, MASK, **kwargs)


def test_ppo_loss_and_clip_fraction_hand_computed() -> None:
    # Per token -min(ratio A, clip(ratio, 0.8, 1.2) A):
    #   row0 A=+1: ratios [1.5, 1.0, 0.5] -> min([1.5, 1, 0.5], [1.2, 1, 0.8]) = [1.2, 1, 0.5]; clipped: token 0 only
    #   row1 A=-1: ratios [1.5, 0.5]      -> min([-1.5, -0.5], [-1.2, -0.8]) = [-1.5, -0.8]; clipped: token 1 only
    #   row2 A=+2: ratio 1.1 inside the range -> 2.2, not clipped
    #   row3 A=0: every term 0, not clipped (0 < 0 is false)
    # Token losses: [-1.2, -1, -0.5], [1.5, 0.8], [-2.2], [0, 0, 0]; sum -2.6 over 9 valid tokens.
    loss, clip_fraction = policy_loss(RATIOS.log())
    close(loss, -2.6 / 9)
    close(clip_fraction, 2 / 9)
    # "sequence": row means [-2.7 / 3, 2.3 / 2, -2.2, 0] = [-0.9, 1.15, -2.2, 0], mean -1.95 / 4 = -0.4875.
    loss, _ = policy_loss(RATIOS.log(), agg="sequence")
    close(loss, -0.4875)


def test_ppo_clip_higher() -> None:
    # eps_high 0.28: row0 token 0 clips at 1.28 instead of 1.2 -> sum -2.6 - 0.08 = -2.68; still clipped (1.28 < 1.5).
    loss, clip_fraction = policy_loss(RATIOS.log(), eps_high=0.28)
    close(loss, -2.68 / 9)
    close(clip_fraction, 2 / 9)
    # eps_low 0.6: row1 token 1 (ratio 0.5, A=-1) is no longer clipped: -min(-0.5, -0.5) = 0.5, sum -2.6 - 0.3.
    loss, clip_fraction = policy_loss(RATIOS.log(), eps_low=0.6)
    close(loss, -2.9 / 9)
    close(clip_fraction, 1 / 9)


def test_ppo_token_advantages_match_broadcast_ones() -> None:
    per_token = SEQ_ADVANTAGES[:, None].expand(4, 3).clone()
    per_token[PAD] = 1e6  # junk advantages at padding
    loss, clip_fraction = ppo_policy_loss(RATIOS.log(), torch.zeros(4, 3), per_token, MASK)
    close(loss, -2.6 / 9)
    close(clip_fraction, 2 / 9)


def test_ppo_ignores_padding_and_gives_it_no_gradient() -> None:
    logp = with_padding(RATIOS.log(), math.inf).requires_grad_()
    loss, clip_fraction = ppo_policy_loss(logp, with_padding(torch.zeros(4, 3), -math.inf), SEQ_ADVANTAGES, MASK)
    close(loss.detach(), -2.6 / 9)
    close(clip_fraction, 2 / 9)
    loss.backward()
    # d loss / d logp = -A * ratio / 9 where the unclipped term is taken, 0 where the clip is taken or at padding:
    # row0 [clipped, -1 / 9, -0.5 / 9]; row1 [1.5 / 9, clipped]; row2 [-2.2 / 9]; row3 A = 0.
    close(logp.grad, [[0.0, -0.111111, -0.055556], [0.166667, 0.0, 0.0], [-0.244444, 0.0, 0.0], [0.0, 0.0, 0.0]])


def test_ppo_rows_without_valid_tokens_give_no_nan() -> None:
    mask = MASK.clone()
    mask[1] = 0.0
    for agg in ("token", "sequence"):
        loss, clip_fraction = ppo_policy_loss(RATIOS.log(), torch.zeros(4, 3), SEQ_ADVANTAGES, mask, agg=agg)
        assert torch.isfinite(loss) and torch.isfinite(clip_fraction)
        empty_loss, empty_fraction = ppo_policy_loss(RATIOS.log(), torch.zeros(4, 3), SEQ_ADVANTAGES,
                                                     torch.zeros(4, 3), agg=agg)
        assert empty_loss.item() == 0.0 and empty_fraction.item() == 0.0
    # Token agg without row1 (losses 1.5 + 0.8): sum -2.6 - 2.3 = -4.9 over 7 tokens.
    close(ppo_policy_loss(RATIOS.log(), torch.zeros(4, 3), SEQ_ADVANTAGES, mask)[0], -4.9 / 7)
    with pytest.raises(ValueError, match="token, sequence"):
        policy_loss(RATIOS.log(), agg="batch")


# --------------------------------------------------------------------------------------------------
# Value loss

V = torch.tensor([[1.0, 0.5, 0.0], [2.0, 0.0, 9.0], [0.3, 9.0, 9.0], [0.0, 0.0, 0.0]])
V_OLD = torch.tensor([[0.5, 0.5, 0.1], [1.0, 0.0, 9.0], [0.0, 9.0, 9.0], [0.0, 0.0, 0.0]])
RETURNS = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 9.0], [1.0, 9.0, 9.0], [0.2, 0.4, 0.0]])


def test_value_loss_hand_computed() -> None:
    # 0.5 * max((V - R)^2, (V_clip - R)^2), V_clip = V_old + clamp(V - V_old, -0.2, 0.2):
    #   row0 t0: V 1 -> V_clip 0.7: max(0, 0.09) -> 0.045 (clip active: the clipped error is larger)
    #        t1: V = V_old: 0.5 * 0.25 = 0.125;  t2: V - V_old = -0.1 inside the range: 0.5 * 1 = 0.5
    #   row1 t0: V 2 -> V_clip 1.2: max(4, 1.44) -> 2.0 (clip inactive: the unclipped error is larger);  t1: 0
    #   row2 t0: V 0.3 -> V_clip 0.2: max(0.49, 0.64) -> 0.32 (clip active)
    #   row3: 0.5 * [0.04, 0.16, 0] = [0.02, 0.08, 0]
    # Sum 3.09 over 9 valid tokens.
    close(value_loss(V, V_OLD, RETURNS, MASK), 3.09 / 9)
    # With a clip too wide to act, plain 0.5 (V - R)^2: row0 t0 -> 0, row2 -> 0.245; sum 3.09 - 0.045 - 0.075 = 2.97.
    close(value_loss(V, V_OLD, RETURNS, MASK, clip=100.0), 2.97 / 9)


def test_value_loss_ignores_padding() -> None:
    loss = value_loss(with_padding(V, math.inf), with_padding(V_OLD, -1e6), with_padding(RETURNS, math.nan), MASK)
    close(loss, 3.09 / 9)
