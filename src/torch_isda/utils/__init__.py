"""Small leaf helpers shared by the harness packages (``data``, ``models``, ``train``).

* :mod:`.spec_grammar`: the ``name(key=value, ...)+name(...)`` grammar of criterion specs
  (``--loss``) and augmentation specs (``--augment``);
* :mod:`.registry`: the name -> factory registry of datasets and models.

Nothing here imports another part of ``torch_isda``.
"""
