"""``[transport.quic]`` in the router's config file (atp_proto/transports/quic_settings.py):
what ``atp serve`` takes as QUIC flags, and the QUIC settings without a flag. Parsing and
refusals in words, then a real ``atp serve --config`` serving QUIC from the file alone, and
the settings reaching the running QUIC server."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from pathlib import Path

import pytest

from atp_proto.router.config import ConfigError, RouterConfig, build_config, load_file
from atp_proto.transports.quic_settings import QuicSettings
from tests.router._helpers_e2e import atp, router_process


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "router.toml"
    path.write_text(text)
    return str(path)


def test_the_table_maps_to_the_router_settings(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
[transport.quic]
listen = "0.0.0.0:9443"
cert = "certs/q.pem"
key = "certs/q.key"
retry = false
idle_timeout_s = 30
handshake_timeout_s = 2.5
max_datagram_size = 1350
max_data = 8388608
max_stream_data = 262144
udp_offload = false
""",
    )
    out = load_file(path)
    assert (out["quic_host"], out["quic_port"]) == ("0.0.0.0", 9443)
    assert out["cert_file"] == str(tmp_path / "certs" / "q.pem")  # relative to the file
    assert out["key_file"] == str(tmp_path / "certs" / "q.key")
    assert out["quic_retry"] is False
    assert out["quic"] == QuicSettings(
        idle_timeout_s=30.0,
        handshake_timeout_s=2.5,
        max_datagram_size=1350,
        max_data=8 << 20,
        max_stream_data=256 << 10,
        udp_offload=False,
    )


def test_defaults_and_off(tmp_path: Path) -> None:
    """No table: the defaults (idle timeout derived from the session's: + 5 s, >= 10 s);
    ``listen = "off"`` turns QUIC off and says so."""
    cfg = RouterConfig()
    assert cfg.quic == QuicSettings() and cfg.quic_port is None
    assert cfg.quic.idle_timeout(60_000) == 65.0 and cfg.quic.idle_timeout(1000) == 10.0
    assert QuicSettings(idle_timeout_s=3.0).idle_timeout(60_000) == 3.0
    out = load_file(_write(tmp_path, '[transport.quic]\nlisten = "off"\n'))
    assert out["quic_port"] is None and out["quic"].disabled


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ("bogus = 1", "unknown setting(s) bogus"),
        ('listen = "nowhere"', "transport.quic.listen"),
        ("idle_timeout_s = 0", "idle_timeout_s must be positive"),
        ('idle_timeout_s = "1"', "idle_timeout_s must be a number"),
        ("max_datagram_size = 800", "max_datagram_size must be within 1200"),
        ("max_datagram_size = 70000", "max_datagram_size must be within 1200"),
        ("max_data = true", "max_data must be an integer"),
        ("max_stream_data = 1024", "max_stream_data must be within"),
        ("max_data = 65536\nmax_stream_data = 131072", "must not exceed max_data"),
        ('cert = "a.pem"', "cert and key go together"),
        ('retry = "yes"', "retry must be true or false"),
        ("udp_offload = 1", "udp_offload must be true or false"),
    ],
)
def test_wrong_values_are_refused_in_words(tmp_path: Path, body: str, words: str) -> None:
    path = _write(tmp_path, f"[transport.quic]\n{body}\n")
    with pytest.raises(ConfigError) as err:
        build_config(file=path, env={}, flags={})
    assert words in str(err.value) and path in str(err.value)


def test_other_transport_tables_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[transport\] holds the table \[transport.quic\]"):
        load_file(_write(tmp_path, "[transport.carrier_pigeon]\nrate = 1\n"))


def test_listen_without_a_certificate_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, '[transport.quic]\nlisten = "127.0.0.1:0"\n')
    with pytest.raises(ConfigError, match="QUIC needs a certificate"):
        build_config(file=path, env={}, flags={})


def test_serve_takes_quic_from_the_file(tmp_path: Path, cert) -> None:
    """``atp serve --config`` with ``[transport.quic]`` (listen, cert, key) and no QUIC
    flag serves QUIC there; ``atp send quic://`` streams from it. ``--quic off`` wins over
    the file; a bad value is bad usage (exit 2) in one line."""
    shutil.copy(cert.cert, tmp_path / "q.pem")
    shutil.copy(cert.key, tmp_path / "q.key")
    port = _free_udp_port()
    path = _write(
        tmp_path,
        f'[transport.quic]\nlisten = "127.0.0.1:{port}"\ncert = "q.pem"\nkey = "q.key"\n'
        "idle_timeout_s = 20\nmax_datagram_size = 1400\n",
    )
    serve = ("--no-auth", "--ws", "127.0.0.1:0", "--metrics", "off", "--config", path)
    with router_process(*serve) as router:
        assert f"quic=quic://127.0.0.1:{port}" in "".join(router.lines)
        url = f"quic://127.0.0.1:{port}"
        ok = atp("send", url, "--prompt", "hello from the file", "--ca", cert.cert, "--json")
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout.strip().splitlines()[-1])["kind"] == "final"
    with router_process(*serve, "--quic", "off") as router:
        assert "quic=off" in "".join(router.lines)
    (tmp_path / "router.toml").write_text("[transport.quic]\nmax_datagram_size = 10\n")
    bad = atp("serve", "--no-auth", "--config", path)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
    assert "max_datagram_size" in bad.stderr and "Traceback" not in bad.stderr


