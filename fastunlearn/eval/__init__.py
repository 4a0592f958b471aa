"""Evaluation: classifier-judged generation metrics and image grids for reports.

Submodules are imported directly (``from fastunlearn.eval.classifier import generation_accuracy``)
so that loading one metric does not pull in the dependencies of all the others.
"""
