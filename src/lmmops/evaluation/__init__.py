"""Model-driving evaluations: the evaluations of record that run a model (the scorers they use are pure
functions in `lmmops.eval`).

- `icl`: k-shot ICL accuracy by teacher forcing (`evaluate_icl`), its chance level and the twin-task rate.
- `reasoning`: greedy completions of reasoning prompts scored for format and accuracy (`evaluate_reasoning`).

Layer: above `lmmops.models` (beside `lmmops.icl`); used by the bootstrap stage and by later stages.
Run: `.venv/bin/python -m pytest tests/evaluation -q`.
"""