async def test_the_settings_reach_the_quic_server(quic_router) -> None:
    """The running QUIC server uses the table's values: idle and handshake timeouts,
    datagram size and QUIC windows (aioquic's configuration of the listener), UDP
    offload off (its socket does neither GSO nor GRO)."""
    settings = QuicSettings(
        idle_timeout_s=7.0,
        handshake_timeout_s=3.0,
        max_datagram_size=1300,
        max_data=2 << 20,
        max_stream_data=512 << 10,
        udp_offload=False,
    )
    router = await quic_router(quic=settings)
    server = router.quic_server
    assert server is not None and server._conf is not None
    assert server.cfg.idle_timeout == 7.0 and server.cfg.handshake_timeout == 3.0
    conf = server._conf
    assert conf.idle_timeout == 7.0 and conf.max_datagram_size == 1300
    assert (conf.max_data, conf.max_stream_data) == (2 << 20, 512 << 10)
    assert server._endpoint is not None and not (server._endpoint.gso or server._endpoint.gro)
    assert os.path.exists(server.cfg.cert_file)


def test_a_tls_section_alone_turns_quic_on(tmp_path: Path, cert) -> None:
    """[ATP-QUIC-019] ``atp serve --config`` whose file has only ``[tls]`` (no QUIC flag,
    no ``[transport.quic]``) serves QUIC beside WebSocket with that certificate: a QUIC
    client streams from it. ``[transport.quic] listen = "off"`` beside it turns QUIC off."""
    shutil.copy(cert.cert, tmp_path / "c.pem")
    shutil.copy(cert.key, tmp_path / "c.key")
    path = _write(tmp_path, '[tls]\ncert = "c.pem"\nkey = "c.key"\n')
    serve = ("--no-auth", "--ws", "127.0.0.1:0", "--metrics", "off", "--config", path)
    with router_process(*serve) as router:
        found = re.search(r"quic=quic://127\.0\.0\.1:(\d+)", "".join(router.lines))
        assert found is not None, router.lines
        url = f"quic://127.0.0.1:{found.group(1)}"
        ok = atp("send", url, "--prompt", "hello over [tls]", "--ca", cert.cert, "--json")
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout.strip().splitlines()[-1])["kind"] == "final"
    _write(tmp_path, '[tls]\ncert = "c.pem"\nkey = "c.key"\n[transport.quic]\nlisten = "off"\n')
    with router_process(*serve) as router:
        assert "quic=off" in "".join(router.lines)


def _serve_config(argv: list[str], env: dict[str, str] | None = None) -> RouterConfig:
    """``atp serve ARGV``'s merged configuration (flags, the file, the environment)."""
    from atp_proto._cli.serve import config_from_args
    from atp_proto.cli import build_parser

    args = build_parser().parse_args(["serve", *argv])
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env or {})
    try:
        cfg: RouterConfig = config_from_args(args)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return cfg


def test_quic_beside_websocket_wherever_the_certificate_comes_from(tmp_path: Path, cert) -> None:
    """[ATP-QUIC-019] QUIC goes on the WebSocket's host and port number over UDP, with a
    certificate from any layer, and wherever the WebSocket address came from (a flag, the
    config file, ATP_WS); ``--quic HOST:PORT`` takes the file's ``[tls]`` certificate
    (it was refused as having none); without any certificate it is bad usage."""
    from atp_proto.cli import UsageError

    shutil.copy(cert.cert, tmp_path / "c.pem")
    shutil.copy(cert.key, tmp_path / "c.key")
    tls = _write(tmp_path, '[tls]\ncert = "c.pem"\nkey = "c.key"\n')
    pair = ["--cert", cert.cert, "--key", cert.key]
    cfg = _serve_config(["--config", tls])
    assert (cfg.quic_host, cfg.quic_port) == ("127.0.0.1", 7443)
    cfg = _serve_config(["--config", tls, "--ws", "127.0.0.1:9001"])
    assert (cfg.quic_host, cfg.quic_port) == ("127.0.0.1", 9001)
    cfg = _serve_config([*pair], env={"ATP_WS": "127.0.0.2:9002"})
    assert (cfg.quic_host, cfg.quic_port) == ("127.0.0.2", 9002)  # was 127.0.0.1:7443
    cfg = _serve_config(["--config", tls, "--quic", "127.0.0.1:9003"])
    assert cfg.quic_port == 9003 and cfg.tls is not None
    assert _serve_config(["--config", tls, "--quic", "off"]).quic_port is None
    assert _serve_config([]).quic_port is None  # no certificate: no QUIC
    with pytest.raises(UsageError, match="QUIC needs a certificate"):
        _serve_config(["--quic", "127.0.0.1:9004"])
