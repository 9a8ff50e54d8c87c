"""The ``storekeeper`` command: the verbs of :mod:`storekeeper.commands` on click, with
targets named ``APP.STORE`` over every configured app.

Exit codes: 0 done, 1 failed while working, 2 bad input (click's usage errors too).
Everything printed goes through :mod:`storekeeper.report`. Heavy imports happen inside
commands so ``--help`` is quick.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import click

from . import commands, report
from .commands import VERBS, Face, Verb
from .errors import BadInput
from .report import say

if TYPE_CHECKING:
    from .declare import App
    from .site import Site

DEMO_APP = "gauges.stores:app"


class StorekeeperFace(Face):
    """The ``storekeeper`` command's site and apps: from ``--config``, ``--env`` and
    ``--app`` (or the configuration and installed apps), loaded on first use."""

    prog = "storekeeper"

    def __init__(self) -> None:
        super().__init__()
        self.config: str | None = None
        self.env: str | None = None
        self.app_specs: list[str] = []
        self._site: Site | None = None
        self._apps: list[App] | None = None

    def take(self, config: str | None, app: Sequence[str], env: str | None) -> None:
        """The common options, given before or after the command's name."""
        self.config = config or self.config
        self.env = env or self.env
        self.app_specs += app

    @property
    def site(self) -> Site:
        if self._site is None:
            from .site import Site

            self._site = Site.load(self.config, env=self.env or True)
            self._apply_lock_timeout(self._site)
            Site.set_default(self._site)
        return self._site

    @property
    def apps(self) -> list[App]:
        if self._apps is None:
            from .discover import load_apps

            site = self.site
            self._apps = load_apps(self.app_specs, site.config.apps, site.config.root)
            for app in self._apps:
                app.bind(site)
        return self._apps

    def close(self) -> None:
        if self._site is not None:
            self._site.close()


