"""Loading the configuration, with one documented precedence (lowest first).

1. built-in defaults: a SQLite service ``local`` in ``./var/stores/``, the catalog in
   ``./var/catalog.sqlite``, ``default_service = "local"``;
2. ``storekeeper.toml`` (or ``[tool.storekeeper]`` in ``pyproject.toml``);
3. that file's overlay for the environment (``[env.test]``, ``[env.production]``), chosen by
   ``STOREKEEPER_ENV`` (``test`` under pytest);
4. the catalog (services and assignments made with the CLI) — merged by :mod:`storekeeper.site`;
5. environment variables: ``STOREKEEPER_SERVICE_<NAME>`` (or ``..._FILE``),
   ``STOREKEEPER_CATALOG``, ``STOREKEEPER_DEFAULT_SERVICE``, ``STOREKEEPER_LOCK_TIMEOUT``,
   ``STOREKEEPER_MAX_REPLICA_LAG``.

Every value remembers where it came from, so ``storekeeper config show`` can say so.
"""

from __future__ import annotations

import os
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, InvalidName
from .naming import check_identifier, split_target
from .secret import mask_url, masked_repr

CONFIG_FILE = "storekeeper.toml"
BUILTIN = "built-in"
ENV_PREFIX = "STOREKEEPER_SERVICE_"

_TOP_KEYS = {
    "apps",
    "default_service",
    "catalog",
    "services",
    "assign",
    "env",
    "production",
    "lock_timeout",
    "backups",
    "auto_backup",
    "retention",
    "replicas",
    "max_replica_lag",
}
#: The keys of a ``[retention]`` table (globally, ``[services.NAME.retention]``, or
#: ``[retention."APP.STORE"]``): how many unpinned backups to keep, and for how many days the
#: databases a restore replaced (``<database>_pre_restore_<time>``) are kept.
RETENTION_KEYS = ("keep_last", "keep_daily", "keep_weekly", "keep_pre_restore")
#: Where backups go when nothing says otherwise: ``<root>/var/backups/<app>/<store>/``.
DEFAULT_BACKUPS = "var/backups"
#: Seconds to wait for a store's lock before giving up (``lock_timeout``, ``--lock-timeout``):
#: long enough for a sync or migration that is working, short enough that a hung one is
#: reported while someone still watches; Liquibase waits five minutes for its lock too.
DEFAULT_LOCK_TIMEOUT = "300"
#: Seconds a replica may be behind its primary and still serve reads (``max_replica_lag``):
#: a page a few seconds old is what most readers accept, and a replica further behind is
#: usually catching up after a burst of writes or a stall.
DEFAULT_MAX_REPLICA_LAG = "5"


@dataclass(frozen=True)
class Sourced:
    """A configuration value and where it came from (``built-in``, a file, an env var...)."""

    value: str
    source: str

    def __repr__(self) -> str:
        # The value may be a URL with a password: it is shown masked.
        return f"Sourced(value={mask_url(self.value)!r}, source={self.source!r})"


