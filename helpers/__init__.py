"""Reusable code for the notebooks: data, the article's CNN, training loops, cross-validation,
parameter checks and plots."""

__version__ = "0.1.0"