def _common(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--config``, ``--app`` and ``--env``, taken by the group and by every command."""
    func = click.option(
        "--env",
        metavar="NAME",
        help="configuration overlay to use, like test or production (default: STOREKEEPER_ENV)",
    )(func)
    func = click.option(
        "--app",
        metavar="MODULE:ATTR",
        multiple=True,
        help="an app to use (repeatable); default: configured and installed apps",
    )(func)
    return click.option(
        "--config", metavar="PATH", help="configuration file (default: nearest storekeeper.toml)"
    )(func)


def _face() -> StorekeeperFace:
    face = click.get_current_context().find_object(StorekeeperFace)
    assert face is not None, "main() gives the face as the context's object"
    return face


# How storekeeper names what each kind of verb acts on: (click arguments, their reading).
_Read = Callable[[StorekeeperFace, dict[str, Any]], dict[str, Any]]
_TARGETS_HELP = "APP, APP.STORE, APP.KIND:* (a kind's stores) or APP.GLOB (like app.tenant_*)"


def _read_moves(face: StorekeeperFace, kw: dict[str, Any]) -> dict[str, Any]:
    kw["every"] = kw.pop("all")
    return kw


_TARGETS: dict[str | None, tuple[list[Callable[..., Any]], _Read | None]] = {
    None: ([], None),
    "apps": ([click.argument("apps", nargs=-1, metavar="[APP]...")], None),
    "targets": ([click.argument("targets", nargs=-1, metavar="[TARGET]...")], None),
    "moves": (
        [
            click.argument("targets", nargs=-1, metavar="[TARGET]..."),
            click.option("--all", is_flag=True, help="every store that has migrations"),
        ],
        _read_moves,
    ),
    "target": ([click.argument("target", metavar="APP.STORE")], None),
    "setting": ([click.argument("target", metavar="APP.SETTING")], None),
}


def _command(name: str, verb: Verb) -> click.Command:
    params, read = _TARGETS[verb.acts_on]

    def callback(config: str | None, app: tuple[str, ...], env: str | None, **kw: Any) -> int:
        face = _face()
        face.take(config, app, env)
        face.lock_timeout = kw.pop("lock_timeout", None)
        return face.run(lambda: verb.run(face, **(read(face, kw) if read else kw)))

    func = commands.with_options(verb, callback)
    for param in reversed(params):
        func = param(func)
    help = verb.help
    if verb.acts_on in ("targets", "moves"):
        help += f"; a TARGET is {_TARGETS_HELP}"
        if verb.acts_on == "targets":
            help += " (default: all stores)"
    short = verb.help.split(";")[0]
    return click.command(name, help=help, short_help=short)(_common(func))


def demo() -> int:
    """Run the bundled stream gages app end to end."""
    from .discover import import_app
    from .provision import status, sync

    try:
        app = import_app(DEMO_APP, origin="demo app")
    except BadInput:
        raise BadInput(
            "the demo app 'gauges' is not installed: run 'make demo' from a storekeeper "
            "checkout, or pip install -e examples/gauges"
        ) from None
    site = _face().site
    app.bind(site)
    say(
        f"storekeeper demo: app {app.name!r} on service(s) "
        f"{', '.join(sorted({app.placement(s.name).service.name for s in app.stores}))}"
    )
    say(f"catalog: {site.catalog.display_url}")
    synced = sync([app], progress=lambda r: say(f"  {r.app}.{r.store}: {report.describe(r)}"))
    say("sync: changed" if synced.changed else "sync: no changes, everything is up to date")
    # The example ships its own query; the demo only prints what it returns.
    list_gauges = importlib.import_module("gauges.model").list_gauges
    say("")
    say("stream gages:")
    report.show_table(
        [(g.id, g.latitude, g.longitude, g.value) for g in list_gauges(app)],
        ["id", "latitude", "longitude", "value"],
    )
    say("")
    report.print_status(status([app]))
    return 0


def build_cli() -> click.Group:
    """The ``storekeeper`` command, built from the table of verbs."""
    from . import __version__

    @click.group(
        "storekeeper",
        help="An application's SQL databases, whole: declare, assign, sync, inspect.",
        epilog="Exit codes: 0 done, 1 failed while working, 2 bad input.",
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    @click.version_option(__version__, prog_name="storekeeper", message="%(prog)s %(version)s")
    @_common
    def group(config: str | None, app: tuple[str, ...], env: str | None) -> None:
        _face().take(config, app, env)

    groups = {name: click.Group(name, help=help) for name, help in commands.GROUPS.items()}
    for full_name, verb in VERBS.items():
        parent, _, name = full_name.rpartition(" ")
        (groups[parent] if parent else group).add_command(_command(name, verb))
    for each in groups.values():
        group.add_command(each)

    group.add_command(_admin_group())

    @group.command("demo", help="run the bundled stream gages app end to end")
    @_common
    def demo_command(config: str | None, app: tuple[str, ...], env: str | None) -> int:
        face = _face()
        face.take(config, app, env)
        return face.run(demo)

    return group


def _admin_group() -> click.Group:
    """``storekeeper admin`` (serves the page) and ``storekeeper admin set-password``."""
    from .admin.serve import DEFAULT_HOST, DEFAULT_PORT

    @click.group(
        "admin",
        invoke_without_command=True,
        help="serve the admin page (on 127.0.0.1 unless --host); first set its password with "
        "'storekeeper admin set-password'",
        short_help="serve the admin page on 127.0.0.1",
    )
    @click.option("--host", default=DEFAULT_HOST, show_default=True, help="address to listen on")
    @click.option("--port", default=DEFAULT_PORT, show_default=True, type=int, help="port")
    @click.option(
        "--allow-remote",
        is_flag=True,
        help="allow a --host beyond loopback (needs --certfile and --keyfile)",
    )
    @click.option("--certfile", metavar="PATH", help="TLS certificate (PEM)")
    @click.option("--keyfile", metavar="PATH", help="TLS private key (PEM)")
    @_common
    def admin(
        config: str | None,
        app: tuple[str, ...],
        env: str | None,
        host: str,
        port: int,
        allow_remote: bool,
        certfile: str | None,
        keyfile: str | None,
    ) -> int | None:
        face = _face()
        face.take(config, app, env)
        if click.get_current_context().invoked_subcommand is not None:
            return None
        return face.run(
            lambda: commands.admin_serve(
                face,
                host=host,
                port=port,
                allow_remote=allow_remote,
                certfile=certfile,
                keyfile=keyfile,
            )
        )

    @admin.command(
        "set-password",
        help="set the admin page's user and password (an Argon2 hash in the catalog; every "
        "session ends); asked twice on a terminal, else read from standard input",
    )
    @click.option("--user", default="admin", show_default=True, help="the admin user's name")
    @click.option("--password-stdin", is_flag=True, help="read the password from standard input")
    @_common
    def set_password(
        config: str | None,
        app: tuple[str, ...],
        env: str | None,
        user: str,
        password_stdin: bool,
    ) -> int:
        face = _face()
        face.take(config, app, env)
        return face.run(
            lambda: commands.admin_set_password(face, user=user, password_stdin=password_stdin)
        )

    return admin


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (a usage error exits 2, as ``--help``
    exits 0, by ``SystemExit``)."""
    face = StorekeeperFace()
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        code = build_cli().main(args, prog_name="storekeeper", standalone_mode=False, obj=face)
    except click.ClickException as exc:  # usage errors: what, and how to ask for help
        exc.show()
        raise SystemExit(exc.exit_code) from None
    except click.Abort:
        report.warn("interrupted")
        return 130
    finally:
        face.close()
    return int(code or 0)
