"""Trusted time for certificates: RFC 3161 time-stamp tokens over a certificate's commitment.

A certificate's ``created_utc`` is a string its holder typed, so a dispute must not order claims
by it: a thief edits the date and is "earlier". A time-stamp authority (TSA) signs the SHA-256 of
the commitment (scheme, key and release digests) together with its own clock's time; anyone who
trusts that TSA's root certificate can check the token later, offline, and no party can move the
time without the TSA's private key. The verifier chooses which roots to trust (``--tsa-root``):
a token signed under a root the claimant brought along attests nothing.

Building requests and checking tokens is ``rfc3161-client`` (the ``timestamp`` extra); this module
adds the transport (one HTTP POST, standard library) and the errors a user can act on.
"""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import CertificateError

__all__ = ["attested_time", "load_roots", "request_token", "token_of_file"]

_HASHES = {  # the message-imprint hashes rfc3161-client checks
    "2.16.840.1.101.3.4.2.1": "sha256",
    "2.16.840.1.101.3.4.2.2": "sha384",
    "2.16.840.1.101.3.4.2.3": "sha512",
}
_EXTRA = "trusted time needs the 'timestamp' extra: pip install 'passportnorm[timestamp]'"


def _client() -> Any:
    try:
        import rfc3161_client
    except ImportError:
        raise CertificateError(_EXTRA) from None
    return rfc3161_client


def request_token(url: str, message: bytes, timeout: float = 30.0) -> bytes:
    """Ask the TSA at ``url`` to time-stamp ``message`` (SHA-256, with a nonce and its certificate);
    the DER time-stamp response, already checked to answer this request."""
    client = _client()
    request = client.TimestampRequestBuilder().data(message).hash_algorithm(client.HashAlgorithm.SHA256)
    built = request.nonce(nonce=True).cert_request(cert_request=True).build()
    http = urllib.request.Request(
        url, data=built.as_bytes(), headers={"Content-Type": "application/timestamp-query"}, method="POST"
    )
    try:
        with urllib.request.urlopen(http, timeout=timeout) as answer:  # noqa: S310 (the user's URL)
            body = answer.read()
    except (urllib.error.URLError, OSError) as error:
        raise CertificateError(f"--tsa {url}: no time-stamp response ({error}); check the URL") from None
    response = _decode(body, f"the answer of --tsa {url}")
    if response.tst_info.nonce != built.nonce:
        raise CertificateError(f"--tsa {url} answered another request (nonce mismatch); try again")
    if response.tst_info.message_imprint.message != built.message_imprint.message:
        raise CertificateError(f"--tsa {url} time-stamped other data than the certificate's commitment")
    return body


def token_of_file(path: str | Path, message: bytes) -> bytes:
    """A time-stamp response obtained elsewhere (``openssl ts -reply -out FILE``, a TSA's web
    form), checked to be over ``message``: for offline use."""
    path = Path(path)
    if not path.is_file():
        raise CertificateError(f"--tsa-token {path} does not exist")
    body = path.read_bytes()
    response = _decode(body, f"--tsa-token {path}")
    imprint = response.tst_info.message_imprint
    algorithm = _HASHES.get(imprint.hash_algorithm.dotted_string)
    if algorithm is None:
        raise CertificateError(f"--tsa-token {path} uses a hash other than SHA-256/384/512; ask for SHA-256")
    if imprint.message != hashlib.new(algorithm, message).digest():
        raise CertificateError(
            f"--tsa-token {path} time-stamps other data than this certificate's commitment (SHA-256 of "
            "the file --commitment-out writes); time-stamp that file"
        )
    return body


def load_roots(paths: Iterable[str | Path]) -> list[Any]:
    """The TSA root certificates the verifier trusts, from PEM files (several per file allowed)."""
    paths = list(paths)
    if not paths:
        return []
    try:
        from cryptography import x509
    except ImportError:
        raise CertificateError(_EXTRA) from None
    roots: list[Any] = []
    for path in map(Path, paths):
        if not path.is_file():
            raise CertificateError(f"--tsa-root {path} does not exist")
        try:
            roots += x509.load_pem_x509_certificates(path.read_bytes())
        except ValueError as error:
            raise CertificateError(f"--tsa-root {path} is not a PEM certificate ({error})") from None
    return roots


def attested_time(token: bytes, message: bytes, roots: list[Any]) -> tuple[datetime | None, str]:
    """The time a TSA under one of ``roots`` attests for ``message``, and why; (None, reason) when
    the token does not verify (forged, over other data, under an untrusted root) or no root is
    trusted. Never raises on a bad token: a claimant's bad token is evidence about that claimant."""
    if not roots:
        return None, "no TSA root is trusted (--tsa-root), so no time is attested"
    client = _client()
    try:
        response = client.decode_timestamp_response(token)
    except ValueError as error:
        return None, f"the time-stamp token cannot be read ({error})"
    reasons = []
    for root in roots:
        try:
            client.VerifierBuilder().add_root_certificate(root).build().verify_message(response, message)
        except (client.VerificationError, ValueError) as error:
            reasons.append(str(error))
            continue
        when = response.tst_info.gen_time
        when = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
        return when, f"attested by {root.subject.rfc4514_string()} at {when.isoformat()}"
    return None, "the time-stamp token does not verify under any trusted root (" + "; ".join(reasons) + ")"


def _decode(body: bytes, where: str) -> Any:
    client = _client()
    try:
        response = client.decode_timestamp_response(body)
    except ValueError as error:
        raise CertificateError(f"{where} is not an RFC 3161 time-stamp response ({error})") from None
    if int(response.status) not in (0, 1):  # granted, granted with modifications
        raise CertificateError(f"{where}: the TSA refused ({response.status_string or response.status})")
    return response
