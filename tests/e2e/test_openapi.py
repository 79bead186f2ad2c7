"""schemathesis against the origin's own OpenAPI document: no request it generates may
get a 5xx, and every response must match the documented status codes and schemas."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from meshcast.config import OriginConfig
from meshcast.keys import ADMIN_KIND
from origin.service import OriginService


class Api:
    def __init__(self, root: Path) -> None:
        self.service = OriginService(OriginConfig(data_dir=root, http_port=0, rtmp_port=0))
        self.admin = self.service.keys.create("ops", ADMIN_KIND)
        self.service.keys.create("show", owner="alice")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    api = Api(tmp_path_factory.mktemp("openapi"))
    # Lots of 401s by design: do not let the key-failure limiter turn them into 429s only.
    api.service.key_failures.max_failures = 10**9
    yield api
    api.service.access.close()


def operations(api: Api) -> list[schemathesis.APIOperation]:
    loaded = schemathesis.openapi.from_asgi("/openapi.json", api.service.app)
    return [result.ok() for result in loaded.get_all_operations()]


def run_operation(operation: schemathesis.APIOperation, headers: dict[str, str]) -> list[int]:
    """Drive one operation's generated cases; returns the status codes seen."""
    statuses: list[int] = []

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(operation.as_strategy())
    def check(case: schemathesis.Case) -> None:
        response = case.call(headers=headers)
        statuses.append(response.status_code)
        assert response.status_code < 500, (case.method, case.formatted_path, response.text)
        # Every check but "positive data accepted": business rules (a TVOD product has
        # exactly one scope, resources must be the caller's) answer 400/403 to some
        # schema-valid bodies, by design.
        case.validate_response(response, excluded_checks=[positive_data_acceptance])

    check()
    return statuses


def test_openapi_document_lists_the_api(api: Api) -> None:
    paths = {op.path for op in operations(api)}
    assert {
        "/api/streams",
        "/api/streams/{name}",
        "/api/tokens",
        "/api/tokens/keys",
        "/api/entitlements",
        "/api/products",
        "/api/access/{kind}/{name}",
        "/api/inference",
        "/api/inference/{job}",
    } <= paths


@pytest.mark.parametrize("who", ["anonymous", "admin"])
def test_schemathesis_finds_no_server_errors(api: Api, who: str) -> None:
    headers = {"Authorization": f"Bearer {api.admin}"} if who == "admin" else {}
    statuses = [code for op in operations(api) for code in run_operation(op, headers)]
    assert len(statuses) >= 200
    assert all(code < 500 for code in statuses)
    if who == "admin":
        # The admin key really got through: products, policies, grants were created.
        assert statuses.count(201) + statuses.count(200) > 50, sorted(set(statuses))
    else:
        assert 401 in statuses
