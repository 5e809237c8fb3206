"""The model being served, and the one function that loads it.

Scope: loading and readiness. :func:`load_model` is the only place the server
calls :func:`blackbox.load`; it passes the configured ``LOAD_OPTIONS`` through
untouched and runs the golden-sample self-test, so a model that is held has
been verified and reproduces its recorded predictions. Requests read
:attr:`ModelHolder.model` once and use that reference to the end, so a later
hot reload can swap the held model without a request ever mixing two models.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import blackbox
from blackbox import Model
from werkzeug.exceptions import ServiceUnavailable


class NotReady(ServiceUnavailable):
    """No verified model is held yet; clients should retry."""

    def __init__(self) -> None:
        super().__init__("No verified model is loaded yet; retry shortly.", retry_after=5)


def load_model(path: str | os.PathLike[str], options: Mapping[str, Any]) -> Model:
    """Verify and load the artifact at ``path``, then prove it still predicts as it did when saved."""
    model = blackbox.load(path, **options)
    model.self_test()
    return model


class ModelHolder:
    """Holds the current model; ``model`` is None until one has passed its self-test."""

    def __init__(self, model: Model | None = None) -> None:
        self.model = model

    def require(self) -> Model:
        """The current model, or 503 when there is none (read it once per request)."""
        model = self.model
        if model is None:
            raise NotReady()
        return model
