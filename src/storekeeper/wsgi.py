"""WSGI middleware that ends scoped sessions per request; see
:mod:`storekeeper.integrations.wsgi`."""

from .integrations.wsgi import StoresMiddleware, driver

__all__ = ["StoresMiddleware", "driver"]
