"""After deployment: how live inputs drift, what the server predicted, and the report on both.

* :mod:`.drift`: the training profile saved in the manifest, and PSI of live inputs against it;
* :mod:`.predlog`: the prediction log and feedback tables (SQLAlchemy), ``read_log``;
* :mod:`.report`: the HTML drift report of ``blackbox drift`` (matplotlib).

Never on the load path: ``blackbox.load`` imports none of it, and importing this
package imports neither SQLAlchemy nor matplotlib. ``read_log`` (public,
``blackbox.monitoring.read_log``) imports the prediction log when first asked for.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["read_log"]


def __getattr__(name: str) -> Any:
    if name == "read_log":
        return importlib.import_module(".predlog", __name__).read_log
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
