"""Reusable code for the notebooks: data, the article's CNN, training loops, cross-validation,
parameter checks and plots. The tooling (generated README parts, the installed-version check,
benchmarks) is in the subpackage `helpers.tooling`."""

__version__ = "0.1.0"
