"""Coordinator throughput: receipts accepted per second (signature + chain checks + SQLite
insert), epoch close (verification + rewards + signing the export) and verifying an export
with public keys only. In-process, no HTTP; from the repository root:
``.venv/bin/python -m bench.receipts [--nodes 50] [--receipts 40] [--no-write]``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import tempfile
import time
from pathlib import Path

from bench.results import write_block
from meshcast.config import NetworkConfig
from meshcast.receipts import ReceiptBuilder, Usage
from meshcast.rewards import RewardParams, verify_export
from meshcast.signing import NodeKey
from origin.coordinator import Coordinator

EPOCH = 3600.0


def run(nodes: int, per_node: int) -> dict[str, float]:
    t0 = 1_000_000 * EPOCH
    now = [t0 + 1.0]
    with tempfile.TemporaryDirectory() as tmp:
        config = NetworkConfig(rewards=RewardParams(epoch_seconds=EPOCH), close_grace=1)
        c = Coordinator(Path(tmp), config, clock=lambda: now[0])
        builders, usages = [], []
        for i in range(nodes):
            key = NodeKey.generate()
            url = f"http://10.0.{i // 250}.{i % 250}:8081"
            body = {"kind": "register", "node": key.node_id, "pubkey": key.public_key,
                    "url": url, "capacity": {"bandwidth": 12_500_000}, "ts": now[0]}  # fmt: skip
            c.register({"body": body, "sig": key.sign_object(body)})
            c.record_fetch(url, "/live/s0/360p/1.m4s", 1_000_000)
            builders.append(ReceiptBuilder(key))
            usages.append(Usage())
        envelopes = []
        for r in range(per_node):
            for i, (b, u) in enumerate(zip(builders, usages, strict=True)):
                for s in range(4):  # four streams per receipt
                    u.served[f"live/s{s}"] = u.served.get(f"live/s{s}", 0) + 1000 + i + r
                envelopes.append(b.build(u, t0 + 10 * (r + 1), period_start=t0))
        now[0] = t0 + 10 * per_node + 1
        start = time.perf_counter()
        for envelope in envelopes:
            c.accept_receipt(envelope)
        accept_s = time.perf_counter() - start
        now[0] = t0 + EPOCH + 2
        start = time.perf_counter()
        (epoch,) = c.close_due()
        close_s = time.perf_counter() - start
        export = c.export(epoch)
        assert export is not None
        size = len(json.dumps(export))
        start = time.perf_counter()
        verify_export(export, c.key.public_key)
        verify_s = time.perf_counter() - start
        c.db.close()
    n = len(envelopes)
    return {
        "receipts": n,
        "accept_per_s": n / accept_s,
        "close_s": close_s,
        "verify_s": verify_s,
        "verify_per_s": n / verify_s,
        "export_mb": size / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--receipts", type=int, default=40, help="receipts per node")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    r = run(args.nodes, args.receipts)
    print(json.dumps(r, indent=2))
    if args.no_write:
        return
    text = (
        f"Run {datetime.date.today()}: {args.nodes} nodes x {args.receipts} receipts "
        "(4 streams each), one epoch.\n\n"
        "| receipts | accepted/s | epoch close | export | export verify | verified/s |\n"
        "|---|---|---|---|---|---|\n"
        f"| {r['receipts']} | {r['accept_per_s']:.0f} | {r['close_s']:.2f} s | "
        f"{r['export_mb']:.1f} MB | {r['verify_s']:.2f} s | {r['verify_per_s']:.0f} |"
    )
    write_block("receipts", "## Contributor network: receipts (`bench/receipts.py`)", text)


if __name__ == "__main__":
    main()
