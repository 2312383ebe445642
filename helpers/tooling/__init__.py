"""Tooling around the teaching code, not part of what the notebooks teach: the generators of the
README's results and notebook index (report, notebook_index, with the Setup cells' install
block), the installed-version check (environment), the quieting of TensorFlow's start-up log
(quiet_tensorflow), the speed measurements and their op profile (speed, profiling,
benchmark_args) and the loopback-only network for the worker processes (private_network). The
teaching code itself (data, the CNN, fit and the tape loops, cross-validation, the comparisons)
is in the top-level modules of `helpers`."""
