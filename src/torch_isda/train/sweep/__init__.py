"""Sweeps beyond one process (``isda compare --jobs N`` and ``--executor slurm|local|debug``,
``isda status``; docs/scale.md).

* :mod:`.runs`: one run as data, its bookkeeping under ``OUT/sweep/``, :func:`execute_run`;
* :mod:`.local`: the local process pool of ``--jobs N`` (GPU pinning, thread split, Ctrl-C);
* :mod:`.submitit_jobs`: one submitit job array (Slurm, or submitit's local/debug executors);
* :mod:`.options`: the command-line options and the executor handed to ``run_comparison``;
* :mod:`.display`: the live view and ETA; :mod:`.status`: ``isda status OUT``.
"""
