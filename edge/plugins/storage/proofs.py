"""The storing edge's side of storage proofs (``meshcast/storage_proofs.py``): commit to
the chunks held, once per receipt, and answer the coordinator's challenges.

``POST /_storage/challenge`` takes a challenge signed by the coordinator of the network
this edge joined (``{"body": {"kind": "challenge", "node", "root", "offset", "ts"},
"sig"}``) and answers the chunk that covers the offset as the body, with its Merkle path
in the ``X-Meshcast-Proof`` header (JSON). Only the coordinator can make us read a chunk,
so the route is no amplifier for anyone else.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from typing import Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from edge.plugins.host import EdgeHost
from edge.plugins.storage.blobs import BlobStore, CorruptChunk
from meshcast.http import json_error, read_signed
from meshcast.storage_proofs import PROOF_HEADER, Commitment, Inventory, ProofInvalid

# Commitments a challenge may still name (one per receipt; the coordinator challenges
# the newest one it accepted, which may be a receipt or two behind ours).
KEEP_SNAPSHOTS: Final = 8
MAX_SKEW: Final = 30.0


class Prover:
    def __init__(self, store: BlobStore, edge: EdgeHost) -> None:
        self.store = store
        self.edge = edge
        self._snapshots: OrderedDict[str, Inventory] = OrderedDict()

    async def commit(self) -> Commitment:
        """A commitment to the chunks held now (the tree is built off the event loop)."""
        held = dict(self.store.chunks)
        last = next(reversed(self._snapshots.values()), None)
        if last is not None and last.held == held:
            return last.commitment  # unchanged: no rebuild (0.5 s for 100k chunks)
        inventory = await asyncio.to_thread(Inventory, held)
        root = inventory.commitment.root
        self._snapshots[root] = inventory
        self._snapshots.move_to_end(root)
        while len(self._snapshots) > KEEP_SNAPSHOTS:
            self._snapshots.popitem(last=False)
        return inventory.commitment

    async def answer(self, root: str, offset: int) -> tuple[dict[str, object], bytes]:
        """Proof and bytes of the chunk covering ``offset``; KeyError for an unknown root,
        ProofInvalid for a bad offset, LookupError when the chunk is gone."""
        inventory = self._snapshots[root]
        proof = inventory.prove(offset)
        digest = str(proof["digest"])
        try:
            data = await asyncio.to_thread(self.store.read_chunk, digest)
        except CorruptChunk as exc:
            raise LookupError(str(exc)) from exc
        if data is None:
            raise LookupError(f"chunk {digest} is no longer held")
        return proof, data

    def routes(self) -> list[BaseRoute]:
        return [Route("/_storage/challenge", self._challenge, methods=["POST"])]

    async def _challenge(self, request: Request) -> Response:
        network = self.edge.network
        key = network.coordinator_key if network is not None else None
        if network is None or key is None:
            return json_error(404, "this edge has not joined a contributor network")
        body = await read_signed(request, key, 4096, "challenge")
        if isinstance(body, Response):
            return body
        ts, root, offset = body.get("ts"), body.get("root"), body.get("offset")
        if body.get("kind") != "challenge" or body.get("node") != network.node:
            return json_error(400, "not a storage challenge for this node")
        if not isinstance(ts, int | float) or abs(ts - time.time()) > MAX_SKEW:
            return json_error(400, "challenge expired")
        if not isinstance(root, str) or type(offset) is not int:
            return json_error(400, "challenge needs a root and an integer offset")
        try:
            proof, data = await self.answer(root, offset)
        except KeyError:
            return json_error(404, f"no commitment {root[:16]}… here any more")
        except ProofInvalid as exc:
            return json_error(400, str(exc))
        except LookupError as exc:
            return json_error(410, str(exc))
        return Response(
            data,
            media_type="application/octet-stream",
            headers={PROOF_HEADER: json.dumps(proof, separators=(",", ":"))},
        )
