"""The code the notebooks import, in layers that only import downwards:

- the teaching core: `data`, `model`, `differences`, `compat`, `training` (fit, the tape loops,
  custom steps, checkpoints, tf.distribute) and `experiments` (cross-validation, the held-out
  test, the ablation, the statistics, figures and parameter checks);
- `notebook`: what a Setup cell needs (the installed-version check, a quiet TensorFlow import);
- `tooling`: generated README parts and notebook index, benchmarks, worker launchers;
- `doctor`: checks a reader's own training step or loop against fit (on top of the core, which
  never imports it).
"""

__version__ = "0.1.0"
