"""The origin API's OpenAPI 3.0 document (``GET /openapi.json``), written by hand: it is the
contract schemathesis checks the implementation against (tests/e2e/test_openapi.py)."""

from __future__ import annotations

from typing import Any

_ERROR = {
    "description": "error",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["error", "status"],
                "properties": {"error": {"type": "string"}, "status": {"type": "integer"}},
            }
        }
    },
}
_NAME = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"}
_NAME_PARAM = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
_VIEWER = {"type": "string", "pattern": "^[!-~]{1,128}$"}
_SCOPE = {"type": "string", "pattern": "^(live|vod|catalog)/[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"}
_TEXT = {"type": "string", "minLength": 1, "maxLength": 128}
_BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
_SCOPE_PARAMS = [
    {
        "name": "kind",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "enum": ["live", "vod"]},
    },
    {
        "name": "name",
        "in": "path",
        "required": True,
        "schema": _NAME,
    },
]
_POLICY = {
    "type": "object",
    "required": ["scope", "access", "owner"],
    "properties": {
        "scope": {"type": "string"},
        "access": {"type": "string", "enum": ["public", "token"]},
        "owner": {"type": "string", "nullable": True},
    },
}

# A media segment of a live stream or VOD asset (meshcast/inference.py checks the rendition
# against the model: a video rung for moderation, audio for captions).
_SEGMENT = {
    "type": "string",
    "pattern": (
        "^/(live|vod)/[A-Za-z0-9][A-Za-z0-9._-]{0,63}/([0-9]{2,4}p|audio)/[0-9]{1,12}[.]m4s$"
    ),
}
# Content pinned on the network's storage: a raw sha2-256 CIDv1 in base32 (meshcast/cid.py).
_CID = {"type": "string", "pattern": "^b[a-z2-7]{58}$"}
_INPUT = {
    "oneOf": [
        {
            "type": "object",
            "required": ["path"],
            "additionalProperties": False,
            "properties": {
                "path": {
                    "anyOf": [_SEGMENT, {"type": "string", "pattern": "^/ipfs/b[a-z2-7]{58}$"}]
                }
            },
        },
        {
            "type": "object",
            "required": ["cid"],
            "additionalProperties": False,
            "properties": {"cid": _CID},
        },
    ]
}
_JOB = {
    "type": "object",
    "required": ["id", "model", "input", "state", "attempts", "spot_check"],
    "properties": {
        "id": {"type": "string"},
        "model": {"type": "string"},
        "input": {"type": "object"},
        "state": {"type": "string", "enum": ["queued", "running", "done", "failed"]},
        "node": {"type": "string", "nullable": True},
        "attempts": {"type": "array", "items": {"type": "object"}},
        "result": {"type": "object", "nullable": True},
        "inference_seconds": {"type": "integer", "nullable": True},
        "reason": {"type": "string", "nullable": True},
        "spot_check": {"type": "object"},
    },
}


def _json(schema: dict[str, Any], description: str = "ok") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(code): _ERROR for code in codes}


