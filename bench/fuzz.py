"""Long fuzz runs of the sans-IO parsers (the short hypothesis versions run in tests/unit).

    python -m bench.fuzz [--cases 100000] [--seed 11] [--target token|query|rtmp|amf0|all]

Seeded random generation (reproducible: a failure prints its seed and case index):
- token: random text, structured-but-wrong tokens, and valid tokens with 1-4 characters
  mutated -> ``verify`` must raise only TokenError, and a mutated token that still verifies
  must carry exactly the original claims (base64 slack bits);
- query: random query strings (with and without token params, percent-escapes, separators)
  -> ``token_from_query`` is total and bounded;
- rtmp: a valid OBS-like session with byte flips, truncations, duplications and splices of
  random bytes after the handshake, plus raw random bytes -> the core raises only
  RtmpProtocolError, and closes when it does;
- amf0: the attack corpus (tests/unit/test_amf0.py ``amf0_attacks``) and FFmpeg's
  onMetaData, mutated, decoded under the RTMP command, data and default limits -> only
  AmfError, and what decodes stays within the limits.
"""

from __future__ import annotations

import argparse
import json
import random
import string
import sys
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meshcast.tokens import Claims, TokenError, b64url_encode, sign, token_from_query, verify
from origin import amf0
from origin.rtmp_protocol import (
    COMMAND_LIMITS,
    DATA_LIMITS,
    HANDSHAKE_SIZE,
    RtmpProtocolError,
    RtmpServerConnection,
)
from tests.unit.test_amf0 import FFMPEG_METADATA, _shape, amf0_attacks
from tests.unit.test_rtmp_protocol import full_session, run_session

NOW = 1_800_000_000
_ALPHABET = string.ascii_letters + string.digits + '-_.=+/%&?{}":,[] \x00\u00e9\U0001f600'


def _text(rng: random.Random, max_len: int) -> str:
    return "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, max_len)))


def fuzz_token(rng: random.Random, cases: int) -> dict[str, int]:
    private = Ed25519PrivateKey.generate()
    keys = {"k1": private.public_key()}
    claims = Claims("live/show", NOW + 600, NOW, NOW, "viewer")
    good = sign(private, "k1", claims)
    stats = {"refused": 0, "accepted_unchanged": 0}
    for _ in range(cases):
        mode = rng.randrange(4)
        if mode == 0:
            candidate = _text(rng, 200)
        elif mode == 1:
            payload = b64url_encode(_text(rng, 80).encode())
            sig = b64url_encode(rng.randbytes(rng.choice((0, 63, 64, 65))))
            candidate = f"v1.{rng.choice(('k1', 'k2', '', '!'))}.{payload}.{sig}"
        elif mode == 2:
            body = {
                "scope": rng.choice(("live/show", "vod/x", "catalog/a", "live/../x", 7, None)),
                "exp": rng.choice((NOW, -1, 2**41, "1", True, 1.5)),
                "nbf": rng.choice((0, NOW, None)),
                "iat": 0,
            }
            payload = b64url_encode(json.dumps(body).encode())
            candidate = f"v1.k1.{payload}.{good.rsplit('.', 1)[1]}"
        else:
            chars = list(good)
            for _ in range(rng.randint(1, 4)):
                chars[rng.randrange(len(chars))] = rng.choice(_ALPHABET)
            candidate = "".join(chars)
        try:
            result = verify(candidate, keys, NOW)
        except TokenError:
            stats["refused"] += 1
            continue
        if result != claims:
            raise AssertionError(f"a modified token verified with other claims: {candidate!r}")
        stats["accepted_unchanged"] += 1
    return stats


def fuzz_query(rng: random.Random, cases: int) -> dict[str, int]:
    stats = {"found": 0, "none": 0}
    parts = ["token=", "token", "&", ";", "=", "%", "%2", "%zz", "%00", "+", "a=b", "tok"]
    for _ in range(cases):
        query = "".join(
            rng.choice(parts) if rng.random() < 0.5 else _text(rng, 6)
            for _ in range(rng.randint(0, 12))
        )
        result = token_from_query(query)
        if result is None:
            stats["none"] += 1
        elif 0 < len(result) <= 1024:
            stats["found"] += 1
        else:
            raise AssertionError(f"bad result for {query!r}: {result!r}")
    return stats


