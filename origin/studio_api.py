"""What the creator studio (``/studio/``) needs beyond the public APIs: who an API key
is (sign-in), and the owner's stream keys (list, create, revoke).

Stream names are global (they are URL path segments): creating a key for a name another
owner's key holds is refused (409), and a creator only sees and revokes keys they own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from meshcast.keys import (
    STREAM_KIND,
    DuplicateName,
    InvalidName,
    KeyRecord,
    KeyStore,
    UnknownName,
    validate_stream_name,
)
from meshcast.paths import rtmp_publish_url
from origin.access_api import AccessApi, ApiError, _json_object, _wrap

log = logging.getLogger(__name__)


def _key_json(record: KeyRecord) -> dict[str, Any]:
    return {
        "name": record.name,
        "owner": record.owner or record.name,
        "created": record.created,
        "revoked": record.revoked,
        "record": record.record,
    }


class StudioApi:
    def __init__(self, api: AccessApi, keys: KeyStore, rtmp_port: Callable[[], int]) -> None:
        self.api = api
        self.keys = keys
        self.rtmp_port = rtmp_port

    def _stream_keys(self, owner: str | None) -> list[KeyRecord]:
        return [
            r
            for r in self.keys.list()
            if r.kind == STREAM_KIND and (owner is None or (r.owner or r.name) == owner)
        ]

    async def me(self, request: Request) -> Response:
        """Sign-in: 200 with who the key acts for, or 401 saying why it is refused."""
        principal = self.api.principal(request)
        base = str(request.base_url).rstrip("/")
        return JSONResponse(
            {
                "owner": principal.owner,
                "kind": principal.kind,
                # The host the creator reached us at: what OBS can reach too.
                "rtmp": rtmp_publish_url(request.url.hostname or "127.0.0.1", self.rtmp_port()),
                "whip": f"{base}/whip/",
                "origin": base,
            },
            headers={"Cache-Control": "no-store"},
        )

    async def list_keys(self, request: Request) -> Response:
        principal = self.api.principal(request)
        owner = None if principal.admin else principal.owner
        records = self._stream_keys(owner)
        return JSONResponse({"keys": [_key_json(r) for r in records]})

    async def create_key(self, request: Request) -> Response:
        principal = self.api.principal(request)
        body = await _json_object(request)
        name = body.get("name")
        record = body.get("record", True)
        if not isinstance(name, str):
            raise ApiError(400, "'name' must be a string (the stream name)")
        if not isinstance(record, bool):
            raise ApiError(400, "'record' must be true or false")
        try:
            validate_stream_name(name)
        except InvalidName as exc:
            raise ApiError(400, str(exc)) from None
        try:
            key = self.keys.create(name, STREAM_KIND, principal.owner, record)
        except DuplicateName:
            raise ApiError(409, f"stream name {name!r} is taken; choose another") from None
        log.info("studio: %s created the stream key of %s", principal.owner, name)
        return JSONResponse(
            {"name": name, "key": key, "record": record, "owner": principal.owner},
            status_code=201,
            headers={"Cache-Control": "no-store"},
        )

    async def revoke_key(self, request: Request) -> Response:
        principal = self.api.principal(request)
        name = request.path_params["name"]
        owner = self.keys.owner_of(name)
        if owner is None:
            raise ApiError(404, f"no active stream key named {name!r}")
        if not principal.may_manage(owner):
            raise ApiError(403, f"the stream key of {name!r} is not yours")
        try:
            self.keys.revoke(name, STREAM_KIND)
        except UnknownName as exc:
            raise ApiError(404, str(exc)) from None
        log.info("studio: %s revoked the stream key of %s", principal.owner, name)
        return Response(status_code=204)

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/api/me", _wrap(self.me), methods=["GET"]),
            Route("/api/keys", _wrap(self.list_keys), methods=["GET"]),
            Route("/api/keys", _wrap(self.create_key), methods=["POST"]),
            Route("/api/keys/{name}", _wrap(self.revoke_key), methods=["DELETE"]),
        ]
