"""Operator sessions for the status page: a random id in a cookie, the rest on the server.

Logging in proves the operator token once (same_token, constant time); the
browser then holds only a random session id (256 bits) in an HttpOnly,
SameSite=Strict cookie, never the token itself. Each session carries its own
CSRF token, put in a hidden field of every form and compared on every POST
(the synchronizer-token pattern, OWASP CSRF cheat sheet): SameSite=Strict
already keeps other sites' forms from sending the cookie, the field guards
the browsers and proxies that do not honour it.

Bounded and expiring: at most MAX_SESSIONS live at once (the oldest go first)
and each ends TTL seconds after login, so a flood of logins cannot grow the
daemon's memory and a forgotten browser does not stay logged in for ever.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

COOKIE = "bootd_session"
MAX_SESSIONS = 1024
TTL = 12 * 3600.0


@dataclass(frozen=True, slots=True)
class Session:
    csrf: str
    expires: float

    def csrf_ok(self, given: str) -> bool:
        return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), self.csrf.encode())


class Sessions:
    def __init__(self, *, limit: int = MAX_SESSIONS, ttl: float = TTL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._live: OrderedDict[str, Session] = OrderedDict()  # oldest first
        self._limit, self._ttl, self._clock = limit, ttl, clock

    def __len__(self) -> int:
        return len(self._live)

    def create(self) -> tuple[str, Session]:
        now = self._clock()
        while self._live and (len(self._live) >= self._limit
                              or next(iter(self._live.values())).expires <= now):
            self._live.popitem(last=False)
        sid, session = secrets.token_urlsafe(32), Session(secrets.token_urlsafe(32), now + self._ttl)
        self._live[sid] = session
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        session = self._live.get(sid) if sid else None
        if session is not None and session.expires <= self._clock():
            del self._live[sid]  # type: ignore[arg-type]  # sid is set: session was found
            return None
        return session

    def drop(self, sid: str | None) -> None:
        if sid:
            self._live.pop(sid, None)