@dataclass
class Config:
    """The effective file-and-environment configuration of one project folder."""

    root: Path
    file: Path | None
    env: str | None
    apps: list[str] = field(default_factory=list)
    default_service: Sourced = Sourced("local", BUILTIN)
    catalog: Sourced = Sourced("sqlite:///var/catalog.sqlite", BUILTIN)
    #: Services from the file and its overlay; the catalog's override these.
    services: dict[str, Sourced] = field(default_factory=dict)
    #: Services from ``STOREKEEPER_SERVICE_*``; these override the catalog's.
    env_services: dict[str, Sourced] = field(default_factory=dict)
    assignments: dict[tuple[str, str], Sourced] = field(default_factory=dict)
    #: Services marked ``production = true``: test tooling refuses to touch them.
    production_services: set[str] = field(default_factory=set)
    #: Services marked ``tests = true``: the test plugin may make its databases there.
    test_services: set[str] = field(default_factory=set)
    #: The environment overlays the file has (``[env.test]`` gives ``"test"``).
    overlays: set[str] = field(default_factory=set)
    #: Seconds to wait for a store's lock before giving up (0: do not wait).
    lock_timeout: Sourced = Sourced(DEFAULT_LOCK_TIMEOUT, BUILTIN)
    #: The folder backups go to (``backups = "path"``, relative to :attr:`root`), and the
    #: folders of services that name their own (``[services.NAME] backups = "path"``).
    backups: Sourced = Sourced(DEFAULT_BACKUPS, BUILTIN)
    service_backups: dict[str, Sourced] = field(default_factory=dict)
    #: ``auto_backup = true/false``; ``None`` when not set (then: on, except in ``test``).
    auto_backup: Sourced | None = None
    #: Retention settings (:data:`RETENTION_KEYS`): global, per service, per ``(app, store)``.
    retention: dict[str, Sourced] = field(default_factory=dict)
    service_retention: dict[str, dict[str, Sourced]] = field(default_factory=dict)
    store_retention: dict[tuple[str, str], dict[str, Sourced]] = field(default_factory=dict)
    #: The replica services of each store, ``(app, store)`` to service names, from the file
    #: and its overlay (``[replicas]``); the catalog's are added to these.
    replicas: dict[tuple[str, str], list[Sourced]] = field(default_factory=dict)
    #: Seconds a replica may lag behind its primary and still serve reads.
    max_replica_lag: Sourced = Sourced(DEFAULT_MAX_REPLICA_LAG, BUILTIN)

    @property
    def lock_timeout_seconds(self) -> float:
        """:attr:`lock_timeout` as a number (checked when it was read)."""
        return float(self.lock_timeout.value)

    @property
    def auto_backups(self) -> bool:
        """Whether ``upgrade``, ``downgrade`` and ``sync`` take a backup before migrating a
        store: ``auto_backup`` when the configuration sets it, else on, except in the ``test``
        environment (``STOREKEEPER_ENV=test``, or under pytest), whose throwaway databases
        need none."""
        if self.auto_backup is not None:
            return self.auto_backup.value == "true"
        return self.env != "test"

    def backups_folder(self, service: str) -> Sourced:
        """The folder the backups of stores on ``service`` go to (absolute), and its source."""
        chosen = self.service_backups.get(service, self.backups)
        return Sourced(str(self.root / Path(chosen.value).expanduser()), chosen.source)

    def retention_for(self, service: str, app: str, store: str) -> dict[str, Sourced]:
        """The retention settings of ``app.store`` on ``service``: each key from the store's
        table, else its service's, else the global ``[retention]``."""
        found: dict[str, Sourced] = {}
        for layer in (
            self.retention,
            self.service_retention.get(service, {}),
            self.store_retention.get((app, store), {}),
        ):
            found.update(layer)
        return found

    @property
    def max_replica_lag_seconds(self) -> float:
        """:attr:`max_replica_lag` as a number (checked when it was read)."""
        return float(self.max_replica_lag.value)


def check_lock_timeout(value: object, where: str) -> str:
    """``value`` as the text of a lock timeout in seconds; :class:`ConfigError` names it unless
    it is a number of seconds, 0 or more."""
    return check_seconds(value, where, "300")


def check_seconds(value: object, where: str, example: str) -> str:
    """``value`` as the text of a number of seconds; :class:`ConfigError` names it (and gives
    ``example``) unless it is a finite number, 0 or more."""
    try:
        seconds = float(value) if isinstance(value, int | float | str) else float("nan")
    except ValueError:
        seconds = float("nan")
    if isinstance(value, bool) or not seconds >= 0 or seconds == float("inf"):
        raise ConfigError(
            f"{where}: {value!r} is not a number of seconds (0 or more), like {example}"
        )
    return f"{seconds:g}"

    def __repr__(self) -> str:
        return masked_repr(self)


def current_env(environ: Mapping[str, str] | None = None) -> str | None:
    """The environment overlay in force: ``STOREKEEPER_ENV``, else ``test`` under pytest."""
    environ = os.environ if environ is None else environ
    value = environ.get("STOREKEEPER_ENV")
    if value is not None:
        return value or None
    if _under_pytest(environ):
        return "test"
    return None


