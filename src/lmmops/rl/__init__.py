"""Reinforcement learning for LMM-R1 (PAPERS.md section 5): rule-based rewards, the Sokoban environment,
and (later) rollouts, advantages, PPO/GRPO losses and the two-stage trainer.

Modules: `rewards` (format, accuracy and total rewards; safe math verification), `sokoban` (levels,
generator, solver, renderer, gymnasium environment, Sokoban reward).
"""
