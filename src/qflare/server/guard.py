"""The abuse guard: an ASGI middleware that meters anonymous traffic before any route runs.

A request is *authenticated* when its ``X-QFLARE-Session`` header names a live session; the
route then checks the session's proof (the poll's tag, the result's AEAD frame) and charges
the **device**'s token bucket. Every other request is *anonymous* and is charged to its
**client IP** here, before routing, decoding or reading a body, and counted among the
unauthenticated connections in progress (:class:`~qflare.server.limits.Inflight`): a burst of
bad tokens from one address exhausts that address's anonymous budget, not the budget of the
honest devices that share it. A poll or result naming a session that is not live is answered
here too (401 ``session_unknown``), once charged, without routing it.

An anonymous request over budget (429) or over the cap (503) is answered with
``Connection: close``: requests pipelined behind it are dropped unread, so a flood cannot make the
server buffer its backlog. Any other answer that leaves before the request body was read gets
``Connection: close`` too unless the rest of the body is small, so nobody keeps a connection busy
by sending a large body to a server that has already said no.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qflare.server.context import ServerContext
from qflare.server.errors import ApiError, problem_for
from qflare.server.sessions import unknown_session

SESSION_HEADER = b"x-qflare-session"
SESSION_ROUTES = frozenset({("GET", "/v1/tasks"), ("POST", "/v1/results")})
"""The operations whose ``X-QFLARE-Session`` header is their credential."""
SMALL_BODY = 64 * 1024  # an unread body up to this size is drained, not a reason to close
_CLOSE = (b"connection", b"close")


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def client_ip(scope: Scope) -> str:
    """The peer address of a request (``unknown`` without one)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def _large_body(scope: Scope) -> bool:
    """Whether the request announces a body too large (or of unknown size) to drain."""
    if _header(scope, b"transfer-encoding") is not None:
        return True
    length = _header(scope, b"content-length")
    return length is not None and (not length.isdigit() or int(length) > SMALL_BODY)


class AbuseGuard:
    """ASGI middleware: per-IP budget and cap for anonymous requests, close after refusals.

    Args:
        app: The application to guard (its ``state.ctx`` is the :class:`ServerContext`).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Meter and count an anonymous request, then run it; pass authenticated ones."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx: ServerContext = scope["app"].state.ctx
        if _large_body(scope):
            receive, send = _close_unless_read(receive, send)
        session = _header(scope, SESSION_HEADER)
        now = ctx.clock()
        if session is not None and ctx.sessions.is_live(session.decode("latin-1"), now):
            await self.app(scope, receive, send)
            return
        ip = client_ip(scope)
        try:
            ctx.limiter.check(f"ip:{ip}", now)
            if session is not None and (scope["method"], scope["path"]) in SESSION_ROUTES:
                raise unknown_session()  # no route, decoding or body for a dead session
        except ApiError as exc:
            await _refuse(exc, scope, receive, send)
            return
        if not ctx.unauthenticated.acquire(ip):
            busy = ApiError(
                503,
                "too_many_unauthenticated",
                "too many unauthenticated requests in progress; retry later",
                headers={"Retry-After": "1"},
            )
            await _refuse(busy, scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            ctx.unauthenticated.release(ip)


async def _refuse(exc: ApiError, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer an anonymous request that is over budget, and close its connection.

    Requests pipelined behind it are dropped unread: a flood cannot queue work (or buffered
    bytes) on a connection, it must open a new one, which the connection caps count.
    """
    if exc.status in (429, 503):
        exc.headers["Connection"] = "close"
    await problem_for(exc)(scope, receive, send)


def _close_unless_read(receive: Receive, send: Send) -> tuple[Receive, Send]:
    """Wrap ``receive``/``send`` so an answer sent before the whole body was read closes."""
    done = False

    async def watched_receive() -> Message:
        nonlocal done
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            done = True
        return message

    async def closing_send(message: Message) -> None:
        if message["type"] == "http.response.start" and not done:
            message = {**message, "headers": [*message.get("headers", []), _CLOSE]}
        await send(message)

    return watched_receive, closing_send
