"""Experiment runner: train several models x seeds with one recipe and tabulate the results (``plugattn compare``).

:func:`~plugattn.experiments.compare.compare` drives the training engine (:func:`plugattn.engine.train`) for every
(model, seed) run and measures each model with the analysis tools (:func:`plugattn.analysis.benchmark`, the plots).
"""
from .compare import CompareResult, compare, format_markdown, read_run_result, run_status

__all__ = ['CompareResult', 'compare', 'format_markdown', 'read_run_result', 'run_status']
