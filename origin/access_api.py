"""Origin API for access control: policies, products, grants, playback tokens, key set.

Auth: ``Authorization: Bearer KEY`` with an API key (``meshcast keys create NAME --kind api``;
it acts for creator NAME and only on NAME's streams, assets and products) or an admin key
(``--kind admin``: operators and the payment webhook; the only kind that records grants).
Failed keys count against the client address and the presented key id (``Lockout``): 429
instead of 401 once either is over the limit; a valid key is always accepted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from meshcast.bodies import read_json
from meshcast.http import client_ip, json_error
from meshcast.keys import (
    ADMIN_KIND,
    API_KIND,
    STREAM_KIND,
    InvalidName,
    KeyRejected,
    KeyStore,
    validate_stream_name,
)
from meshcast.paths import MediaPath
from meshcast.ratelimit import Lockout, credential_id
from meshcast.refused import Refused
from meshcast.tokens import (
    TOKEN_HEADER,
    Claims,
    TokenError,
    authorize,
    token_from_query,
    valid_scope,
)
from origin.entitlements import ACCESS_MODES, AccessError, AccessStore
from origin.openapi import openapi_schema
from origin.signing import Keyring

log = logging.getLogger(__name__)

MAX_JSON_BODY: Final = 16 * 1024
DEFAULT_TOKEN_TTL: Final = 600
MAX_TOKEN_TTL: Final = 24 * 3600
_ID_MAX: Final = 128


@dataclass(frozen=True, slots=True)
class Principal:
    kind: str  # api | admin
    owner: str  # the API key's NAME (admin: the admin key's NAME)

    @property
    def admin(self) -> bool:
        return self.kind == ADMIN_KIND

    def may_manage(self, owner: str | None) -> bool:
        return self.admin or (owner is not None and owner == self.owner)


class ApiError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.extra = extra


class AccessApi:
    def __init__(
        self,
        store: AccessStore,
        keys: KeyStore,
        keyring: Keyring,
        limiter: Lockout,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.keys = keys
        self.keyring = keyring
        self.limiter = limiter
        self.clock = clock

    # ---- auth -------------------------------------------------------------------------

    def principal(self, request: Request, stream_keys: bool = False) -> Principal:
        """Who an API or admin key acts for; with ``stream_keys``, a stream key acts for
        its stream's owner too (a publisher clipping its own stream)."""
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise ApiError(401, "missing 'Authorization: Bearer API_KEY'")
        kind = ADMIN_KIND if key.startswith(f"{ADMIN_KIND}_") else API_KIND
        if stream_keys and key.startswith(f"{STREAM_KIND}_"):
            kind = STREAM_KIND
        try:
            owner = self.keys.verify(key, kind)
        except KeyRejected as exc:
            retry = self.limiter.failed(client_ip(request), credential_id(key))
            if retry is not None:
                raise ApiError(
                    429, "too many failed key attempts; retry later", retry_after=retry
                ) from None
            raise ApiError(401, f"API key refused: {exc}") from None
        if kind == STREAM_KIND:
            return Principal(API_KIND, self.keys.owner_of(owner) or owner)
        return Principal(kind, owner)

    def private_view(self, request: Request) -> Callable[[str], bool] | Response:
        """Which streams' private details (the publisher's address) this request may see:
        none without credentials, its owner's with an API key, all with an admin key; the
        refusal of a bad key."""
        if "authorization" not in request.headers:
            return lambda name: False
        try:
            principal = self.principal(request)
        except ApiError as exc:
            return _api_error(exc)
        return lambda name: principal.may_manage(self.keys.owner_of(name))

    # ---- playback guard (origin side of the same check the edges make) ---------------

    def guard(self, request: Request, media: MediaPath) -> tuple[Response | None, str | None]:
        """(refusal, None) or (None, token to carry into child URLs, None if public)."""
        if self.store.policy(f"{media.kind}/{media.name}").access == "public":
            return None, None
        token = token_from_query(request.url.query) or request.headers.get(TOKEN_HEADER)
        refused = self._refusal(media.kind, media.name, token)
        if refused is not None:
            return json_error(
                refused.status, str(refused), reason=refused.reason, path=request.url.path
            ), None
        return None, token

    def play_check(self, name: str, token: str | None) -> str | None:
        """RTMP playback of live NAME (token from the play name's query): None when
        allowed, else why not."""
        refused = self._refusal("live", name, token)
        return None if refused is None else str(refused)

    def _refusal(self, kind: str, name: str, token: str | None) -> TokenError | None:
        policy = self.store.policy(f"{kind}/{name}")
        if policy.access == "public":
            return None
        try:
            authorize(token, kind, name, policy.owner, self.keyring.public_keys(), time.time())
        except TokenError as exc:
            return exc
        return None

    # ---- handlers ---------------------------------------------------------------------

    async def key_set(self, request: Request) -> Response:
        return JSONResponse(self.keyring.key_set(), headers={"Cache-Control": "public, max-age=60"})

    async def get_policy(self, request: Request) -> Response:
        scope = _scope(request)
        return JSONResponse(self.store.policy(scope).to_json())

    async def put_policy(self, request: Request) -> Response:
        principal = self.principal(request)
        scope = _scope(request)
        body = await _json_object(request)
        access = body.get("access")
        if access not in ACCESS_MODES:
            raise ApiError(400, f"'access' must be one of {', '.join(ACCESS_MODES)}")
        current = self.store.policy(scope)
        new_owner = body.get("owner")
        if new_owner is not None:
            # Assigning ownership (e.g. a VOD asset to its creator) is an operator's act.
            if not principal.admin:
                raise ApiError(403, "only an admin key may set 'owner'")
            new_owner = _owner(new_owner)
        elif not principal.may_manage(current.owner):
            raise ApiError(403, f"{scope} is not yours to manage")
        return JSONResponse(self.store.set_policy(scope, access, new_owner).to_json())

    async def create_product(self, request: Request) -> Response:
        principal = self.principal(request)
        body = await _json_object(request)
        owner = principal.owner
        if principal.admin:
            owner = _owner(body.get("owner"))
        scopes = body.get("scopes")
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise ApiError(400, "'scopes' must be a list of strings")
        product = self.store.create_product(
            owner,
            _choice(body.get("kind"), ("tvod", "svod"), "kind"),
            _text(body.get("name"), "name"),
            _int(body.get("price_cents"), "price_cents", 0, 10**9),
            _text(body.get("currency", "USD"), "currency", 8),
            _int(body.get("duration_s"), "duration_s", 1, 10 * 365 * 86400),
            scopes,
        )
        return JSONResponse(product.to_json(), status_code=201)

    async def list_products(self, request: Request) -> Response:
        principal = self.principal(request)
        products = self.store.products(None if principal.admin else principal.owner)
        return JSONResponse({"products": [p.to_json() for p in products]})

    async def create_grant(self, request: Request) -> Response:
        principal = self.principal(request)
        if not principal.admin:
            raise ApiError(403, "grants are recorded by an admin/webhook key")
        body = await _json_object(request)
        grant = self.store.grant(
            _ident(body.get("viewer"), "viewer"), _text(body.get("product"), "product")
        )
        return JSONResponse(grant.to_json(), status_code=201)

    async def mint_token(self, request: Request) -> Response:
        principal = self.principal(request)
        body = await _json_object(request)
        viewer = _ident(body.get("viewer"), "viewer")
        scope = body.get("scope")
        if not isinstance(scope, str) or not valid_scope(scope):
            raise ApiError(400, "'scope' must be live/NAME, vod/ASSET or catalog/OWNER")
        ttl = _int(body.get("ttl", DEFAULT_TOKEN_TTL), "ttl", 1, MAX_TOKEN_TTL)
        kind, _, name = scope.partition("/")
        owner = name if kind == "catalog" else self.store.policy(scope).owner
        if not principal.may_manage(owner):
            raise ApiError(403, f"{scope} is not yours to sell")
        found = self.store.active_grant(viewer, scope)
        if found is None:
            raise ApiError(
                403, f"viewer {viewer!r} has no active entitlement for {scope}", reason="purchase"
            )
        grant, product = found
        now = int(self.clock())
        # Never outlives the grant: a rental's last token ends with the rental.
        exp = min(now + ttl, int(grant.expires_at))
        claims = Claims(scope=scope, exp=exp, nbf=now, iat=now, sub=viewer)
        token = self.keyring.mint(claims)
        return JSONResponse(
            {
                "token": token,
                "scope": scope,
                "exp": exp,
                "kid": self.keyring.current.kid,
                "product": product.id,
                "grant": grant.id,
            },
            status_code=201,
            headers={"Cache-Control": "no-store"},
        )

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_schema())


