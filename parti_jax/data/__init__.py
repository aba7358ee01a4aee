"""Datasets: the built-in synthetic "shapes" dataset and its helpers."""
