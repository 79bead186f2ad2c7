"""Key kinds (stream/api/admin) share one store without sharing privileges."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcast.keys import (
    ADMIN_KIND,
    API_KIND,
    DuplicateName,
    KeyRejected,
    KeyStore,
    UnknownName,
)


def test_kinds_are_separate_namespaces_and_privileges(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    stream = store.create("alice")
    api = store.create("alice", API_KIND)
    with pytest.raises(DuplicateName):
        store.create("alice", API_KIND)
    assert store.verify(stream) == "alice" and store.verify(api, API_KIND) == "alice"
    # An API key never publishes, a stream key never manages, neither is admin.
    for key, kind in ((api, "stream"), (stream, API_KIND), (api, ADMIN_KIND)):
        with pytest.raises(KeyRejected):
            store.verify(key, kind)
    with pytest.raises(UnknownName, match="several keys"):
        store.revoke("alice")  # ambiguous without a kind
    store.revoke("alice", API_KIND)
    with pytest.raises(KeyRejected, match="revoked"):
        store.verify(api, API_KIND)
    assert store.verify(stream) == "alice"  # the stream key is untouched


def test_stream_owner(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    store.create("show", owner="studio")
    store.create("solo")
    assert store.owner_of("show") == "studio"
    assert store.owner_of("solo") == "solo"
    assert store.owner_of("nobody") is None
    store.revoke("show")  # its only key: no kind needed
    assert store.owner_of("show") is None
    # Data dirs written before owners existed still load.
    assert KeyStore(tmp_path).owner_of("solo") == "solo"


@settings(max_examples=300)
@given(st.text(max_size=200))
def test_fuzz_verify_only_rejects(tmp_path_factory: pytest.TempPathFactory, key: str) -> None:
    store = KeyStore(tmp_path_factory.getbasetemp() / "fuzz-keys")
    for kind in ("stream", API_KIND, ADMIN_KIND):
        with pytest.raises(KeyRejected):
            store.verify(key, kind)