def openapi_schema() -> dict[str, Any]:
    obj = {"type": "object"}
    return {
        "openapi": "3.0.3",
        "info": {"title": "meshcast origin API", "version": "1"},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/healthz": {"get": {"responses": {"200": _json(obj)}}},
            "/api/streams": {
                "get": {
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["streams"],
                                "properties": {"streams": {"type": "array", "items": obj}},
                            }
                        )
                    }
                }
            },
            "/api/streams/{name}": {
                "get": {
                    "parameters": [
                        {
                            "name": "name",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {"200": _json(obj), **_errors(404)},
                }
            },
            "/api/streams/{name}/clips": {
                "post": {
                    "summary": "The last N seconds of the stream's recording as a new asset",
                    "security": _BEARER,
                    "parameters": [_NAME_PARAM],
                    "requestBody": _body(
                        {
                            "type": "object",
                            "required": ["seconds"],
                            "properties": {"seconds": {"type": "number"}},
                        }
                    ),
                    "responses": {
                        "201": _json(
                            {
                                "type": "object",
                                "required": ["id", "stream", "source", "duration", "playback"],
                                "properties": {
                                    "id": {"type": "string"},
                                    "stream": {"type": "string"},
                                    "source": {"type": "string"},
                                    "duration": {"type": "number"},
                                    "playback": obj,
                                },
                            }
                        ),
                        **_errors(400, 401, 403, 404, 408, 413, 422, 429, 507),
                    },
                }
            },
            "/api/streams/{name}/recordings": {
                "get": {
                    "parameters": [_NAME_PARAM],
                    "responses": {"200": _json(obj)},
                }
            },
            "/api/viewers": {
                "post": {
                    "summary": "An edge's live viewer counts (docs/recording.md)",
                    "requestBody": _body(
                        {
                            "type": "object",
                            "required": ["edge", "streams"],
                            "properties": {
                                "edge": {"type": "string", "minLength": 1, "maxLength": 256},
                                "streams": {
                                    "type": "object",
                                    "additionalProperties": {"type": "integer", "minimum": 0},
                                },
                            },
                        }
                    ),
                    "responses": {
                        "204": {"description": "counted"},
                        **_errors(400, 408, 413, 429),
                    },
                }
            },
            "/api/me": {
                "get": {
                    "summary": "Who an API key acts for (the studio's sign-in)",
                    "security": _BEARER,
                    "responses": {"200": _json(obj), **_errors(401, 429)},
                }
            },
            "/api/keys": {
                "get": {
                    "security": _BEARER,
                    "responses": {"200": _json(obj), **_errors(401, 429)},
                },
                "post": {
                    "summary": "A new stream key owned by the caller (its secret, once)",
                    "security": _BEARER,
                    "requestBody": _body(
                        {
                            "type": "object",
                            "required": ["name"],
                            "properties": {"name": _NAME, "record": {"type": "boolean"}},
                        }
                    ),
                    "responses": {
                        "201": _json(obj),
                        **_errors(400, 401, 408, 409, 413, 429),
                    },
                },
            },
            "/api/keys/{name}": {
                "delete": {
                    "security": _BEARER,
                    "parameters": [_NAME_PARAM],
                    "responses": {"204": {"description": "revoked"}, **_errors(401, 403, 404, 429)},
                }
            },
            "/api/tokens/keys": {
                "get": {
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["keys"],
                                "properties": {"keys": {"type": "array", "items": obj}},
                            }
                        )
                    }
                }
            },
            "/api/access/{kind}/{name}": {
                "get": {
                    "parameters": _SCOPE_PARAMS,
                    "responses": {"200": _json(_POLICY), **_errors(404)},
                },
                "put": {
                    "parameters": _SCOPE_PARAMS,
                    "security": _BEARER,
                    "requestBody": _body(
                        {
                            "type": "object",
                            "required": ["access"],
                            "properties": {
                                "access": {"type": "string", "enum": ["public", "token"]},
                                "owner": _NAME,
                            },
                        }
                    ),
                    "responses": {"200": _json(_POLICY), **_errors(400, 401, 403, 404, 413, 429)},
                },
            },
            "/api/products": {
                "get": {
                    "security": _BEARER,
                    "responses": {"200": _json(obj), **_errors(401, 429)},
                },
                "post": {
                    "security": _BEARER,
                    "requestBody": _body(
                        {
                            "type": "object",
                            "required": ["kind", "name", "price_cents", "duration_s", "scopes"],
                            "properties": {
                                "kind": {"type": "string", "enum": ["tvod", "svod"]},
                                "name": _TEXT,
                                "owner": _NAME,
                                "price_cents": {
                                    "type": "integer",
                                    "minimum": 0,
                                    "maximum": 10**9,
                                },
                                "currency": {"type": "string", "minLength": 1, "maxLength": 8},
                                "duration_s": {
                                    "type": "integer",
                                    "minimum": 1,
                                    "maximum": 10 * 365 * 86400,
                                },
                                "scopes": {
                                    "type": "array",
                                    "items": _SCOPE,
                                    "minItems": 1,
                                    "maxItems": 1000,
                                },
                            },
                        }
                    ),
                    "responses": {"201": _json(obj), **_errors(400, 401, 403, 413, 429)},
                },
            },
            "/api/entitlements": {
                "post": {
                    "security": _BEARER,
                    "requestBody": _body(
                        {
                            "type": "object",
                            "required": ["viewer", "product"],
                            "properties": {
                                "viewer": _VIEWER,
                                "product": _TEXT,
                            },
                        }
                    ),
                    "responses": {"201": _json(obj), **_errors(400, 401, 403, 404, 413, 429)},
                }
            },
            "/api/tokens": {
                "post": {
                    "security": _BEARER,
                    "requestBody": _body(
                        {
                            "type": "object",
                            "required": ["viewer", "scope"],
                            "properties": {
                                "viewer": _VIEWER,
                                "scope": _SCOPE,
                                "ttl": {"type": "integer", "minimum": 1, "maximum": 86400},
                            },
                        }
                    ),
                    "responses": {
                        "201": _json(
                            {
                                "type": "object",
                                "required": ["token", "scope", "exp", "kid"],
                                "properties": {
                                    "token": {"type": "string"},
                                    "scope": {"type": "string"},
                                    "exp": {"type": "integer"},
                                    "kid": {"type": "string"},
                                },
                            }
                        ),
                        **_errors(400, 401, 403, 413, 429),
                    },
                }
            },
            "/api/inference": {
                "post": {
                    "security": _BEARER,
                    "requestBody": _body(
                        {
                            "type": "object",
                            "required": ["model", "input"],
                            "additionalProperties": False,
                            "properties": {
                                "model": {"type": "string", "enum": ["moderation", "captions"]},
                                "input": _INPUT,
                            },
                        }
                    ),
                    "responses": {"202": _json(_JOB, "queued"), **_errors(400, 401, 413, 429)},
                }
            },
            "/api/inference/{job}": {
                "get": {
                    "security": _BEARER,
                    "parameters": [
                        {
                            "name": "job",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {"200": _json(_JOB), **_errors(401, 404, 429)},
                }
            },
        },
    }
