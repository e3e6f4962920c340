"""The synthetic generators, one module per family: vqa (with scenes and draw), deepscaler, diagrams
(MultiMath and VerMulti) and sokoban, plus io (deterministic writers).

`lmmops.data.generate.generate_all` runs them all and writes the data directory atomically. This package
imports nothing on purpose, so that `lmmops.data.icl_tasks` can use the scene renderer without pulling
in the generators.
"""
