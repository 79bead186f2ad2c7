"""DTLS for WebRTC (aiortc) on the system's OpenSSL 3, for stock FFmpeg 8 WHIP publishers.

FFmpeg 8's WHIP muxer, built with GnuTLS (Debian, PyAV's wheels), makes a self-signed ECDSA
certificate on P-224. OpenSSL 4, which `cryptography`'s wheels bundle (and so pyOpenSSL,
aiortc's DTLS), dropped P-224 from TLS (a build option, `enable-tls-deprecated-ec`, that
the wheel does not set): the handshake ends with illegal_parameter and the publisher gets
nothing. OpenSSL 3 (Debian 12's libssl3, the system library) still verifies a P-224 peer
when the group is allowed. This module gives aiortc's RTCDtlsTransport the part of
pyOpenSSL's ``SSL`` API it uses (a context, a memory-BIO connection, DTLS timers, SRTP
keying), on libssl.so.3 through ctypes; ``install()`` swaps it in when that library is
there and can use P-224, else pyOpenSSL stays (and such publishers are refused as before).

Only DTLS 1.2 with ECDSA certificates, as WebRTC uses: no session resumption, no
renegotiation; every peer certificate is accepted by OpenSSL and then checked by aiortc
against the SDP fingerprint, exactly as with pyOpenSSL.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization

log = logging.getLogger(__name__)

# The curves stock WebRTC stacks use for their certificates and key exchange; P-224 for
# FFmpeg's GnuTLS builds (GnuTLS maps the 256 "bits" FFmpeg asks for to its P-224 level).
GROUPS: Final = b"X25519:P-256:P-384:P-521:P-224"

DTLS_METHOD: Final = 7  # pyOpenSSL's constant; only DTLS is offered here
OP_NO_TICKET: Final = 0x00004000
VERIFY_PEER: Final = 0x01
VERIFY_FAIL_IF_NO_PEER_CERT: Final = 0x02

_SSL_CTRL_SET_GROUPS_LIST: Final = 92
_DTLS_CTRL_GET_TIMEOUT: Final = 73
_DTLS_CTRL_HANDLE_TIMEOUT: Final = 74
_BIO_CTRL_PENDING: Final = 10
_SSL_ERROR_WANT_READ: Final = 2
_SSL_ERROR_ZERO_RETURN: Final = 6


class Error(Exception):
    """An OpenSSL failure (pyOpenSSL's ``SSL.Error``)."""


class WantReadError(Error):
    pass


class ZeroReturnError(Error):
    pass


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _SrtpProfile(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("id", ctypes.c_ulong)]


_VERIFY_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
# The fingerprint from the SDP is what authenticates the peer (aiortc checks it).
_accept_any = _VERIFY_CB(lambda ok, store: 1)


def _load() -> tuple[Any, Any] | None:
    names = [("libssl.so.3", "libcrypto.so.3")]
    for ssl_name, crypto_name in names:
        try:
            crypto = ctypes.CDLL(crypto_name)
            ssl = ctypes.CDLL(ssl_name)
        except OSError:
            continue
        if not hasattr(ssl, "SSL_get1_peer_certificate"):
            continue  # not OpenSSL 3
        _declare(ssl, crypto)
        return ssl, crypto
    return None


def _declare(ssl: Any, crypto: Any) -> None:
    p, i, ul, u64, s = (
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_ulong,
        ctypes.c_uint64,
        ctypes.c_char_p,
    )
    size_t, long = ctypes.c_size_t, ctypes.c_long
    for lib, name, res, args in (
        (ssl, "DTLS_method", p, []),
        (ssl, "SSL_CTX_new", p, [p]),
        (ssl, "SSL_CTX_free", None, [p]),
        (ssl, "SSL_CTX_set_options", u64, [p, u64]),
        (ssl, "SSL_CTX_set_verify", None, [p, i, _VERIFY_CB]),
        (ssl, "SSL_CTX_use_certificate", i, [p, p]),
        (ssl, "SSL_CTX_use_PrivateKey", i, [p, p]),
        (ssl, "SSL_CTX_set_cipher_list", i, [p, s]),
        (ssl, "SSL_CTX_set_tlsext_use_srtp", i, [p, s]),
        (ssl, "SSL_CTX_ctrl", long, [p, i, long, p]),
        (ssl, "SSL_new", p, [p]),
        (ssl, "SSL_free", None, [p]),
        (ssl, "SSL_set_bio", None, [p, p, p]),
        (ssl, "SSL_set_accept_state", None, [p]),
        (ssl, "SSL_set_connect_state", None, [p]),
        (ssl, "SSL_do_handshake", i, [p]),
        (ssl, "SSL_get_error", i, [p, i]),
        (ssl, "SSL_read", i, [p, p, i]),
        (ssl, "SSL_write", i, [p, p, i]),
        (ssl, "SSL_shutdown", i, [p]),
        (ssl, "SSL_ctrl", long, [p, i, long, p]),
        (ssl, "SSL_get1_peer_certificate", p, [p]),
        (ssl, "SSL_get_selected_srtp_profile", ctypes.POINTER(_SrtpProfile), [p]),
        (ssl, "SSL_export_keying_material", i, [p, p, size_t, s, size_t, p, size_t, i]),
        (crypto, "BIO_s_mem", p, []),
        (crypto, "BIO_new", p, [p]),
        (crypto, "BIO_write", i, [p, p, i]),
        (crypto, "BIO_read", i, [p, p, i]),
        (crypto, "BIO_ctrl", long, [p, i, long, p]),
        (crypto, "d2i_X509", p, [p, ctypes.POINTER(p), long]),
        (crypto, "i2d_X509", i, [p, ctypes.POINTER(p)]),
        (crypto, "X509_free", None, [p]),
        (crypto, "d2i_AutoPrivateKey", p, [p, ctypes.POINTER(p), long]),
        (crypto, "EVP_PKEY_free", None, [p]),
        (crypto, "ERR_get_error", ul, []),
        (crypto, "ERR_error_string_n", None, [ul, s, size_t]),
        (crypto, "CRYPTO_free", None, [p, s, i]),
    ):
        function = getattr(lib, name)
        function.restype = res
        function.argtypes = args


_LIBS = _load()


def _libs() -> tuple[Any, Any]:
    if _LIBS is None:
        raise Error("the system's OpenSSL 3 (libssl.so.3) is not available")
    return _LIBS


def _error(what: str) -> Error:
    _, crypto = _libs()
    reasons = []
    while code := crypto.ERR_get_error():
        buf = ctypes.create_string_buffer(256)
        crypto.ERR_error_string_n(code, buf, len(buf))
        reasons.append(buf.value.decode(errors="replace"))
    return Error(f"{what}: {'; '.join(reasons) or 'no OpenSSL reason'}")


def _from_der(loader: Any, der: bytes) -> int:
    buf = ctypes.create_string_buffer(der, len(der))
    cursor = ctypes.c_void_p(ctypes.addressof(buf))
    handle = loader(None, ctypes.byref(cursor), len(der))
    if not handle:
        raise _error("could not load a DER object")
    return int(handle)


class Context:
    """pyOpenSSL's ``SSL.Context`` as aiortc configures it, DTLS only."""

    def __init__(self, method: int) -> None:
        if method != DTLS_METHOD:
            raise ValueError("only DTLS is offered")
        ssl, _ = _libs()
        self._ctx = ssl.SSL_CTX_new(ssl.DTLS_method())
        if not self._ctx:
            raise _error("SSL_CTX_new")
        if ssl.SSL_CTX_ctrl(self._ctx, _SSL_CTRL_SET_GROUPS_LIST, 0, GROUPS) != 1:
            raise _error("groups")

    def __del__(self) -> None:
        if _LIBS is not None and getattr(self, "_ctx", None):
            _LIBS[0].SSL_CTX_free(self._ctx)

    def set_options(self, options: int) -> None:
        _libs()[0].SSL_CTX_set_options(self._ctx, options)

    def set_verify(self, mode: int, callback: Any = None) -> None:
        _libs()[0].SSL_CTX_set_verify(self._ctx, mode, _accept_any)

    def use_certificate(self, cert: x509.Certificate) -> None:
        ssl, crypto = _libs()
        handle = _from_der(crypto.d2i_X509, cert.public_bytes(serialization.Encoding.DER))
        try:
            if ssl.SSL_CTX_use_certificate(self._ctx, handle) != 1:
                raise _error("SSL_CTX_use_certificate")
        finally:
            crypto.X509_free(handle)  # the context holds its own reference

    def use_privatekey(self, key: Any) -> None:
        ssl, crypto = _libs()
        der = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        handle = _from_der(crypto.d2i_AutoPrivateKey, der)
        try:
            if ssl.SSL_CTX_use_PrivateKey(self._ctx, handle) != 1:
                raise _error("SSL_CTX_use_PrivateKey")
        finally:
            crypto.EVP_PKEY_free(handle)

    def set_cipher_list(self, ciphers: bytes) -> None:
        if _libs()[0].SSL_CTX_set_cipher_list(self._ctx, ciphers) != 1:
            raise _error("SSL_CTX_set_cipher_list")

    def set_tlsext_use_srtp(self, profiles: bytes) -> None:
        if _libs()[0].SSL_CTX_set_tlsext_use_srtp(self._ctx, profiles) != 0:  # 0: success
            raise _error("SSL_CTX_set_tlsext_use_srtp")


class Connection:
    """pyOpenSSL's ``SSL.Connection`` over memory BIOs (aiortc moves the datagrams)."""

    def __init__(self, context: Context, sock: None = None) -> None:
        ssl, crypto = _libs()
        self._context = context  # keeps the SSL_CTX alive as long as the connection
        self._ssl = ssl.SSL_new(context._ctx)
        if not self._ssl:
            raise _error("SSL_new")
        self._in = crypto.BIO_new(crypto.BIO_s_mem())
        self._out = crypto.BIO_new(crypto.BIO_s_mem())
        ssl.SSL_set_bio(self._ssl, self._in, self._out)  # the SSL owns both now

    def __del__(self) -> None:
        if _LIBS is not None and getattr(self, "_ssl", None):
            _LIBS[0].SSL_free(self._ssl)

    def set_accept_state(self) -> None:
        _libs()[0].SSL_set_accept_state(self._ssl)

    def set_connect_state(self) -> None:
        _libs()[0].SSL_set_connect_state(self._ssl)

    def _raise_for(self, result: int, what: str) -> None:
        code = _libs()[0].SSL_get_error(self._ssl, result)
        if code == _SSL_ERROR_WANT_READ:
            raise WantReadError(what)
        if code == _SSL_ERROR_ZERO_RETURN:
            raise ZeroReturnError(what)
        raise _error(f"{what} (SSL error {code})")

    def do_handshake(self) -> None:
        result = _libs()[0].SSL_do_handshake(self._ssl)
        if result != 1:
            self._raise_for(result, "handshake")

    def bio_write(self, data: bytes) -> int:
        written: int = _libs()[1].BIO_write(self._in, data, len(data))
        if written <= 0:
            raise _error("BIO_write")
        return written

    def bio_read(self, size: int) -> bytes:
        buf = ctypes.create_string_buffer(size)
        n = _libs()[1].BIO_read(self._out, buf, size)
        if n <= 0:
            raise WantReadError("nothing to send")
        return buf.raw[:n]

    def recv(self, size: int) -> bytes:
        buf = ctypes.create_string_buffer(size)
        n = _libs()[0].SSL_read(self._ssl, buf, size)
        if n <= 0:
            self._raise_for(n, "read")
        return buf.raw[:n]

    def send(self, data: bytes) -> int:
        n: int = _libs()[0].SSL_write(self._ssl, data, len(data))
        if n <= 0:
            self._raise_for(n, "write")
        return n

    def shutdown(self) -> bool:
        return bool(_libs()[0].SSL_shutdown(self._ssl) == 1)

    def DTLSv1_get_timeout(self) -> float | None:  # pyOpenSSL's name
        tv = _Timeval()
        if not _libs()[0].SSL_ctrl(self._ssl, _DTLS_CTRL_GET_TIMEOUT, 0, ctypes.byref(tv)):
            return None
        return float(tv.tv_sec + tv.tv_usec / 1_000_000)

    def DTLSv1_handle_timeout(self) -> bool:
        return bool(_libs()[0].SSL_ctrl(self._ssl, _DTLS_CTRL_HANDLE_TIMEOUT, 0, None) > 0)

    def get_peer_certificate(self, *, as_cryptography: bool = False) -> x509.Certificate | None:
        ssl, crypto = _libs()
        handle = ssl.SSL_get1_peer_certificate(self._ssl)
        if not handle:
            return None
        try:
            out = ctypes.c_void_p()
            n = crypto.i2d_X509(handle, ctypes.byref(out))
            if n <= 0:
                raise _error("i2d_X509")
            der = ctypes.string_at(out, n)
            crypto.CRYPTO_free(out, b"dtls_system", 0)
        finally:
            crypto.X509_free(handle)
        return x509.load_der_x509_certificate(der)

    def get_selected_srtp_profile(self) -> bytes:
        profile = _libs()[0].SSL_get_selected_srtp_profile(self._ssl)
        return profile.contents.name if profile else b""

    def export_keying_material(
        self, label: bytes, olen: int, context: bytes | None = None
    ) -> bytes:
        out = ctypes.create_string_buffer(olen)
        ok = _libs()[0].SSL_export_keying_material(
            self._ssl, out, olen, label, len(label), None, 0, 0
        )
        if ok != 1:
            raise _error("SSL_export_keying_material")
        return out.raw


def supports_p224() -> bool:
    """The system OpenSSL 3 is there and accepts P-224 as a TLS group."""
    try:
        Context(DTLS_METHOD)
    except Error as exc:
        log.info("system OpenSSL DTLS unavailable: %s", exc)
        return False
    return True


class _Namespace:
    """What aiortc reads from ``OpenSSL.SSL``."""

    Context = Context
    Connection = Connection
    Error = Error
    WantReadError = WantReadError
    ZeroReturnError = ZeroReturnError
    DTLS_METHOD = DTLS_METHOD
    OP_NO_TICKET = OP_NO_TICKET
    VERIFY_PEER = VERIFY_PEER
    VERIFY_FAIL_IF_NO_PEER_CERT = VERIFY_FAIL_IF_NO_PEER_CERT


def install() -> bool:
    """Make aiortc's DTLS use the system OpenSSL 3 (see the module doc); idempotent.
    False when it cannot (then pyOpenSSL stays, and P-224 publishers are refused)."""
    from aiortc import rtcdtlstransport

    module: Any = rtcdtlstransport  # the patch point: the module's ``SSL`` name
    if module.SSL is _Namespace:
        return True
    if not supports_p224():
        return False
    module.SSL = _Namespace
    log.info("WebRTC DTLS on the system OpenSSL 3 (accepts stock FFmpeg WHIP's P-224)")
    return True
