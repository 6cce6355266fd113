"""A secured front for the test Elasticsearch: Debian's nginx terminating TLS, with auth.

The test Elasticsearch (the integ-test distribution) has no security module, so this puts
a real TLS server in front of it that enforces what a secured cluster enforces at its
door, and says so: it is a **test double of Elasticsearch's security layer**, not of the
store (every accepted request goes on to the real Elasticsearch).

- A throwaway CA made at test time (``cryptography``) signs the server's certificate
  (``localhost``, ``127.0.0.1``), a client certificate, and the broken certificates the
  error tests need: expired, for another host name, and one signed by another CA.
- ``auth_url``: TLS; ``Authorization: Basic`` for the user ``metronome``, or
  ``Authorization: ApiKey`` with one given key; anything else gets 401 with the body
  shape Elasticsearch answers (a key marked revoked gets its "invalidated" reason). The
  user ``reader`` is let in but refused bulk writes (403, naming the privileges, as
  Elasticsearch does) and its ``_has_privileges`` answer says what it lacks.
- ``mtls_url``: TLS that requires a client certificate signed by the test CA.
- ``expired_url``, ``wrong_host_url``, ``untrusted_url``: the broken certificates.

nginx is installed with apt when missing (like Chromium, tests/support/browser.py) and
started once per test run on free loopback ports, as the user running the tests.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import secrets
import shutil
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support import prefetch
from tests.support.browser import apt_install
from tests.support.es_server import free_port

__all__ = ["SecureProxy", "ensure_nginx"]

NGINX = Path(os.environ.get("METRONOME_TEST_NGINX", "/usr/sbin/nginx"))


def ensure_nginx(timeout_s: float = 900) -> Path:
    """The nginx executable, installed with apt first if it is missing."""
    prefetch.wait()
    if NGINX.exists():
        return NGINX
    apt_install("nginx", timeout_s=timeout_s)
    if not NGINX.exists():
        raise RuntimeError(f"apt installed nginx but {NGINX} is still missing")
    return NGINX


_NOW = datetime.datetime.now(datetime.UTC)
_DAY = datetime.timedelta(days=1)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    hosts: tuple[str, ...] = (),
    start: datetime.datetime = _NOW - _DAY,
    end: datetime.datetime = _NOW + 30 * _DAY,
    client: bool = False,
) -> x509.Certificate:
    issuer_name = issuer[0].subject if issuer else _name(subject)
    signer = issuer[1] if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is None:
        builder = builder.add_extension(
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
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()),
            critical=False,
        )
    if hosts:
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(signer, hashes.SHA256())


def _write(
    directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    cert_path = directory / f"{name}.pem"
    key_path = directory / f"{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _json(text: str) -> str:
    """A JSON body as an nginx single-quoted string."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _security_error(status: int, reason: str, extra: str = "") -> str:
    extra = f',"additional_unsuccessful_credentials":"{extra}"' if extra else ""
    cause = f'{{"type":"security_exception","reason":"{reason}"{extra}}}'
    return _json(
        f'{{"error":{{"root_cause":[{cause}],"type":"security_exception",'
        f'"reason":"{reason}"{extra}}},"status":{status}}}'
    )


