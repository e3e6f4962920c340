"""Reinforcement learning for LMM-R1 (docs/methods.md §8): the Sokoban environment, and (later) rollouts,
advantages, PPO/GRPO losses and the two-stage trainer.

Modules: `sokoban` (the gymnasium environment). The rewards are the shared scorers of `lmmops.eval`
(`scoring`: format, accuracy and total; `sokoban`: the Sokoban rules and reward).
"""
