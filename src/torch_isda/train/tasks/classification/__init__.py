"""Supervised classification (Algorithm 1): the task (:mod:`.task`); its defaults are the
presets of :mod:`torch_isda.train.presets`; its tables are :mod:`torch_isda.train.tables`."""

