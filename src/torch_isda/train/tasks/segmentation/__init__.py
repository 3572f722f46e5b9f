"""Semantic segmentation (Section 6.4, Table 7): its defaults and resolution (:mod:`.config`),
the criterion (:mod:`.criterion`), the metrics (:mod:`.metrics`), the task (:mod:`.task`) and
its tables (:mod:`.tables`)."""

