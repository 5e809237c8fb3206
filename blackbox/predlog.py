"""``blackbox.predlog.read_log``, as earlier READMEs documented it: now :func:`blackbox.monitoring.read_log`.

The prediction log lives in :mod:`blackbox.monitoring.predlog` (#18); only the
documented reader is kept at this path.
"""

from .monitoring.predlog import read_log

__all__ = ["read_log"]