@dataclass
class SecureProxy:
    """nginx in front of ``es_url``: see the module's docstring for what each URL does."""

    es_url: str
    directory: Path
    ca_path: Path
    ca_fingerprint: str  # the server certificate's SHA-256 (what the async client checks)
    client_cert: Path
    client_key: Path
    rogue_client_cert: Path
    rogue_client_key: Path
    user: str
    password: str
    reader: str
    reader_password: str
    api_key: str  # id:key
    revoked_api_key: str  # id:key
    auth_url: str
    mtls_url: str
    expired_url: str
    wrong_host_url: str
    untrusted_url: str
    proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def create(cls, es_url: str) -> SecureProxy:
        directory = Path(tempfile.mkdtemp(prefix="metronome-tls-"))
        ca_key = _key()
        ca = _certificate(
            "Metronome test CA", ca_key, None, start=_NOW - _DAY, end=_NOW + 60 * _DAY
        )
        rogue_key = _key()
        rogue = _certificate("Someone else's CA", rogue_key, None)
        ca_path, _ = _write(directory, "ca", ca, ca_key)
        hosts = ("localhost", "127.0.0.1")
        server_key = _key()
        server = _certificate("localhost", server_key, (ca, ca_key), hosts=hosts)
        _write(directory, "server", server, server_key)
        expired_key = _key()
        expired = _certificate(
            "localhost",
            expired_key,
            (ca, ca_key),
            hosts=hosts,
            start=_NOW - 30 * _DAY,
            end=_NOW - _DAY,
        )
        _write(directory, "expired", expired, expired_key)
        other_key = _key()
        other = _certificate(
            "elsewhere.example", other_key, (ca, ca_key), hosts=("elsewhere.example",)
        )
        _write(directory, "wrong-host", other, other_key)
        untrusted_key = _key()
        untrusted = _certificate("localhost", untrusted_key, (rogue, rogue_key), hosts=hosts)
        _write(directory, "untrusted", untrusted, untrusted_key)
        client_key = _key()
        client = _certificate("metronome", client_key, (ca, ca_key), client=True)
        client_cert_path, client_key_path = _write(directory, "client", client, client_key)
        rogue_client_key = _key()
        rogue_client = _certificate("metronome", rogue_client_key, (rogue, rogue_key), client=True)
        rogue_cert_path, rogue_key_path = _write(
            directory, "rogue-client", rogue_client, rogue_client_key
        )
        ports = [free_port() for _ in range(5)]
        base = "https://localhost:{}"
        return cls(
            es_url=es_url,
            directory=directory,
            ca_path=ca_path,
            ca_fingerprint=server.fingerprint(hashes.SHA256()).hex(),
            client_cert=client_cert_path,
            client_key=client_key_path,
            rogue_client_cert=rogue_cert_path,
            rogue_client_key=rogue_key_path,
            user="metronome",
            password="pw-" + secrets.token_urlsafe(18),
            reader="reader",
            reader_password="rd-" + secrets.token_urlsafe(18),
            api_key="mtk1:" + secrets.token_urlsafe(22),
            revoked_api_key="mtk0:" + secrets.token_urlsafe(22),
            auth_url=base.format(ports[0]),
            mtls_url=base.format(ports[1]),
            expired_url=base.format(ports[2]),
            wrong_host_url=base.format(ports[3]),
            untrusted_url=base.format(ports[4]),
        )

    @property
    def secrets(self) -> list[str]:
        """Every secret a run through this proxy uses, in every form it travels in."""
        forms = [self.password, self.reader_password]
        for key in (self.api_key, self.revoked_api_key):
            forms += [key.partition(":")[2], base64.b64encode(key.encode()).decode()]
        forms += [_basic(self.user, self.password).split()[1]]
        return forms

    def _config(self) -> str:
        d = self.directory
        upstream = self.es_url.removeprefix("http://")
        api_key = "ApiKey " + base64.b64encode(self.api_key.encode()).decode()
        revoked = "ApiKey " + base64.b64encode(self.revoked_api_key.encode()).decode()
        revoked_id = self.revoked_api_key.partition(":")[0]
        denied = (
            "action [indices:data/write/bulk] is unauthorized for user [reader] with effective"
            " roles [metronome-read], this action is granted by the index privileges"
            " [create_doc,create,delete,index,write,all]"
        )
        lacking = _json(
            '{"username":"reader","has_all_requested":false,"cluster":{"monitor":true},'
            '"index":{"sites":{"read":true,"index":false}},"application":{}}'
        )
        refused = (
            "unable to authenticate with provided credentials and anonymous access is not"
            " allowed for this request"
        )
        unauthenticated = _security_error(401, refused)
        invalidated = _security_error(
            401,
            refused,
            f"API key: api key [{revoked_id}] has been invalidated",
        )
        proxy = """
            proxy_pass http://elasticsearch;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "";
            proxy_read_timeout 300s;"""

        def server(port_url: str, cert: str, extra: str, body: str) -> str:
            port = port_url.rsplit(":", 1)[1]
            return f"""
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {d}/{cert}.pem;
        ssl_certificate_key {d}/{cert}-key.pem;
        {extra}
        location / {{ {body} }}
    }}"""

        client_ca = f"ssl_client_certificate {d}/ca.pem; ssl_verify_client on;"
        auth_body = f"""
            if ($es_user = revoked) {{
                add_header WWW-Authenticate 'ApiKey' always;
                return 401 {invalidated};
            }}
            if ($es_user = "") {{
                add_header WWW-Authenticate 'Basic realm="security"' always;
                return 401 {unauthenticated};
            }}
            set $gate "$es_user:$uri";
            if ($gate ~ "^reader:.*/_bulk$") {{ return 403 {_security_error(403, denied)}; }}
            if ($gate = "reader:/_security/user/_has_privileges") {{
                add_header X-Elastic-Product Elasticsearch always;
                return 200 {lacking};
            }}
            {proxy}"""
        return f"""
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
daemon off;
events {{ worker_connections 256; }}
http {{
    access_log off;
    default_type application/json;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    client_max_body_size 200m;
    map_hash_bucket_size 256;
    upstream elasticsearch {{ server {upstream}; keepalive 16; }}
    map $http_authorization $es_user {{
        default "";
        "{_basic(self.user, self.password)}" metronome;
        "{_basic(self.reader, self.reader_password)}" reader;
        "{api_key}" key;
        "{revoked}" revoked;
    }}
    {server(self.auth_url, "server", "", auth_body)}
    {server(self.mtls_url, "server", client_ca, proxy)}
    {server(self.expired_url, "expired", "", proxy)}
    {server(self.wrong_host_url, "wrong-host", "", proxy)}
    {server(self.untrusted_url, "untrusted", "", proxy)}
}}
"""

    def start(self, timeout_s: float = 30) -> None:
        nginx = ensure_nginx()
        conf = self.directory / "nginx.conf"
        conf.write_text(self._config())
        if os.geteuid() == 0:  # nginx's workers drop to nobody: let them use the temp dirs
            self.directory.chmod(0o755)
        log = open(self.directory / "stderr.log", "wb")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [str(nginx), "-p", str(self.directory), "-c", str(conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                httpx.get(
                    self.auth_url + "/_cluster/health",
                    verify=self.ssl_context(),
                    auth=(self.user, self.password),
                    timeout=5,
                ).raise_for_status()
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"nginx not answering in {timeout_s:.0f}s:\n{self.log_tail()}")

    def ssl_context(self, *, client: bool = False) -> ssl.SSLContext:
        """A client context trusting the test CA (and showing the client certificate)."""
        context = ssl.create_default_context(cafile=str(self.ca_path))
        if client:
            context.load_cert_chain(self.client_cert, self.client_key)
        return context

    def log_tail(self) -> str:
        parts = []
        for name in ("stderr.log", "error.log"):
            path = self.directory / name
            if path.exists():
                parts.append(path.read_text(errors="replace")[-3000:])
        return "\n".join(parts)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.directory, ignore_errors=True)

    def env(self, kind: str) -> dict[str, str]:
        """Metronome's settings to reach Elasticsearch through this proxy with one
        credential kind: ``basic``, ``apikey`` or ``mtls``."""
        ca = {"METRONOME_ELASTICSEARCH_CA_CERTS": str(self.ca_path)}
        if kind == "basic":
            return {
                "METRONOME_ELASTICSEARCH_URL": self.auth_url,
                "METRONOME_ELASTICSEARCH_USERNAME": self.user,
                "METRONOME_ELASTICSEARCH_PASSWORD": self.password,
                **ca,
            }
        if kind == "apikey":
            return {
                "METRONOME_ELASTICSEARCH_URL": self.auth_url,
                "METRONOME_ELASTICSEARCH_API_KEY": self.api_key,
                **ca,
            }
        if kind == "mtls":
            return {
                "METRONOME_ELASTICSEARCH_URL": self.mtls_url,
                "METRONOME_ELASTICSEARCH_CLIENT_CERT": str(self.client_cert),
                "METRONOME_ELASTICSEARCH_CLIENT_KEY": str(self.client_key),
                **ca,
            }
        raise ValueError(kind)
