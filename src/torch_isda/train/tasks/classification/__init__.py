"""Supervised classification (Algorithm 1): the task (:mod:`.task`) and its comparison
tables (:mod:`.tables`); its defaults are the paper's presets (:mod:`torch_isda.train.presets`,
``apply_preset``), which the semi-supervised task builds on."""
