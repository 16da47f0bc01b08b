"""Client of the backend's /edge API (see backend/openapi.yaml for the contract)."""

from __future__ import annotations

import asyncio
from typing import Any, Dict, List, Optional
from urllib.parse import quote

import aiohttp

# Answers about the shard or the moment (token, disabled shard, timeout, rate), not about what
# was sent: a call answered so is worth sending again as it is.
NOT_ABOUT_THE_CONTENT = (401, 403, 408, 429)
# The backend's own sentence is kept to this many characters, first line only.
REASON_CHARS = 300


class BackendError(Exception):
    """A call failed: `status` is the HTTP status, or None when the backend was unreachable.

    `reason` is the backend's own sentence (its `{"error": ...}`) when it gave one.
    """

    def __init__(self, message: str, status: Optional[int] = None, reason: Optional[str] = None):
        super().__init__(message)
        self.status = status
        self.reason = reason

    @property
    def refused(self) -> bool:
        """Whether the backend refused what was sent: a 4xx about the content of the call."""
        return (
            self.status is not None
            and 400 <= self.status < 500
            and self.status not in NOT_ABOUT_THE_CONTENT
        )


STATUS_REASONS = {
    # The usual cause on a new shard: its row was written to another database than the one the
    # backend at backend.url serves (a DSN and a URL of different backends).
    401: (
        "the backend does not know this shard's token; check backend.token_file, and that the "
        "shard was registered in the database of the backend at backend.url"
    ),
    403: "the backend has disabled this shard",
}


async def _error_sentence(response: aiohttp.ClientResponse) -> Optional[str]:
    """The sentence of an `{"error": ...}` answer, first line and bounded; None without one."""
    try:
        body = await response.json(content_type=None)
    except (aiohttp.ClientError, ValueError):
        return None
    sentence = body.get("error") if isinstance(body, dict) else None
    if not isinstance(sentence, str) or not sentence.strip():
        return None
    return sentence.strip().splitlines()[0][:REASON_CHARS]


class Backend:
    def __init__(self, url: str, token: str, timeout_s: float):
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}
        self.timeout_s = timeout_s
        self._session: Optional[aiohttp.ClientSession] = None
        self.last_error: Optional[str] = "no call made yet"

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(headers=self._headers)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def reachable(self) -> bool:
        return self.last_error is None

    async def _call(
        self, method: str, path: str, body: Any = None, timeout_s: Optional[float] = None
    ) -> Dict[str, Any]:
        assert self._session is not None, "Backend.start() first"
        timeout = aiohttp.ClientTimeout(total=timeout_s or self.timeout_s)
        try:
            async with self._session.request(
                method, self.url + path, json=body, timeout=timeout
            ) as response:
                if response.status >= 400:
                    reason = STATUS_REASONS.get(response.status, "the backend refused the call")
                    error = BackendError(
                        f"{method} {path} answered {response.status}: {reason}",
                        response.status,
                        await _error_sentence(response),
                    )
                    self.last_error = str(error)
                    raise error
                payload = await response.json(content_type=None)
        except asyncio.TimeoutError:
            self.last_error = f"{method} {path} timed out"
            raise BackendError(self.last_error) from None
        except (aiohttp.ClientError, OSError, ValueError) as error:
            kind = type(error).__name__
            self.last_error = f"{method} {path} failed: {kind} {error}".strip()
            raise BackendError(self.last_error) from None
        if not isinstance(payload, dict):
            self.last_error = f"{method} {path} answered something other than a JSON object"
            raise BackendError(self.last_error)
        self.last_error = None
        return payload

    async def register(self, agent_id: str, version: str, host: Optional[str]) -> Dict[str, Any]:
        body = {"agent_id": agent_id, "version": version, "host": host}
        return await self._call("POST", "/edge/register", body)

    async def heartbeat(self, body: Dict[str, Any]) -> Dict[str, Any]:
        return await self._call("POST", "/edge/heartbeat", body)

    async def inbound(self, events: List[Dict[str, Any]]) -> Dict[str, Any]:
        """Forwards a batch; the answer's `accepted` is a list of guid strings, checked here."""
        try:
            answer = await self._call("POST", "/edge/inbound", {"events": events})
        except BackendError as error:
            if error.refused:
                # The backend answered, so it is reachable; the events it refused are the
                # inbound side's to report.
                self.last_error = None
            raise
        accepted = answer.get("accepted")
        if not isinstance(accepted, list) or not all(isinstance(g, str) for g in accepted):
            self.last_error = "POST /edge/inbound answered without a list of accepted guids"
            raise BackendError(self.last_error)
        return answer

    async def commands(self, wait_s: int) -> List[Dict[str, Any]]:
        answer = await self._call(
            "GET", f"/edge/commands?wait={wait_s}", timeout_s=wait_s + self.timeout_s
        )
        commands = answer.get("commands") or []
        return [c for c in commands if isinstance(c, dict)]

    async def result(self, command_id: str, status: str, detail: str) -> None:
        path = f"/edge/commands/{quote(command_id, safe='')}/result"
        await self._call("POST", path, {"status": status, "detail": detail})