def _scope(request: Request) -> str:
    scope = f"{request.path_params['kind']}/{request.path_params['name']}"
    if not valid_scope(scope) or scope.startswith("catalog/"):
        raise ApiError(404, "not found: use /api/access/live/NAME or /api/access/vod/ASSET")
    return scope


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = await read_json(request, MAX_JSON_BODY)
    except Refused as exc:
        raise ApiError(exc.code, exc.reason) from None
    if not isinstance(body, dict):
        raise ApiError(400, "body must be a JSON object")
    return body


def _text(value: object, field: str, max_len: int = _ID_MAX) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= max_len:
        raise ApiError(400, f"'{field}' must be a string of 1-{max_len} characters")
    return value


def _ident(value: object, field: str) -> str:
    """Viewer ids: printable ASCII without spaces (they end up in tokens and logs)."""
    text = _text(value, field)
    if not all("!" <= c <= "~" for c in text):
        raise ApiError(400, f"'{field}' must be printable ASCII without spaces")
    return text


def _owner(value: object) -> str:
    try:
        return validate_stream_name(_text(value, "owner", 64))
    except InvalidName as exc:
        raise ApiError(400, f"'owner': {exc}") from None


def _int(value: object, field: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ApiError(400, f"'{field}' must be an integer in [{low}, {high}]")
    return value


def _choice(value: object, choices: tuple[str, ...], field: str) -> str:
    if value not in choices:
        raise ApiError(400, f"'{field}' must be one of {', '.join(choices)}")
    assert isinstance(value, str)
    return value


def _api_error(exc: ApiError | AccessError) -> Response:
    extra = exc.extra if isinstance(exc, ApiError) else {}
    response = json_error(exc.status, str(exc), **extra)
    if exc.status == 429:
        response.headers["Retry-After"] = str(extra.get("retry_after", 60))
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


def _wrap(handler: Callable[[Request], Awaitable[Response]]) -> Callable[..., Any]:
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except (ApiError, AccessError) as exc:
            return _api_error(exc)

    return endpoint


def access_routes(api: AccessApi) -> list[BaseRoute]:
    return [
        Route("/openapi.json", _wrap(api.openapi)),
        Route("/api/tokens/keys", _wrap(api.key_set)),
        Route("/api/tokens", _wrap(api.mint_token), methods=["POST"]),
        Route("/api/access/{kind}/{name}", _wrap(api.get_policy), methods=["GET"]),
        Route("/api/access/{kind}/{name}", _wrap(api.put_policy), methods=["PUT"]),
        Route("/api/products", _wrap(api.create_product), methods=["POST"]),
        Route("/api/products", _wrap(api.list_products), methods=["GET"]),
        Route("/api/entitlements", _wrap(api.create_grant), methods=["POST"]),
    ]
