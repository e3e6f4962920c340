"""Evaluation: metrics (VQA accuracy, ...) and ICL analyses (copy rate, ...). Pure functions."""
