"""The model store: a home for artifacts, immutable versions, and aliases that say what serves.

``Store.open(uri)`` takes a directory or any fsspec URL (``s3://bucket/prefix``
with the ``s3`` extra). The store's layout and rules live in
:mod:`blackbox.store.store`; what a release is, which names are valid and how versions
order, in :mod:`blackbox.store.releases`; what a signed alias pointer says and
when a reader believes one, in :mod:`blackbox.store.pointers`; how each backend publishes atomically and
detects lost races, in :mod:`blackbox.store.backends`.
"""

from ..errors import StoreError
from .releases import Pointer, Release, parse_ref
from .store import Store

__all__ = ["Pointer", "Release", "Store", "StoreError", "parse_ref"]
