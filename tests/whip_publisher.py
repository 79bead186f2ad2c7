"""``python -m tests.whip_publisher URL KEY SECONDS``: publish synthetic H.264 + Opus with
FFmpeg 8.1's own ``whip`` muxer (libavformat inside PyAV), paced to real time. Exits non-zero
with FFmpeg's error when refused.

The muxer gets an ECDSA P-256 certificate (``cert_file``/``key_file``): FFmpeg 8.1's GnuTLS
build otherwise makes a P-224 one, a curve the OpenSSL 4 under aiortc (``cryptography``'s
wheel) no longer accepts in TLS, and the handshake ends with an illegal_parameter alert.
P-256 ECDSA is what RFC 8827 requires every WebRTC endpoint to support, and what browsers
and OBS use.
"""

from __future__ import annotations

import datetime
import sys
import tempfile
from pathlib import Path

import av
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.pyav_publisher import mux_test_signal


def write_p256_certificate(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshcast-test-publisher")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / "key.pem", directory / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def push(url: str, key: str, seconds: float, fps: int = 30) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cert, pkey = write_p256_certificate(Path(tmp))
        options = {"authorization": key, "cert_file": str(cert), "key_file": str(pkey)}
        with av.open(url, mode="w", format="whip", options=options) as out:
            video = out.add_stream("libx264", rate=fps)
            video.width, video.height, video.pix_fmt = 320, 240, "yuv420p"
            # WebRTC H.264: constrained baseline, no B-frames, a keyframe every 2 s.
            video.options = {
                "preset": "ultrafast",
                "tune": "zerolatency",
                "profile": "baseline",
                "bf": "0",
                "g": str(2 * fps),
            }
            audio = out.add_stream("libopus", rate=48000)
            audio.layout = "stereo"
            # Real time: the muxer sends RTP as it is muxed.
            mux_test_signal(out, video, audio, seconds, fps, realtime=True)


if __name__ == "__main__":
    push(sys.argv[1], sys.argv[2], float(sys.argv[3]))
