"""ASGI middleware that ends async scoped sessions per request; see
:mod:`storekeeper.integrations.asgi`."""

from .integrations.asgi import StoresMiddleware, driver

__all__ = ["StoresMiddleware", "driver"]
