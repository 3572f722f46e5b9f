"""Semi-supervised classification (Section 5, Table 6): its defaults and resolution
(:mod:`.config`), the task (:mod:`.task`) and its tables (:mod:`.tables`)."""

