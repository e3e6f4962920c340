"""The RL maths of the LMM-R1 trainer (docs/methods.md §8): advantages, KL estimators and the PPO losses.

    adv = grpo_advantages(rewards, group_size=8)                      # [B], B = prompts x G
    loss, clip_frac = ppo_policy_loss(logp, logp_old, adv, mask)      # adv [B] or [B, T]

Conventions: float tensors; B = prompts x G with each prompt's G completions in consecutive rows; T completion
tokens; `mask` is 1.0 on valid completion tokens and 0.0 on padding. Pure torch, no state.

Tests: `.venv/bin/python -m pytest tests/rl/test_algorithms.py -q`.

Where this departs from the references (TRL, verl, OpenRLHF):
- A group whose rewards are all equal gets exactly 0 advantage (the references give 0 up to rounding of the mean);
  G=1 gives 0 for every estimator (the unbiased std of one sample is NaN in torch, and RLOO has no other sample).
- Padding is selected away with `torch.where`, not multiplied by the mask, so a non-finite value at a padded
  position (e.g. -inf log-probabilities) cannot turn the output or the gradient into NaN.
- Sums over no valid token divide by max(count, 1), so an empty row or batch gives 0, never NaN.
"""

from __future__ import annotations

import torch

ESTIMATORS = ("grpo", "dr_grpo", "rloo")
KL_KINDS = ("k1", "k2", "k3")
AGGREGATIONS = ("token", "sequence")


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if rewards.dim() != 1 or group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be 1-D with a length divisible by group_size={group_size}, "
                         f"got shape {tuple(rewards.shape)}")
    return rewards.view(-1, group_size)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    valid = mask > 0
    total = torch.where(valid, x, torch.zeros_like(x))
    if dim is None:
        return total.sum() / valid.sum().clamp(min=1)
    return total.sum(dim) / valid.sum(dim).clamp(min=1)


def group_advantages(rewards: torch.Tensor, group_size: int, estimator: str = "grpo",
                     eps: float = 1e-6) -> torch.Tensor:
    """One advantage per completion [B] from its group's rewards.

    - "grpo": (r - group mean) / (group std + eps), unbiased std, as TRL's GRPOTrainer and verl's
      `core_algos.compute_grpo_outcome_advantage` (Shao et al. 2024, DeepSeekMath).
    - "dr_grpo": r - group mean, no std division (Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical
      Perspective"; verl's `norm_adv_by_std_in_grpo=False`, TRL's `scale_rewards=False`).
    - "rloo": r_i - mean of the other G-1 rewards of the group = G/(G-1) * (r_i - group mean)
      (Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization ...").

    A group whose rewards are all equal gets exactly 0 (never NaN); so does every row when G=1.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; allowed: {', '.join(ESTIMATORS)}")
    grouped = _grouped(rewards, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if estimator == "grpo":
        adv = centred / (grouped.std(dim=1, keepdim=True) + eps) if group_size > 1 else centred
    elif estimator == "rloo":
        adv = centred * (group_size / (group_size - 1)) if group_size > 1 else centred
    else:
        adv = centred
    # Equal rewards carry no signal; forcing 0 also removes the rounding residue of the mean and G=1's NaN std.
    constant = (grouped.amax(dim=1, keepdim=True) == grouped.amin(dim=1, keepdim=True))
    return torch.where(constant, torch.zeros_like(adv), adv).reshape(-1)


def grpo_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """GRPO advantages [B]: (r - group mean) / (group std + eps), unbiased std, as TRL's GRPOTrainer and verl's
    `core_algos.compute_grpo_outcome_advantage`. Equal-reward groups and G=1 give 0; see `group_advantages`."""
    return group_advantages(rewards, group_size, estimator="grpo", eps=eps)


def reinforce_pp_baseline_advantages(rewards: torch.Tensor, group_size: int, kl_penalty: torch.Tensor,
                                     mask: torch.Tensor, clip: float = 10.0) -> torch.Tensor:
    """REINFORCE++-baseline token advantages [B, T], as OpenRLHF's `reinforce_baseline` estimator (Hu 2025,
    "REINFORCE++: A Simple and Efficient Approach for Aligning Large Language Models").

    r' = clip(r - group mean, -clip, clip); token rewards are -kl_penalty on every valid token (kl_penalty is the
    already-scaled beta * KL) plus r' on the last valid token; the return-to-go with gamma 1 is whitened over all
    valid tokens of the batch: (x - mean) / sqrt(max(var, 1e-8)) with the biased variance. Padding gives 0.
    """
    grouped = _grouped(rewards, group_size)
    shaped = (grouped - grouped.mean(dim=1, keepdim=True)).clamp(-clip, clip).reshape(-1)
    valid = mask > 0
    token_rewards = torch.where(valid, -kl_penalty, torch.zeros_like(kl_penalty))
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last_valid = torch.where(valid, positions, -1).amax(dim=1, keepdim=True)
    token_rewards = token_rewards + torch.where(positions == last_valid, shaped[:, None], 0.0)
    returns = token_rewards.flip(1).cumsum(1).flip(1)
    mean = _masked_mean(returns, mask)
    var = _masked_mean((returns - mean) ** 2, mask)
    whitened = (returns - mean) / var.clamp(min=1e-8).sqrt()
    return torch.where(valid, whitened, torch.zeros_like(whitened))


def gae(token_rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, "High-Dimensional Continuous Control Using GAE"),
    as verl's `core_algos.compute_gae_advantage_return`: delta_t = r_t + gamma V_{t+1} - V_t,
    A_t = delta_t + gamma lam A_{t+1}, returns = A + V.

    Nothing is bootstrapped past the last valid token (the value after it is 0); a padded position is skipped, so
    V_{t+1} and A_{t+1} are those of the next valid token. Returns (advantages, returns), both 0 at padding.
    """
    valid = mask > 0
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    advantages = []
    for t in reversed(range(values.shape[1])):
        delta = token_rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        next_value = torch.where(valid[:, t], values[:, t], next_value)
        next_advantage = torch.where(valid[:, t], advantage, next_advantage)
        advantages.append(advantage)
    adv = torch.stack(advantages[::-1], dim=1)
    zeros = torch.zeros_like(adv)
    return torch.where(valid, adv, zeros), torch.where(valid, adv + values, zeros)


