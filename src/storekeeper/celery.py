"""Celery integration (``pip install 'storekeeper[celery]'``); see
:mod:`storekeeper.integrations.celery`. :func:`with_store` and :func:`with_drivers`
themselves need no Celery."""

from .integrations.celery import StoreKeeper
from .sessions import with_drivers, with_store

__all__ = ["StoreKeeper", "with_drivers", "with_store"]
