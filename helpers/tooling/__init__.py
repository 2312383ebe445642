"""Tooling around the teaching code, not part of what the notebooks teach: the generators of the
README's results and notebook index (report, notebook_index, with the Setup cells' install
block), the speed measurements and their op profile (speed, profiling, benchmark_args), the
command lines that run the long experiments (run_ablation, run_heldout) and train on several
devices or worker processes (launcher), and the loopback-only network for those workers
(private_network). It may import the teaching core and `helpers.notebook`; neither imports it."""