def fuzz_rtmp(rng: random.Random, cases: int) -> dict[str, int]:
    session = full_session()
    start = 1 + 2 * HANDSHAKE_SIZE
    stats = {"closed_with_error": 0, "survived": 0}
    for _ in range(cases):
        mode = rng.randrange(5)
        data = bytearray(session)
        if mode == 0:  # byte flips after the handshake
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(start, len(data))] = rng.randrange(256)
        elif mode == 1:  # truncation
            del data[rng.randrange(start, len(data)) :]
        elif mode == 2:  # random bytes spliced in
            pos = rng.randrange(start, len(data))
            data[pos:pos] = rng.randbytes(rng.randint(1, 64))
        elif mode == 3:  # a slice duplicated (replayed chunk headers)
            a = rng.randrange(start, len(data))
            b = min(len(data), a + rng.randint(1, 200))
            data[b:b] = data[a:b]
        else:  # raw random bytes, handshake included
            data = bytearray(rng.randbytes(rng.randint(0, 4096)))
        # Feed in random-sized pieces: the parser must not depend on read boundaries.
        chunks, pos = [], 0
        while pos < len(data):
            step = rng.choice((1, 7, 128, 1500, 65536))
            chunks.append(bytes(data[pos : pos + step]))
            pos += step
        try:
            if mode == 4:
                RtmpServerConnection().receive_data(bytes(data))
            else:
                run_session(chunks)
            stats["survived"] += 1
        except RtmpProtocolError:
            stats["closed_with_error"] += 1
    return stats


def fuzz_amf0(rng: random.Random, cases: int) -> dict[str, int]:
    # The corpus, cut to 64 KiB (what a pre-publish message may be): mutations of the
    # 8 MiB flood would all fail the byte limit and exercise nothing else.
    corpus = [raw[: 64 * 1024] for raw in amf0_attacks().values()] + [FFMPEG_METADATA]
    all_limits = (COMMAND_LIMITS, DATA_LIMITS, amf0.DEFAULT_LIMITS)
    stats = {"refused": 0, "decoded": 0}
    for _ in range(cases):
        data = bytearray(rng.choice(corpus))
        for _ in range(rng.randint(1, 6)):
            op = rng.randrange(3)
            if op == 0 and data:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif op == 1 and data:
                del data[rng.randrange(len(data)) :]
            else:
                pos = rng.randrange(len(data) + 1)
                data[pos:pos] = rng.randbytes(rng.randint(1, 32))
        limits = rng.choice(all_limits)
        try:
            values = amf0.decode(bytes(data), limits)
        except amf0.AmfError:
            stats["refused"] += 1
            continue
        shapes = [_shape(v) for v in values]
        if sum(n for n, _, _ in shapes) > limits.max_values or any(
            d > limits.max_depth or s > limits.max_string for _, d, s in shapes
        ):
            raise AssertionError(f"decoded beyond {limits}: {bytes(data)[:80]!r}")
        stats["decoded"] += 1
    return stats


TARGETS: dict[str, Callable[[random.Random, int], dict[str, int]]] = {
    "token": fuzz_token,
    "query": fuzz_query,
    "rtmp": fuzz_rtmp,
    "amf0": fuzz_amf0,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--target", choices=[*TARGETS, "all"], default="all")
    args = parser.parse_args()
    names = list(TARGETS) if args.target == "all" else [args.target]
    for name in names:
        rng = random.Random(f"{args.seed}:{name}")
        started = time.perf_counter()
        stats = TARGETS[name](rng, args.cases)
        elapsed = time.perf_counter() - started
        print(
            json.dumps(
                {
                    "target": name,
                    "cases": args.cases,
                    "seed": args.seed,
                    "seconds": round(elapsed, 2),
                    "cases_per_s": round(args.cases / elapsed),
                    "findings": 0,
                    **stats,
                }
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
