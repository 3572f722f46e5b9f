"""Old import paths of modules that moved (issue 25's layout): importing one still works,
gives the module at its new path and warns with a ``DeprecationWarning``.

Installed by ``import torch_isda`` as a finder at the end of :data:`sys.meta_path`, so it
answers only names no file answers. :data:`MOVED_MODULES` maps old to new paths.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType
from typing import Any, Optional

__all__ = ["MOVED_MODULES", "MovedModuleFinder", "install"]

#: Old module path -> new module path.
MOVED_MODULES: dict[str, str] = {
    "torch_isda.cli_types": "torch_isda.train.arg_types",
    "torch_isda.command_list": "torch_isda.cli.list",
    "torch_isda.command_export": "torch_isda.cli.export",
    "torch_isda.export": "torch_isda.cli.export_backbone",
    "torch_isda.visualize.command_gan": "torch_isda.cli.gan",
    "torch_isda.visualize.command_visualize": "torch_isda.cli.visualize",
    "torch_isda.analysis.command_analyze": "torch_isda.cli.analyze",
    "torch_isda.analysis.command_bench": "torch_isda.cli.bench",
    "torch_isda.segmentation_criterion": "torch_isda.train.tasks.segmentation.criterion",
    "torch_isda.segmentation_metrics": "torch_isda.train.tasks.segmentation.metrics",
    "torch_isda.sync_batchnorm": "torch_isda.train.sync_batchnorm",
    "torch_isda.semi.config": "torch_isda.train.tasks.semi.config",
    "torch_isda.baselines.criteria": "torch_isda.train.criteria.baselines",
    "torch_isda.baselines.explicit_augmentation": "torch_isda.train.criteria.explicit_augmentation",
    "torch_isda.baselines.generative_augmentation":
        "torch_isda.train.criteria.generative_augmentation",
    "torch_isda.train.distributed": "torch_isda.train.parallel",
    "torch_isda.train.segmentation_config": "torch_isda.train.tasks.segmentation.config",
    "torch_isda.train.tables_semi": "torch_isda.train.tasks.semi.tables",
    "torch_isda.train.tables_segmentation": "torch_isda.train.tasks.segmentation.tables",
}


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old paths of :data:`MOVED_MODULES` and loads them as the new modules."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None
                  ) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname not in MOVED_MODULES:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = MOVED_MODULES[spec.name]
        warnings.warn(f"{spec.name} moved to {new}; import it from there (the old path "
                      f"will be removed)", DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)  # its attributes (__name__, __spec__) are kept

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module was imported at its new path."""


def install() -> None:
    """Put the finder at the end of :data:`sys.meta_path` (once)."""
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