def _under_pytest(environ: Mapping[str, str]) -> bool:
    return "pytest" in sys.modules or "PYTEST_CURRENT_TEST" in environ


def _check_env(
    name: str, overlays: Mapping[str, Any], where: str | None, environ: Mapping[str, str]
) -> None:
    """Refuse an environment the configuration does not define.

    A misspelled name would silently leave out its overlay, and with it guards such as
    production's ``default_service = ""``. ``test`` under pytest needs no overlay: the test
    tooling brings its own defaults.
    """
    if name in overlays or (name == "test" and _under_pytest(environ)):
        return
    origin = " (from STOREKEEPER_ENV)" if environ.get("STOREKEEPER_ENV") == name else ""
    if where is None:
        raise ConfigError(
            f"environment {name!r}{origin} is not defined: there is no configuration file "
            f"({CONFIG_FILE}, or [tool.storekeeper] in pyproject.toml) with an [env.{name}] "
            "table; unset the environment, or write that file"
        )
    known = ", ".join(sorted(overlays)) or "none"
    raise ConfigError(
        f"environment {name!r}{origin} is not defined in {where}; its environments: {known}. "
        f"Choose one of those, or add an [env.{name}] table (it may be empty)"
    )


def find_config_file(start: Path) -> tuple[Path | None, dict[str, Any]]:
    """Find ``storekeeper.toml`` or a ``pyproject.toml`` with ``[tool.storekeeper]``.

    Looks in ``start`` and its parents; returns the file and its storekeeper table.
    """
    for folder in (start, *start.parents):
        candidate = folder / CONFIG_FILE
        if candidate.is_file():
            return candidate, _read_toml(candidate)
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file():
            table = _read_toml(pyproject).get("tool", {}).get("storekeeper")
            if isinstance(table, dict):
                return pyproject, table
    return None, {}


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror}") from None


