"""Evaluation: the shapes judge, reconstruction and distribution metrics, reports."""
