"""The system-OpenSSL DTLS used by aiortc (origin/dtls_system.py): a whole DTLS-SRTP
handshake in memory, with the P-224 client certificate stock FFmpeg WHIP presents."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from origin import dtls_system as dtls
from tests.whip_publisher import self_signed

CIPHERS = b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305"
SRTP = b"SRTP_AEAD_AES_128_GCM:SRTP_AES128_CM_SHA1_80"


def connection(curve: ec.EllipticCurve) -> tuple[dtls.Connection, x509.Certificate]:
    key, cert = self_signed(curve)
    ctx = dtls.Context(dtls.DTLS_METHOD)
    ctx.set_options(dtls.OP_NO_TICKET)
    ctx.set_verify(dtls.VERIFY_PEER | dtls.VERIFY_FAIL_IF_NO_PEER_CERT)
    ctx.use_certificate(cert)
    ctx.use_privatekey(key)
    ctx.set_cipher_list(CIPHERS)
    ctx.set_tlsext_use_srtp(SRTP)
    return dtls.Connection(ctx), cert


def pump(source: dtls.Connection, sink: dtls.Connection) -> None:
    while True:
        try:
            sink.bio_write(source.bio_read(1500))
        except dtls.WantReadError:
            return


def step(conn: dtls.Connection) -> bool:
    try:
        conn.do_handshake()
    except dtls.WantReadError:
        return False
    return True


def test_the_system_openssl_3_is_there_and_allows_p224() -> None:
    # `make test` installs Debian's openssl (libssl3); without it WHIP keeps pyOpenSSL.
    assert dtls.supports_p224()


@pytest.mark.parametrize("client_curve", [ec.SECP224R1(), ec.SECP256R1()])
def test_dtls_srtp_handshake_with_a_p224_or_p256_client(client_curve: ec.EllipticCurve) -> None:
    server, server_cert = connection(ec.SECP256R1())
    client, client_cert = connection(client_curve)
    server.set_accept_state()
    client.set_connect_state()
    done = {"server": False, "client": False}
    for _ in range(20):
        done["client"] = done["client"] or step(client)
        pump(client, server)
        done["server"] = done["server"] or step(server)
        pump(server, client)
        if all(done.values()):
            break
    assert all(done.values()), done
    assert server.get_peer_certificate(as_cryptography=True) == client_cert
    assert client.get_peer_certificate(as_cryptography=True) == server_cert
    assert server.get_selected_srtp_profile() == client.get_selected_srtp_profile() != b""
    keys = server.export_keying_material(b"EXTRACTOR-dtls_srtp", 60)
    assert keys == client.export_keying_material(b"EXTRACTOR-dtls_srtp", 60)
    client.send(b"datachannel")
    pump(client, server)
    assert server.recv(1500) == b"datachannel"
    with pytest.raises(dtls.WantReadError):
        server.recv(1500)