def load(
    path: str | Path | None = None,
    *,
    env: str | bool | None = True,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Config:
    """Load the configuration.

    ``path`` names a config file (else ``STOREKEEPER_CONFIG``, else the nearest
    ``storekeeper.toml`` / ``pyproject.toml`` from ``cwd`` up). ``env`` picks the overlay:
    ``True`` means :func:`current_env`, ``None``/``False`` none, a string that one. An
    environment the file does not define is a :class:`ConfigError` (``test`` under pytest
    excepted), so a misspelled name never drops its overlay's guards silently.
    """
    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else cwd
    explicit = path or environ.get("STOREKEEPER_CONFIG")
    file: Path | None
    if explicit:
        file = Path(explicit).expanduser().absolute()
        if not file.is_file():
            raise ConfigError(f"configuration file {str(file)!r} does not exist")
        data = _read_toml(file)
        if file.name == "pyproject.toml":
            data = data.get("tool", {}).get("storekeeper", {})
    else:
        file, data = find_config_file(cwd.absolute())
    env_name = current_env(environ) if env is True else (env or None)
    config = Config(root=file.parent if file else cwd.absolute(), file=file, env=env_name)
    if file is None:
        if env_name:
            _check_env(env_name, {}, None, environ)
    else:
        where = file.name if file.name == CONFIG_FILE else f"{file.name} [tool.storekeeper]"
        overlays = data.get("env", {})
        if not isinstance(overlays, dict):
            raise ConfigError(f"{where}: 'env' must be a table of tables like [env.test]")
        if env_name:
            _check_env(env_name, overlays, where, environ)
        _apply_table(config, data, where, top=True)
        config.overlays = set(overlays)
        if env_name and env_name in overlays:
            _apply_table(config, overlays[env_name], f"{where} [env.{env_name}]", top=False)
    _apply_environ(config, environ)
    return config


def _apply_table(config: Config, data: Any, where: str, *, top: bool) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table")
    allowed = _TOP_KEYS if top else _TOP_KEYS - {"env", "apps"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"valid keys are {', '.join(sorted(allowed))}"
        )
    if "apps" in data:
        apps = data["apps"]
        if not isinstance(apps, list) or not all(isinstance(a, str) for a in apps):
            raise ConfigError(f"{where}: 'apps' must be a list of 'module:attribute' strings")
        config.apps = list(apps)
    if "default_service" in data:
        value = data["default_service"]
        if not isinstance(value, str):
            raise ConfigError(f"{where}: 'default_service' must be a string")
        if value:
            check_identifier(value, "service")
        config.default_service = Sourced(value, where)
    if "lock_timeout" in data:
        config.lock_timeout = Sourced(
            check_lock_timeout(data["lock_timeout"], f"{where}: lock_timeout"), where
        )
    if "backups" in data:
        config.backups = Sourced(_folder(data["backups"], f"{where}: backups"), where)
    if "auto_backup" in data:
        if not isinstance(data["auto_backup"], bool):
            raise ConfigError(f"{where}: auto_backup must be true or false")
        config.auto_backup = Sourced("true" if data["auto_backup"] else "false", where)
    if "retention" in data:
        _apply_retention(config, data["retention"], where)
    if "max_replica_lag" in data:
        config.max_replica_lag = Sourced(
            check_seconds(data["max_replica_lag"], f"{where}: max_replica_lag", "5"), where
        )
    if "replicas" in data:
        _apply_replicas(config, data["replicas"], where)
    if "catalog" in data:
        if not isinstance(data["catalog"], str) or not data["catalog"]:
            raise ConfigError(f"{where}: 'catalog' must be a database URL")
        config.catalog = Sourced(data["catalog"], where)
    services = data.get("services", {})
    if not isinstance(services, dict):
        raise ConfigError(f"{where}: 'services' must be a table of NAME = URL")
    for name, spec in services.items():
        check_identifier(name, "service")
        config.services[name] = Sourced(_service_url(name, spec, where, config), where)
    assign = data.get("assign", {})
    if not isinstance(assign, dict):
        raise ConfigError(f"{where}: 'assign' must be a table of \"APP.SETTING\" = SERVICE")
    for target, service in assign.items():
        if not isinstance(service, str):
            raise ConfigError(f"{where}: assign.{target} must be a service name")
        try:
            key = split_target(target)
        except InvalidName as exc:
            raise InvalidName(f"{where}: assign key {target!r}: {exc}") from None
        config.assignments[key] = Sourced(check_identifier(service, "service"), where)


def _folder(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f'{where} must be a folder\'s path, like "/srv/backups"')
    return value


def _retention_table(data: Any, where: str) -> dict[str, Sourced]:
    """One table of retention settings, each checked: a whole number, 0 or more (days for
    ``keep_pre_restore``, which may be a fraction)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a table of {', '.join(RETENTION_KEYS)}")
    found: dict[str, Sourced] = {}
    for key, value in data.items():
        if key not in RETENTION_KEYS:
            raise ConfigError(
                f"{where}: unknown key {key!r}; valid keys are {', '.join(RETENTION_KEYS)}"
            )
        whole = key != "keep_pre_restore"
        ok = isinstance(value, int) if whole else isinstance(value, int | float)
        if isinstance(value, bool) or not ok or value < 0 or value != value:
            what = "a whole number, 0 or more" if whole else "a number of days, 0 or more"
            raise ConfigError(f"{where}: {key} = {value!r} is not {what}, like 7")
        found[key] = Sourced(f"{value:g}" if not whole else str(value), where)
    return found


def _apply_retention(config: Config, data: Any, where: str) -> None:
    """``[retention]``: settings for every store, and ``[retention."APP.STORE"]`` tables for
    one store each."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: retention must be a table like [retention]")
    own = {k: v for k, v in data.items() if not isinstance(v, dict)}
    config.retention.update(_retention_table(own, f"{where}: [retention]"))
    for target, table in data.items():
        if not isinstance(table, dict):
            continue
        try:
            key = split_target(target)
        except InvalidName as exc:
            raise InvalidName(
                f"{where}: [retention.{target!r}]: {exc}; a store's own retention is a table "
                '[retention."APP.STORE"]'
            ) from None
        layer = config.store_retention.setdefault(key, {})
        layer.update(_retention_table(table, f'{where}: [retention."{target}"]'))


