"""Certificates for ``relayfl node``: a self-signed run CA and one certificate per node.

``relayfl certs --topology topology.json --out certs/`` writes::

    certs/ca.pem                    the run's CA certificate (give it to every node)
    certs/ca.key                    the CA's private key (keep it off the nodes)
    certs/node-K.pem, node-K.key    node K's certificate and private key (give to node K)

Node K's certificate has the common name ``relayfl-node-K`` and that DNS name, plus the
host of its address in the topology (and ``localhost``/``127.0.0.1``), so peers check
*which node* they talk to, not only that it belongs to the run. With ``--mutual-tls``
the listening side checks the connecting node's certificate the same way.

Uses the ``cryptography`` package (a Flower dependency), imported only when making
certificates.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from relayfl.errors import ConfigError
from relayfl.transport.base import node_name

__all__ = ["TlsFiles", "load_tls", "make_certificates"]


@dataclass(frozen=True)
class TlsFiles:
    """One node's TLS material, as paths and bytes."""

    ca_path: Path
    cert_path: Path
    key_path: Path

    @property
    def ca(self) -> bytes:
        return self.ca_path.read_bytes()

    @property
    def cert(self) -> bytes:
        return self.cert_path.read_bytes()

    @property
    def key(self) -> bytes:
        return self.key_path.read_bytes()


def load_tls(directory: str | Path, node: int) -> TlsFiles:
    """Node ``node``'s files in ``directory`` (``ca.pem``, ``node-K.pem``, ``node-K.key``).

    Raises
    ------
    ConfigError
        A file is missing, the key is not a private key matching the certificate (a
        garbage file, or another node's key), or ``ca.pem`` is not a certificate; the
        message names the file and the fix.
    """
    import ssl

    folder = Path(directory)
    files = TlsFiles(folder / "ca.pem", folder / f"node-{node}.pem", folder / f"node-{node}.key")
    for path in (files.ca_path, files.cert_path, files.key_path):
        if not path.is_file():
            raise ConfigError(
                f"certificate file {path} is missing; make the run's certificates with "
                f"`relayfl certs --topology TOPOLOGY.json --out {folder}` and copy ca.pem, "
                f"node-{node}.pem and node-{node}.key to this node (or pass --insecure on "
                "loopback only)"
            )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(files.cert_path, files.key_path)
    except ssl.SSLError as err:
        raise ConfigError(
            f"{files.key_path} is not a private key matching {files.cert_path} "
            f"({err.reason or err}); copy node-{node}.key and node-{node}.pem of the same "
            "`relayfl certs` run to this node"
        ) from None
    try:
        context.load_verify_locations(cafile=str(files.ca_path))
    except ssl.SSLError as err:
        raise ConfigError(
            f"{files.ca_path} is not a CA certificate ({err.reason or err}); copy the "
            "run's ca.pem from `relayfl certs`"
        ) from None
    return files


def _host_of(address: str | None) -> str | None:
    if not address:
        return None
    host = address.rsplit(":", 1)[0] if ":" in address else address
    return host.strip("[]") or None


def _write_private(path: Path, data: bytes) -> None:
    """Write a private key readable by its owner only (0600), whatever lies in the
    folder: a stale ``.tmp`` (with another mode, or a symlink) is removed, and the new
    one is created exclusively, never followed, and set to 0600 before the key goes in."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags, 0o600)
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(data)
    tmp.replace(path)


def make_certificates(
    out: str | Path,
    nodes: Mapping[int, str | None],
    *,
    days: int = 365,
    ca_name: str = "relayfl run CA",
) -> Path:
    """Make (or extend) a run CA and a certificate for every node.

    Parameters
    ----------
    out : str or Path
        Folder to write into. An existing ``ca.pem``/``ca.key`` there is reused, so
        certificates can be added for new nodes later.
    nodes : mapping of node id to address (``host:port``) or None
        The host of each address goes into that node's certificate.
    days : int, default 365
    ca_name : str

    Returns
    -------
    Path
        The folder.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if days < 1:
        raise ConfigError(f"days must be >= 1, got {days}")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    now = _dt.datetime.now(_dt.UTC) - _dt.timedelta(minutes=5)
    until = now + _dt.timedelta(days=days)
    ca_cert_path, ca_key_path = folder / "ca.pem", folder / "ca.key"
    pem = serialization.Encoding.PEM
    no_password = serialization.NoEncryption()
    pkcs8 = serialization.PrivateFormat.PKCS8

    if ca_cert_path.is_file() and ca_key_path.is_file():
        ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(until)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write_private(ca_key_path, ca_key.private_bytes(pem, pkcs8, no_password))
        ca_cert_path.write_bytes(ca_cert.public_bytes(pem))

    for node, address in sorted(nodes.items()):
        name = node_name(int(node))
        key = ec.generate_private_key(ec.SECP256R1())
        alt: list[x509.GeneralName] = [x509.DNSName(name), x509.DNSName("localhost")]
        ips = {ipaddress.ip_address("127.0.0.1")}
        host = _host_of(address)
        if host and host not in ("localhost", "0.0.0.0", "::"):
            try:
                ips.add(ipaddress.ip_address(host))
            except ValueError:
                alt.append(x509.DNSName(host))
        alt.extend(x509.IPAddress(ip) for ip in sorted(ips, key=str))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(until)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write_private(folder / f"node-{node}.key", key.private_bytes(pem, pkcs8, no_password))
        (folder / f"node-{node}.pem").write_bytes(cert.public_bytes(pem))
    return folder
