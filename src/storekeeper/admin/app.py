"""The admin page's ASGI app: its routes, each behind the login (and every POST behind its
CSRF token), rendering the core's reports with Jinja2 templates.

Every route is made by :meth:`AdminPage.routes` through :meth:`AdminPage._guard`, so a page
cannot be added without the login; only ``/login`` and the static files are open.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from ..catalog import acting
from ..errors import BadInput, ServiceUnavailable, StorekeeperError
from .actions import ACTIONS, ActionResult, find_app, run_action
from .jobs import BACKGROUND, JobRunner
from .security import (
    COOKIE,
    LOGIN_COOKIE,
    Login,
    LoginLimit,
    SecurityHeaders,
    Sessions,
    needs_rehash,
    verify_password,
)

if TYPE_CHECKING:
    from ..declare import App
    from ..provision import StoreStatus
    from ..site import Site

HERE = Path(__file__).parent
#: Rows per page of the stores table and the history.
PER_PAGE = 50
#: What the stores table's "state" filter offers.
STATES = ("exists", "no database", "at head", "behind", "problem", "never read")

Endpoint = Callable[[Request, Login], Awaitable[Response]]


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _state_of(row: StoreStatus) -> set[str]:
    states = set()
    if row.problem:
        states.add("problem")
    if row.exists:
        states.add("exists")
    elif row.exists is False:
        states.add("no database")
    else:
        states.add("never read")
    if row.migration_state in ("at head", "behind"):
        states.add(row.migration_state)
    return states


def _safe_next(value: object) -> str | None:
    """A path to go back to after login: on this site only."""
    if not isinstance(value, str) or not value.startswith("/") or value.startswith("//"):
        return None
    return None if any(c in value for c in "\\\r\n") else value


class AdminPage:
    """One admin page: the site and apps it serves, its sessions and templates."""

    def __init__(
        self,
        site: Site,
        apps: Sequence[App],
        *,
        secure: bool,
        lifetime: dt.timedelta,
        login_limit: LoginLimit | None = None,
    ) -> None:
        self.site = site
        self.apps = list(apps)
        self.secure = secure
        self.sessions = Sessions(site.catalog, lifetime=lifetime)
        self.limit = login_limit or LoginLimit()
        self.jobs = JobRunner(self.apps)
        env = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
        )
        self.templates = Jinja2Templates(env=env)

    # plumbing ----------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        g = self._guard
        return [
            Route("/", g(self.home), name="home"),
            Route("/login", self.login_form, methods=["GET"], name="login"),
            Route("/login", self.login, methods=["POST"], name="login_post"),
            Route("/logout", g(self.logout), methods=["POST"], name="logout"),
            Route("/services", g(self.services), name="services"),
            Route("/services/new", g(self.service_new), name="service_new"),
            Route("/services", g(self.service_create), methods=["POST"], name="service_create"),
            Route("/services/{name}/edit", g(self.service_edit), name="service_edit"),
            Route(
                "/services/{name}", g(self.service_update), methods=["POST"], name="service_update"
            ),
            Route(
                "/services/{name}/remove",
                g(self.service_remove),
                methods=["POST"],
                name="service_remove",
            ),
            Route(
                "/services/{name}/test", g(self.service_test), methods=["POST"], name="service_test"
            ),
            Route("/apps", g(self.app_list), name="apps"),
            Route("/apps/{app}", g(self.app_assign), methods=["POST"], name="app_assign"),
            Route("/stores", g(self.stores), name="stores"),
            Route("/stores.json", g(self.stores_json), name="stores_json"),
            Route("/stores/refresh", g(self.refresh), methods=["POST"], name="refresh"),
            Route("/stores/{app}/{store}", g(self.store), name="store"),
            Route("/actions", g(self.actions), methods=["POST"], name="actions"),
            Route("/history", g(self.history), name="history"),
            Route("/jobs/{job_id}.json", g(self.job_json), name="job_json"),
            Route("/jobs/{job_id}", g(self.job), name="job"),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]

    def _guard(self, endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
        """``endpoint`` behind the login, and for a POST behind the session's CSRF token."""

        async def guarded(request: Request) -> Response:
            try:
                login = await run_in_threadpool(self.sessions.find, request.cookies.get(COOKIE))
            except ServiceUnavailable as exc:  # the catalog itself is down
                return self.refuse(request, 503, str(exc))
            if login is None:
                if request.method in ("GET", "HEAD"):
                    target = str(request.url_for("login"))
                    path = request.url.path
                    if path.rstrip("/") != request.scope.get("root_path", "").rstrip("/"):
                        target += "?" + urlencode({"next": path})
                    response: Response = RedirectResponse(target, status_code=303)
                else:
                    response = self.refuse(request, 403, "log in first; nothing was changed")
                if request.cookies.get(COOKIE):  # forged, expired or ended: forget it
                    response.delete_cookie(COOKIE, path=self._cookie_path(request))
                return response
            if request.method == "POST":
                form = await request.form()
                if not self.sessions.csrf_ok(login.token_hash, form.get("csrf")):
                    return self.refuse(
                        request,
                        403,
                        "the form's security token (CSRF) is missing or stale: reload the "
                        "page and try again; nothing was changed",
                        login,
                    )
            await run_in_threadpool(self.site.refresh)
            try:
                return await endpoint(request, login)
            except ServiceUnavailable as exc:
                return self.refuse(request, 503, str(exc), login)
            except StorekeeperError as exc:
                return self.refuse(
                    request, 400 if isinstance(exc, BadInput) else 500, str(exc), login
                )

        guarded.__name__ = endpoint.__name__
        return guarded

    def render(
        self,
        request: Request,
        template: str,
        login: Login | None,
        status: int = 200,
        **context: Any,
    ) -> Response:
        context.setdefault("error", None)
        context.setdefault("message", None)
        context.update(login=login, csrf=login.csrf if login else None)
        return self.templates.TemplateResponse(request, template, context, status_code=status)

    def refuse(
        self, request: Request, status: int, error: str, login: Login | None = None
    ) -> Response:
        return self.render(request, "error.html", login, status, error=error)

    def _cookie_path(self, request: Request) -> str:
        return str(request.scope.get("root_path") or "") or "/"

    def _acting(self, request: Request, login: Login) -> Any:
        return acting(login.user, _client(request))

    # login -------------------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        import secrets

        value = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
        response = self.render(
            request,
            "login.html",
            None,
            form_csrf=self.sessions.csrf_for(f"login:{value}"),
            next=_safe_next(request.query_params.get("next")) or "",
        )
        self._set_cookie(request, response, LOGIN_COOKIE, value, 3600)
        return response

    def _set_cookie(
        self, request: Request, response: Response, name: str, value: str, max_age: int
    ) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path=self._cookie_path(request),
            secure=self.secure,
            httponly=True,
            samesite="strict",
        )

    async def login(self, request: Request) -> Response:
        form = await request.form()
        client = _client(request)
        login_cookie = request.cookies.get(LOGIN_COOKIE)
        if not login_cookie or not self.sessions.csrf_ok(f"login:{login_cookie}", form.get("csrf")):
            return self.refuse(
                request,
                403,
                "the login form's security token (CSRF) is missing or stale: reload the page "
                "and try again",
            )
        wait = self.limit.retry_after(client)
        if wait:
            response = self.refuse(
                request, 429, f"too many failed logins from {client}: try again in {wait} s"
            )
            response.headers["Retry-After"] = str(wait)
            return response
        user = str(form.get("user", ""))
        password = str(form.get("password", ""))
        ok = await run_in_threadpool(self._check_password, user, password, client)
        if not ok:
            self.limit.failed(client)
            return self.render(
                request,
                "login.html",
                None,
                401,
                error="wrong user name or password",
                form_csrf=self.sessions.csrf_for(f"login:{login_cookie}"),
                next=_safe_next(form.get("next")) or "",
            )
        self.limit.succeeded(client)
        cookie = await run_in_threadpool(self.sessions.open, user, client)
        target = _safe_next(form.get("next")) or str(request.url_for("stores").path)
        response = RedirectResponse(target, status_code=303)
        self._set_cookie(
            request, response, COOKIE, cookie, int(self.sessions.lifetime.total_seconds())
        )
        response.delete_cookie(LOGIN_COOKIE, path=self._cookie_path(request))
        return response

    def _check_password(self, user: str, password: str, client: str) -> bool:
        catalog = self.site.catalog
        admin = catalog.admin_user()
        ok = (
            admin is not None
            and verify_password(admin.password_hash, password)
            and user == admin.name
        )
        with acting(user[:63] or "?", client):
            catalog.record("", "", "login", ok=ok, detail="" if ok else "wrong user or password")
        if ok and admin is not None and needs_rehash(admin.password_hash):
            from .security import hash_password

            catalog.rehash_admin_user(admin.name, hash_password(password))
        return ok

    async def logout(self, request: Request, login: Login) -> Response:
        def end() -> None:
            self.sessions.end(login)
            with self._acting(request, login):
                self.site.catalog.record("", "", "logout", ok=True)

        await run_in_threadpool(end)
        response = RedirectResponse(str(request.url_for("login")), status_code=303)
        response.delete_cookie(COOKIE, path=self._cookie_path(request))
        return response

    # pages -------------------------------------------------------------------------------

    async def home(self, request: Request, login: Login) -> Response:
        return RedirectResponse(str(request.url_for("stores")), status_code=303)

    async def services(
        self,
        request: Request,
        login: Login,
        *,
        status: int = 200,
        error: str | None = None,
        message: str | None = None,
    ) -> Response:
        from ..site import service_report

        rows = await run_in_threadpool(service_report, self.site, self.apps)
        return self.render(
            request, "services.html", login, status, rows=rows, error=error, message=message
        )

    async def service_new(self, request: Request, login: Login) -> Response:
        return self.render(request, "service_form.html", login, name="", url="", editing=False)

    async def service_edit(self, request: Request, login: Login) -> Response:
        name = request.path_params["name"]
        service = await run_in_threadpool(self.site.service, name)
        if service.source != "catalog":
            raise BadInput(
                f"service {name!r} comes from {service.source}, not the catalog; change it there"
            )
        from ..site import without_password

        url = without_password(service.url)
        return self.render(
            request,
            "service_form.html",
            login,
            name=name,
            url=url,
            editing=True,
            has_password=service.url.password is not None,
        )

    async def service_create(self, request: Request, login: Login) -> Response:
        return await self._save_service(request, login, editing=False)

    async def service_update(self, request: Request, login: Login) -> Response:
        return await self._save_service(request, login, editing=True)

    async def _save_service(self, request: Request, login: Login, *, editing: bool) -> Response:
        """Test or save the service form; the password typed is never sent back."""
        from ..site import with_password

        form = await request.form()
        name = request.path_params["name"] if editing else str(form.get("name", "")).strip()
        url = str(form.get("url", "")).strip()
        password = str(form.get("password", ""))
        shown: dict[str, Any] = {
            "name": name,
            "url": url,
            "editing": editing,
            "has_password": bool(password),
        }

        def work() -> str:
            full = url
            if password:
                try:
                    full = with_password(url, password)
                except Exception:
                    raise BadInput(
                        f"URL of service {name!r} is not a database URL; expected like "
                        "postgresql://user@host:5432 (the password goes in its own field)"
                    ) from None
            elif editing:
                old = self.site.service(name)
                if old.url.password is not None:
                    full = with_password(url, old.url.password)
            with self._acting(request, login):
                if form.get("do") == "test":
                    return f"ok: reached {self.site.ping_url(name, full)}"
                if form.get("unreachable_ok") != "yes":
                    try:
                        self.site.ping_url(name, full)
                    except ServiceUnavailable as exc:
                        raise ServiceUnavailable(
                            f"{exc}; nothing was saved (tick 'save even if it cannot be "
                            "reached now' to save it anyway)"
                        ) from None
                if editing:
                    self.site.update_service(name, full)
                else:
                    self.site.add_service(name, full)
            return f"service {name!r} {'updated' if editing else 'added'}"

        try:
            said = await run_in_threadpool(work)
        except StorekeeperError as exc:
            status = 502 if isinstance(exc, ServiceUnavailable) else 400
            return self.render(request, "service_form.html", login, status, error=str(exc), **shown)
        if form.get("do") == "test":
            return self.render(request, "service_form.html", login, message=said, **shown)
        return await self.services(request, login, message=said)

    async def service_remove(self, request: Request, login: Login) -> Response:
        name = request.path_params["name"]

        def work() -> None:
            with self._acting(request, login):
                self.site.remove_service(name)

        try:
            await run_in_threadpool(work)
        except BadInput as exc:
            return await self.services(request, login, status=409, error=str(exc))
        return await self.services(request, login, message=f"service {name!r} removed")

    async def service_test(self, request: Request, login: Login) -> Response:
        name = request.path_params["name"]

        def work() -> str:
            service = self.site.service(name)
            return self.site.backend(service).ping()

        try:
            version = await run_in_threadpool(work)
        except ServiceUnavailable as exc:
            return await self.services(request, login, error=str(exc))
        return await self.services(
            request, login, message=f"ok: service {name!r} reached: {version}"
        )

    async def app_list(
        self,
        request: Request,
        login: Login,
        *,
        status: int = 200,
        error: str | None = None,
        message: str | None = None,
    ) -> Response:
        from ..site import app_report

        def work() -> tuple[Any, Any]:
            return app_report(self.site, self.apps), list(self.site.services())

        found, services = await run_in_threadpool(work)
        default = self.site.config.default_service.value or None
        return self.render(
            request,
            "apps.html",
            login,
            status,
            apps=found,
            services=services,
            default=default,
            error=error,
            message=message,
        )

    async def app_assign(self, request: Request, login: Login) -> Response:
        """Save every drop-down of one app's form at once: all checked before any is saved."""
        from ..site import app_report

        form = await request.form()
        app = find_app(self.apps, request.path_params["app"])

        def work() -> list[str]:
            (report,) = app_report(self.site, [app])
            changes: list[tuple[str, str]] = []
            for setting in report.settings:
                wanted = form.get(f"setting.{setting.name}")
                if wanted is None:
                    continue
                wanted = str(wanted)
                current = setting.service if setting.in_catalog else ""
                if wanted != current:
                    if wanted:
                        self.site.service(wanted)  # unknown: refused before anything is saved
                    changes.append((setting.name, wanted))
            done = []
            with self._acting(request, login):
                for name, wanted in changes:
                    if wanted:
                        self.site.assign(app.name, name, wanted)
                        done.append(f"{app.name}.{name} -> {wanted}")
                    else:
                        self.site.unassign(app.name, name)
                        done.append(f"{app.name}.{name} unassigned")
            return done

        try:
            done = await run_in_threadpool(work)
        except BadInput as exc:
            return await self.app_list(
                request, login, status=400, error=f"{exc}; nothing was saved"
            )
        said = "; ".join(done) if done else f"app {app.name}: no change"
        return await self.app_list(request, login, message=said)

    def _filtered(
        self, request: Request, rows: list[StoreStatus]
    ) -> tuple[list[Any], dict[str, str]]:
        chosen = {k: request.query_params.get(k, "") for k in ("app", "kind", "service", "state")}
        out = []
        for row in rows:
            if chosen["app"] and row.app != chosen["app"]:
                continue
            if chosen["kind"] and (row.kind or "") != chosen["kind"]:
                continue
            if chosen["service"] and (row.service or "") != chosen["service"]:
                continue
            if chosen["state"] and chosen["state"] not in _state_of(row):
                continue
            out.append(row)
        return out, chosen

    async def stores(self, request: Request, login: Login) -> Response:
        from ..provision import recorded_status

        rows = await run_in_threadpool(recorded_status, self.apps)
        shown, chosen = self._filtered(request, rows)
        try:
            page = max(1, int(request.query_params.get("page", "1")))
        except ValueError:
            raise BadInput(f"page {request.query_params.get('page')!r} is not a number") from None
        pages = max(1, math.ceil(len(shown) / PER_PAGE))
        page = min(page, pages)
        query = {k: v for k, v in chosen.items() if v}
        on_page = shown[(page - 1) * PER_PAGE : page * PER_PAGE]
        return self.render(
            request,
            "stores.html",
            login,
            rows=on_page,
            total=len(shown),
            every=len(rows),
            page=page,
            pages=pages,
            chosen=chosen,
            query=query,
            prev_query=urlencode({**query, "page": page - 1}),
            next_query=urlencode({**query, "page": page + 1}),
            apps=sorted({r.app for r in rows}),
            kinds=sorted({r.kind for r in rows if r.kind}),
            services=sorted({r.service for r in rows if r.service}),
            states=STATES,
            actions=[a for a in ACTIONS if a not in ("restore", "drop")],
            states_of={f"{r.app}.{r.store}": sorted(_state_of(r)) for r in on_page},
            # A "replicas (lag)" column only when some store has replicas (as `status` has).
            replicated=any(r.replicas for r in rows),
            # One url_for, not one per row: a route lookup per link was a third of the render.
            store_url=str(request.url_for("store", app="A", store="S"))[: -len("A/S")],
        )

    async def stores_json(self, request: Request, login: Login) -> Response:
        """The stores table's rows as ``status --json`` prints them (from the recorded state)."""
        from ..provision import recorded_status

        rows = await run_in_threadpool(recorded_status, self.apps)
        shown, _ = self._filtered(request, rows)
        return JSONResponse([r.as_dict() for r in shown])

    async def refresh(self, request: Request, login: Login) -> Response:
        """Read every store itself and record what was found (the stores table's source)."""
        from ..provision import status

        def work() -> None:
            with self._acting(request, login):
                status(self.apps, record=True)

        await run_in_threadpool(work)
        return RedirectResponse(str(request.url_for("stores")), status_code=303)

    async def store(self, request: Request, login: Login) -> Response:
        from ..backup import backups
        from ..provision import recorded_status

        app = find_app(self.apps, request.path_params["app"])
        name = request.path_params["store"]

        def work() -> tuple[Any, Any, Any, str]:
            rows = [r for r in recorded_status([app]) if r.store == name]
            if not rows:
                from .actions import _check_store

                _check_store(app, name)
            try:
                found = backups(app, name)
                problem = ""
            except StorekeeperError as exc:
                found, problem = [], str(exc)
            events = self.site.catalog.history(app.name, name, limit=20)
            return rows[0], list(reversed(found)), events, problem

        row, found, events, problem = await run_in_threadpool(work)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M")
        return self.render(
            request,
            "store.html",
            login,
            row=row,
            backups=found,
            backup_problem=problem,
            events=events,
            suggested_as=f"{name}_restored_{stamp}"[:63],
            actions=[a for a in ACTIONS if a not in ("restore", "drop")],
        )

    async def actions(self, request: Request, login: Login) -> Response:
        """Run one action on each store chosen, in turn; the results as a table."""
        form = await request.form()
        action = str(form.get("action", ""))
        targets = [str(t) for t in form.getlist("target")]
        options = {k: str(v) for k, v in form.items() if k not in ("csrf", "action", "target")}
        if not targets:
            raise BadInput("choose at least one store; nothing was done")
        if action in BACKGROUND:  # long: a job, whose page shows its progress
            job = self.jobs.submit(
                action, targets, options, actor=login.user, client=_client(request)
            )
            return RedirectResponse(str(request.url_for("job", job_id=job.id)), status_code=303)

        def work() -> list[ActionResult]:
            return [
                run_action(self.apps, action, t, options, actor=login.user, client=_client(request))
                for t in targets
            ]

        results = await run_in_threadpool(work)
        status = 200
        if any(not r.ok for r in results):
            status = 400 if all(r.exit_code == 2 for r in results if not r.ok) else 409
        return self.render(request, "actions.html", login, status, action=action, results=results)

    async def job(self, request: Request, login: Login) -> Response:
        """A background job's page: its progress (live with JavaScript, else the page reloads
        itself) and, once over, the summary the command line prints."""
        job = self.jobs.get(request.path_params["job_id"])
        status = 200
        if job.over and any(not r.ok for r in job.results):  # as the actions' page says it
            status = 400 if all(r.exit_code == 2 for r in job.results if not r.ok) else 409
        return self.render(request, "job.html", login, status, job=job)

    async def job_json(self, request: Request, login: Login) -> Response:
        """A job's state and its progress lines from number ``since`` on (what jobs.js polls)."""
        job = self.jobs.get(request.path_params["job_id"])
        try:
            since = int(request.query_params.get("since", "0"))
        except ValueError:
            raise BadInput(f"since {request.query_params.get('since')!r} is not a number") from None
        return JSONResponse(job.as_dict(since))

    async def history(self, request: Request, login: Login) -> Response:
        q = request.query_params
        chosen = {k: q.get(k, "") for k in ("app", "store", "action", "actor", "ok")}
        filters: dict[str, Any] = {k: v for k, v in chosen.items() if v and k != "ok"}
        if chosen["ok"] in ("yes", "no"):
            filters["ok"] = chosen["ok"] == "yes"
        try:
            page = max(1, int(q.get("page", "1")))
        except ValueError:
            raise BadInput(f"page {q.get('page')!r} is not a number") from None
        catalog = self.site.catalog

        def work() -> tuple[Any, int]:
            events = catalog.history(limit=PER_PAGE, offset=(page - 1) * PER_PAGE, **filters)
            return events, catalog.history_count(**filters)

        events, total = await run_in_threadpool(work)
        query = {k: v for k, v in chosen.items() if v}
        return self.render(
            request,
            "history.html",
            login,
            events=events,
            chosen=chosen,
            total=total,
            page=page,
            pages=max(1, math.ceil(total / PER_PAGE)),
            prev_query=urlencode({**query, "page": page - 1}),
            next_query=urlencode({**query, "page": page + 1}),
        )


def build(
    site: Site,
    apps: Sequence[App],
    *,
    secure: bool,
    lifetime: dt.timedelta,
    login_limit: LoginLimit | None = None,
) -> Starlette:
    """The Starlette app of an :class:`AdminPage`, with its security headers."""
    page = AdminPage(site, apps, secure=secure, lifetime=lifetime, login_limit=login_limit)
    app = Starlette(routes=page.routes())
    app.state.page = page
    app.add_middleware(SecurityHeaders, secure=secure)
    return app
