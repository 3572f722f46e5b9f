"""The Slurm suite: ``isda compare --executor slurm`` on a real Slurm cluster.

Runs when ``ISDA_TEST_SLURM=1`` (``.ci/run`` sets it after installing slurm-wlm and munge):
against the cluster of ``SLURM_CONF`` when that is set, else on a single-node cluster that
``tools/slurm_local.sh`` starts on localhost for the session (root needed) and stops at the
end. Skipped otherwise, so the main suite never starts daemons.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "slurm_local.sh"


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.slurm)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """``SLURM_CONF`` of a working cluster (started here when needed)."""
    if os.environ.get("ISDA_TEST_SLURM") != "1":
        pytest.skip("the Slurm suite runs with ISDA_TEST_SLURM=1 (needs slurm-wlm and munge: "
                    "apt-get install slurm-wlm munge; see tools/slurm_local.sh)")
    pytest.importorskip("submitit")
    if os.environ.get("SLURM_CONF"):
        yield os.environ["SLURM_CONF"]
        return
    if shutil.which("sbatch") is None or os.geteuid() != 0:
        pytest.skip("no Slurm here (sbatch missing or not root): apt-get install slurm-wlm munge")
    folder = tmp_path_factory.mktemp("slurm")
    subprocess.run(["bash", str(SCRIPT), "start", str(folder)], check=True)
    os.environ["SLURM_CONF"] = str(folder / "slurm.conf")
    try:
        yield os.environ["SLURM_CONF"]
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(folder)], check=False)
        os.environ.pop("SLURM_CONF", None)
