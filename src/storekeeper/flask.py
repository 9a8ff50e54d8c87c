"""Flask integration (``pip install 'storekeeper[flask]'``); see
:mod:`storekeeper.integrations.flask`."""

from .integrations.flask import StoreKeeper

__all__ = ["StoreKeeper"]
