"""``python -m tests.whip_publisher URL KEY SECONDS [--stock]``: publish synthetic H.264 +
Opus with FFmpeg 8.1's own ``whip`` muxer (libavformat inside PyAV), paced to real time.
Exits non-zero with FFmpeg's error when refused.

By default the muxer gets an ECDSA P-256 certificate (``cert_file``/``key_file``), what
browsers and OBS present. ``--stock`` passes no certificate, as a user typing
``ffmpeg -f whip URL`` does: FFmpeg 8.1's GnuTLS build then makes a P-224 one, which the
origin accepts because its DTLS runs on the system OpenSSL 3 (origin/dtls_system.py).
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


def self_signed(
    curve: ec.EllipticCurve,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """An ECDSA key on ``curve`` and its self-signed certificate, as WebRTC peers make."""
    key = ec.generate_private_key(curve)
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
    return key, cert


def write_p256_certificate(directory: Path) -> tuple[Path, Path]:
    key, cert = self_signed(ec.SECP256R1())
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


def push(url: str, key: str, seconds: float, fps: int = 30, stock: bool = False) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        options = {"authorization": key}
        if not stock:
            cert, pkey = write_p256_certificate(Path(tmp))
            options |= {"cert_file": str(cert), "key_file": str(pkey)}
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
    push(sys.argv[1], sys.argv[2], float(sys.argv[3]), stock="--stock" in sys.argv[4:])
