"""``isda tune``: a search of λ₀ (or any numeric option of ``isda train``) with Optuna on a
validation split carved from the training set (docs/scale.md).

* :mod:`.space`: ``--param NAME=SPEC``;
* :mod:`.storage`: ``--storage`` (SQLite file, journal file, database URL; heartbeats);
* :mod:`.study`: the study, its trials (normal runs under ``OUT/trials/``), the workers;
* :mod:`.workers`: ``--jobs N`` worker processes; :mod:`.report`: best.json, trials table, plot.
"""
