"""Starlette / FastAPI integration (``pip install 'storekeeper[starlette]'``); see
:mod:`storekeeper.integrations.starlette`."""

from .integrations.starlette import StoreKeeper

__all__ = ["StoreKeeper"]
