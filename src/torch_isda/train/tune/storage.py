"""Where an ``isda tune`` study lives (``--storage``): an SQLite file in the run directory by
default; ``journal:PATH`` (Optuna's journal file, for workers sharing a filesystem without a
database) or a database URL (``postgresql://...``, ``mysql+pymysql://...``) for many workers.

RDB storages get Optuna's heartbeat: a trial whose worker died (killed, preempted) is marked
failed after ``grace`` seconds without a heartbeat and retried once with the same parameters
(the retry resumes the dead trial's run from its checkpoint). Journal storages have no
heartbeat in Optuna; :func:`fail_stale_journal_trials` does the same from a heartbeat the
objective writes into the trial's attributes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

__all__ = ["HEARTBEAT_ATTR", "default_storage", "fail_stale_journal_trials", "open_storage"]

#: The user attribute holding a trial's last heartbeat (journal storages).
HEARTBEAT_ATTR = "heartbeat"
#: URL schemes and the module their SQLAlchemy driver needs (the message of a missing one).
DRIVERS = {"postgresql": ("psycopg2", "psycopg2-binary"), "mysql": ("MySQLdb", "mysqlclient"),
           "mysql+pymysql": ("pymysql", "PyMySQL"), "postgresql+psycopg": ("psycopg", "psycopg"),
           "postgresql+psycopg2": ("psycopg2", "psycopg2-binary")}


def default_storage(out: str | Path) -> str:
    return f"sqlite:///{Path(out).resolve() / 'study.db'}"


def _check_driver(url: str) -> None:
    scheme = url.split("://", 1)[0].lower()
    if scheme not in DRIVERS:
        return
    module, package = DRIVERS[scheme]
    try:
        __import__(module)
    except ImportError:
        raise ValueError(f"--storage {scheme}://...: the database driver {module!r} is not "
                         f"installed; pip install {package} (or use the default SQLite file, "
                         f"or journal:PATH on a shared filesystem)") from None


def open_storage(url: str, heartbeat: int, grace: int) -> Any:
    """The Optuna storage of ``url`` (see the module docstring); one clear ``ValueError``
    for a malformed URL or a missing database driver."""
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(url[len("journal:"):]).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if "://" not in url:
        raise ValueError(f"--storage expects a database URL (sqlite:///study.db, "
                         f"postgresql://user@host/db) or journal:PATH; got {url!r}")
    _check_driver(url)
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    try:
        return optuna.storages.RDBStorage(
            url, heartbeat_interval=heartbeat, grace_period=grace,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))
    except (ImportError, ModuleNotFoundError) as err:
        raise ValueError(f"--storage {url.split('://', 1)[0]}://...: its database driver is "
                         f"not installed ({err}); install it, or use the default SQLite "
                         f"file") from None


def fail_stale_journal_trials(study: Any, storage: Any, grace: int) -> list[int]:
    """Journal storages: mark failed the running trials whose heartbeat is older than
    ``grace`` seconds and enqueue their parameters again; returns their numbers."""
    from optuna.storages.journal import JournalStorage

    if not isinstance(storage, JournalStorage):
        return []
    stale = []
    now = time.time()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        beat = trial.user_attrs.get(HEARTBEAT_ATTR)
        if beat is not None and now - float(beat) > grace:
            try:
                study.tell(trial.number, state=TrialState.FAIL)
            except (RuntimeError, ValueError):  # another worker got there first
                continue
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            stale.append(trial.number)
    return stale