def _apply_replicas(config: Config, table: Any, where: str) -> None:
    """``[replicas] "APP.STORE" = ["pg_r1", "pg_r2"]``: each store's replica services (an
    overlay's list replaces the file's for that store)."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: 'replicas' must be a table of \"APP.STORE\" = [SERVICE, ...]")
    for target, names in table.items():
        try:
            key = split_target(target)
        except InvalidName as exc:
            raise InvalidName(f"{where}: replicas key {target!r}: {exc}") from None
        if isinstance(names, str):
            names = [names]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ConfigError(
                f'{where}: replicas."{target}" must be a list of service names, like ["pg_r1"]'
            )
        checked = [check_identifier(n, f'service (in {where}: replicas."{target}")') for n in names]
        config.replicas[key] = [Sourced(n, where) for n in dict.fromkeys(checked)]


def _service_url(name: str, spec: Any, where: str, config: Config) -> str:
    if isinstance(spec, str):
        return spec
    if isinstance(spec, dict):
        unknown = sorted(
            set(spec) - {"url", "url_file", "production", "tests", "backups", "retention"}
        )
        if unknown:
            raise ConfigError(
                f"{where}: services.{name}: unknown key(s) {', '.join(unknown)}; "
                "use url, url_file, production, tests, backups, retention"
            )
        if "backups" in spec:
            folder = _folder(spec["backups"], f"{where}: services.{name}.backups")
            config.service_backups[name] = Sourced(folder, where)
        if "retention" in spec:
            layer = config.service_retention.setdefault(name, {})
            layer.update(_retention_table(spec["retention"], f"{where}: services.{name}.retention"))
        if spec.get("production"):
            config.production_services.add(name)
        if spec.get("tests"):
            config.test_services.add(name)
        if isinstance(spec.get("url"), str):
            return str(spec["url"])
        if isinstance(spec.get("url_file"), str):
            # Like every path in the file, a relative url_file is relative to its folder.
            path = config.root / Path(spec["url_file"]).expanduser()
            return _read_secret_file(path, f"{where}: services.{name}.url_file")
    raise ConfigError(
        f"{where}: services.{name} must be a URL string or a table with 'url' or 'url_file'"
    )


def _read_secret_file(path: Path, what: str) -> str:
    try:
        return path.expanduser().read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {str(path)!r}: {exc.strerror}") from None


def _apply_environ(config: Config, environ: Mapping[str, str]) -> None:
    for key, value in sorted(environ.items()):
        if not key.startswith(ENV_PREFIX) or not value:
            continue
        rest = key[len(ENV_PREFIX) :]
        if rest.endswith("_FILE"):
            rest = rest[: -len("_FILE")]
            value = _read_secret_file(Path(value), key)
        name = rest.lower()
        check_identifier(name, f"service (from environment variable {key})")
        config.env_services[name] = Sourced(value, f"env {key}")
    if environ.get("STOREKEEPER_CATALOG"):
        config.catalog = Sourced(environ["STOREKEEPER_CATALOG"], "env STOREKEEPER_CATALOG")
    if environ.get("STOREKEEPER_LOCK_TIMEOUT"):
        where = "env STOREKEEPER_LOCK_TIMEOUT"
        value = check_lock_timeout(environ["STOREKEEPER_LOCK_TIMEOUT"], where)
        config.lock_timeout = Sourced(value, where)
    if environ.get("STOREKEEPER_MAX_REPLICA_LAG"):
        where = "env STOREKEEPER_MAX_REPLICA_LAG"
        value = check_seconds(environ["STOREKEEPER_MAX_REPLICA_LAG"], where, "5")
        config.max_replica_lag = Sourced(value, where)
    if "STOREKEEPER_DEFAULT_SERVICE" in environ:
        value = environ["STOREKEEPER_DEFAULT_SERVICE"]
        if value:
            check_identifier(value, "service (from STOREKEEPER_DEFAULT_SERVICE)")
        config.default_service = Sourced(value, "env STOREKEEPER_DEFAULT_SERVICE")
