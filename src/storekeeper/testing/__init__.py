"""Testing with stores: the pytest plugin (:mod:`.plugin`, loaded through the ``pytest11``
entry point), the janitor that builds test databases (:mod:`.janitor`), and a throwaway
PostgreSQL server (:class:`PostgresServer`) for test suites and benchmarks of your own, and
in-memory fakes of the read and write drivers (:mod:`.fakes`)."""

from .server import PostgresServer

__all__ = ["PostgresServer"]
