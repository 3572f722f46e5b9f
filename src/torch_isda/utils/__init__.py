"""Small leaf helpers shared by the harness packages; nothing here imports another part
of ``torch_isda``.

* :mod:`.spec_grammar`: the ``name(key=value, ...)+name(...)`` grammar of criterion specs
  (``--loss``) and augmentation specs (``--augment``);
* :mod:`.registry`: the name -> factory registry of datasets and models;
* :mod:`.text`: small text formatting helpers.
"""
