"""Ensemble vs compute-matched dense: the shared pipeline stages (`pipeline`), the scaling study over budgets
(`scaling`), and its study.md / study.png (`report`). The quickstart is one point of it."""
