"""``--ssl-certfile`` / ``--ssl-keyfile``: the server speaks https with the given certificate
(a self-signed one made here for 127.0.0.1), refuses plain http, and refuses unusable TLS
files before the model loads."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from e2e_helpers import API_KEY, MODEL_NAME, running_server

x509 = pytest.importorskip("cryptography.x509")


def write_self_signed(directory: Path) -> tuple[Path, Path]:
    """(certificate, key) PEM files for 127.0.0.1; the certificate is its own CA."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_https_with_the_given_certificate(checkpoint: Path, tmp_path: Path) -> None:
    import openai

    cert, key = write_self_signed(tmp_path)
    args = [str(checkpoint), "--served-model-name", MODEL_NAME, "--max-model-len", "256", "--device", "cpu",
            "--num-gpu-blocks-override", "256", "--api-key", API_KEY, "--ssl-certfile", str(cert),
            "--ssl-keyfile", str(key)]
    with running_server(args, tmp_path / "server.log", ca_file=str(cert)) as srv:
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


@pytest.mark.parametrize("case", ["key without certificate", "missing file", "key of another certificate"])
def test_unusable_tls_files_are_refused_before_the_model_loads(tmp_path: Path, case: str) -> None:
    cert, key = write_self_signed(tmp_path)
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    _, other_key = write_self_signed(other_dir)
    flags = {"key without certificate": ["--ssl-keyfile", str(key)],
             "missing file": ["--ssl-certfile", str(tmp_path / "nope.pem")],
             "key of another certificate": ["--ssl-certfile", str(cert), "--ssl-keyfile", str(other_key)]}[case]
    # A model path that does not exist: the TLS files are checked before the model is looked at.
    proc = subprocess.run([sys.executable, "-m", "pagedlm", "serve", str(tmp_path / "no-model"), *flags],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()[-1]
    assert ("--ssl-keyfile needs --ssl-certfile" if case == "key without certificate"
            else "cannot load the TLS certificate") in err, proc.stderr[-2000:]
