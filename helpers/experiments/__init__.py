"""Experiments on the training functions: cross-validation (`cv`), a final held-out test
(`heldout`), the one-difference-at-a-time ablation (`ablation`), the paired statistics that
compare methods (`compare`), their figures (`plots`), the one check of every parameter
(`params`) and the results folders they all write (`store`). Their command lines are in
helpers.tooling (`run_ablation`, `run_heldout`)."""
