"""Pyramid integration (``pip install 'storekeeper[pyramid]'``): ``config.include(
"storekeeper.pyramid")``; see :mod:`storekeeper.integrations.pyramid`."""

from .integrations.pyramid import COMMIT_POLICIES, StorePolicy, includeme, use_stores

__all__ = ["COMMIT_POLICIES", "StorePolicy", "includeme", "use_stores"]
