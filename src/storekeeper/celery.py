"""Celery integration (``pip install 'storekeeper[celery]'``); see
:mod:`storekeeper.integrations.celery`. :func:`with_store` itself needs no Celery."""

from .integrations.celery import StoreKeeper
from .sessions import with_store

__all__ = ["StoreKeeper", "with_store"]
