"""``--ssl-certfile`` / ``--ssl-keyfile``: the server speaks https with the given certificate
(a self-signed one made here for 127.0.0.1), refuses plain http, and refuses unusable TLS
files before the model loads; with ``--ssl-ca-certs`` and ``--ssl-cert-reqs 2`` it asks every
client for a certificate that CA signed."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from e2e_helpers import API_KEY, MODEL_NAME, running_server

x509 = pytest.importorskip("cryptography.x509")


def write_cert(directory: Path, stem: str, common_name: str, issuer: tuple[Path, Path] | None = None,
               extensions: tuple = ()) -> tuple[Path, Path]:
    """(certificate, key) PEM files ``stem.pem`` / ``stem-key.pem``, signed by the ``issuer``
    (certificate, key) files, or by their own key when there is none."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    issuer_name, signing_key = name, key
    if issuer is not None:
        issuer_name = x509.load_pem_x509_certificate(issuer[0].read_bytes()).subject
        signing_key = serialization.load_pem_private_key(issuer[1].read_bytes(), password=None)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1)))
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical)
    cert = builder.sign(signing_key, hashes.SHA256())
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def write_self_signed(directory: Path) -> tuple[Path, Path]:
    """(certificate, key) PEM files for 127.0.0.1; the certificate is its own CA."""
    return write_cert(directory, "cert", "127.0.0.1", extensions=(
        (x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False),
        (x509.BasicConstraints(ca=True, path_length=None), True)))


def write_client_cert(directory: Path, ca_cert: Path, ca_key: Path) -> tuple[Path, Path]:
    """(certificate, key) PEM files of a client, signed by the given CA."""
    return write_cert(directory, "client", "client", issuer=(ca_cert, ca_key))


def test_https_with_the_given_certificate(checkpoint: Path, tmp_path: Path) -> None:
    import openai

    cert, key = write_self_signed(tmp_path)
    args = [str(checkpoint), "--served-model-name", MODEL_NAME, "--max-model-len", "256", "--device", "cpu",
            "--num-gpu-blocks-override", "256", "--api-key", API_KEY, "--ssl-certfile", str(cert),
            "--ssl-keyfile", str(key)]
    with running_server(args, tmp_path / "server.log", tls=ssl.create_default_context(cafile=str(cert))) as srv:
        assert srv.url.startswith("https://")
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key=API_KEY, max_retries=0, timeout=60,
                               http_client=httpx.Client(verify=srv.verify))
        out = client.completions.create(model=MODEL_NAME, prompt="hello", max_tokens=3, temperature=0)
        assert out.usage.completion_tokens == 3
        with pytest.raises(httpx.HTTPError):  # a client that does not trust the certificate
            httpx.get(f"{srv.url}/health", timeout=5)
        with pytest.raises(httpx.HTTPError):  # plain http on the TLS port
            httpx.get(srv.url.replace("https://", "http://") + "/health", timeout=5)
        assert "on https://127.0.0.1" in srv.log_path.read_text()


def test_client_certificates_required(checkpoint: Path, tmp_path: Path) -> None:
    cert, key = write_self_signed(tmp_path)  # also the CA of the client certificate
    client_cert, client_key = write_client_cert(tmp_path, cert, key)
    args = [str(checkpoint), "--max-model-len", "256", "--device", "cpu", "--num-gpu-blocks-override", "256",
            "--ssl-certfile", str(cert), "--ssl-keyfile", str(key), "--ssl-ca-certs", str(cert), "--ssl-cert-reqs", "2"]
    with_cert = ssl.create_default_context(cafile=str(cert))
    with_cert.load_cert_chain(str(client_cert), str(client_key))
    with running_server(args, tmp_path / "server.log", tls=with_cert) as srv:
        assert httpx.get(f"{srv.url}/health", verify=with_cert, timeout=10).status_code == 200
        with pytest.raises(httpx.HTTPError):  # trusts the server, but shows no certificate
            httpx.get(f"{srv.url}/v1/models", verify=ssl.create_default_context(cafile=str(cert)), timeout=10)


CASES = ["key without certificate", "missing file", "key of another certificate", "client certificates without CAs"]


def _refusal(tmp_path: Path, case: str) -> tuple[list[str], str]:
    """(flags, the words of the error) of an unusable TLS setting."""
    cert, key = write_self_signed(tmp_path)
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    _, other_key = write_self_signed(other_dir)
    flags = {"key without certificate": ["--ssl-keyfile", str(key)],
             "missing file": ["--ssl-certfile", str(tmp_path / "nope.pem")],
             "key of another certificate": ["--ssl-certfile", str(cert), "--ssl-keyfile", str(other_key)],
             "client certificates without CAs": ["--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
                                                 "--ssl-cert-reqs", "2"]}[case]
    needle = {"key without certificate": "need --ssl-certfile",
              "client certificates without CAs": "--ssl-cert-reqs needs --ssl-ca-certs"}.get(case, "cannot load the TLS")
    return flags, needle


@pytest.mark.parametrize("case", CASES)
def test_unusable_tls_files_are_refused_by_the_flag_parser(tmp_path: Path, case: str) -> None:
    from pagedlm.config import ConfigError
    from pagedlm.entrypoints.cli import parse_serve_args
    from pagedlm.entrypoints.server_args import ServerArgs

    flags, needle = _refusal(tmp_path, case)
    with pytest.raises(ConfigError) as exc:
        ServerArgs.from_cli_args(parse_serve_args([str(tmp_path / "no-model"), *flags]), notices=False)
    assert needle in str(exc.value)


def test_unusable_tls_files_are_refused_before_the_model_loads(tmp_path: Path) -> None:
    """The whole command, once: one line on stderr, and a model path that does not exist is
    never looked at (the TLS files are checked first)."""
    flags, needle = _refusal(tmp_path, "key of another certificate")
    proc = subprocess.run([sys.executable, "-m", "pagedlm", "serve", str(tmp_path / "no-model"), *flags],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()[-1]
    assert needle in err, proc.stderr[-2000:]