def kl_estimate(logp: torch.Tensor, logp_ref: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi (Schulman 2020, "Approximating KL Divergence"):
    "k1" = logp - logp_ref; "k2" = (logp - logp_ref)^2 / 2; "k3" = exp(logp_ref - logp) - (logp_ref - logp) - 1
    (unbiased and non-negative; GRPO's KL term)."""
    log_ratio = logp - logp_ref
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        return torch.exp(-log_ratio) + log_ratio - 1
    raise ValueError(f"unknown KL estimator {kind!r}; allowed: {', '.join(KL_KINDS)}")


def ppo_policy_loss(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                    eps_low: float = 0.2, eps_high: float = 0.2,
                    agg: str = "token") -> tuple[torch.Tensor, torch.Tensor]:
    """PPO clipped surrogate (Schulman et al. 2017, "Proximal Policy Optimization Algorithms") with DAPO's
    decoupled clip range (Yu et al. 2025, clip-higher): per token -min(ratio A, clip(ratio, 1-eps_low, 1+eps_high) A),
    ratio = exp(logp - logp_old). `advantages` is [B] (one per sequence, broadcast over tokens) or [B, T].

    agg "token": mean over all valid tokens of the batch (DAPO, TRL's "dapo"/"bnpo"); "sequence": mean over the B
    rows of each row's valid-token mean (GRPO paper, TRL's "grpo"; a row without valid tokens counts as 0).
    Returns (loss, clip_fraction): clip_fraction, detached, is the share of valid tokens where the clipped objective
    clip(ratio) A is strictly less than the unclipped ratio A, i.e. where the clip is the term taken and the gradient
    is cut. Padding gets no gradient.
    """
    if agg not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {agg!r}; allowed: {', '.join(AGGREGATIONS)}")
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    valid = mask > 0
    # Zeroing the log-ratio before exp keeps padded -inf/+inf out of both the loss and its gradient.
    log_ratio = torch.where(valid, logp - logp_old, torch.zeros_like(logp))
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high) * advantages
    per_token = -torch.minimum(unclipped, clipped)
    loss = _masked_mean(per_token, mask) if agg == "token" else _masked_mean(per_token, mask, dim=1).mean()
    clip_fraction = _masked_mean((clipped < unclipped).to(logp.dtype), mask).detach()
    return loss, clip_fraction


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float = 0.2) -> torch.Tensor:
    """Clipped value loss of PPO as in OpenRLHF's `ValueLoss` and verl's `compute_value_loss`:
    0.5 * max((V - R)^2, (clip(V, V_old - clip, V_old + clip) - R)^2), mean over valid tokens."""
    clipped_values = old_values + (values - old_values).clamp(-clip, clip)
    per_token = 0.5 * torch.maximum((values - returns) ** 2, (clipped_values - returns) ** 2)
    return _masked_mean(per_token, mask)
