"""Access defaults: token authorization beyond loopback, the explicit opt-out, TLS settings, client keys."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import pytest

from serving.app.cli import main
from serving.client.access import TOKEN_ENV, resolve_token
from serving.errors import ConfigError, RequestError
from serving.tls import certificate_name, loopback_context
from serving.torchserve import ServerSettings, render_properties
from tests.certificates import Pki, make_key, make_pki


def _settings(tmp_path: Path, **kwargs: object) -> ServerSettings:
    store = tmp_path / "store"
    store.mkdir(exist_ok=True)
    return ServerSettings(model_store=store, runtime_dir=tmp_path / "rt", **kwargs)  # type: ignore[arg-type]


def _props(settings: ServerSettings) -> dict[str, str]:
    lines = render_properties(settings).splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.mark.parametrize("host", ["127.0.0.1", "127.3.2.1", "::1", "localhost", "LOCALHOST"])
def test_loopback_keeps_token_auth_off_by_default(tmp_path: Path, host: str) -> None:
    settings = _settings(tmp_path, host=host)
    assert not settings.auth_enabled and settings.auth_warning() is None
    assert _props(settings)["disable_token_authorization"] == "true"


@pytest.mark.parametrize(
    ("host", "management_host"),
    [
        ("0.0.0.0", "127.0.0.1"),
        ("::", "127.0.0.1"),
        ("10.1.2.3", "127.0.0.1"),
        ("model.example", "::1"),
        ("127.0.0.1", "0.0.0.0"),
    ],
)
def test_beyond_loopback_turns_token_auth_on(tmp_path: Path, host: str, management_host: str) -> None:
    settings = _settings(tmp_path, host=host, management_host=management_host)
    assert settings.auth_enabled and settings.auth_warning() is None
    props = _props(settings)
    assert "disable_token_authorization" not in props
    # TorchServe's keys would otherwise expire after an hour and lock every client out.
    assert float(props["token_expiration_min"]) >= 365 * 24 * 60


def test_opting_out_beyond_loopback_is_explicit_and_warns(tmp_path: Path) -> None:
    settings = _settings(tmp_path, host="0.0.0.0", token_auth=False)
    assert not settings.auth_enabled
    assert _props(settings)["disable_token_authorization"] == "true"
    warning = settings.auth_warning()
    assert warning is not None and "0.0.0.0" in warning and "without a key" in warning
    assert _settings(tmp_path, token_auth=True).auth_enabled  # on loopback too, when asked


def test_serve_prints_the_opt_out_warning_and_only_then(tmp_path: Path, capsys) -> None:
    missing = str(tmp_path / "no-store")
    base = ["serve", "--model-store", missing, "--runtime-dir", str(tmp_path / "rt"), "--host", "0.0.0.0"]
    assert main([*base, "--no-token-auth"]) == 2  # the missing store stops it after the warning
    err = capsys.readouterr().err
    assert "warning: token authorization is OFF while TorchServe listens on 0.0.0.0" in err
    assert main(base) == 2
    assert "warning" not in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one or the other
        main([*base, "--token-auth", "--no-token-auth"])


def test_tls_settings_turn_on_https_everywhere_and_grpc_ssl(tmp_path: Path, pki: Pki) -> None:
    props = _props(_settings(tmp_path, tls_cert=pki.cert, tls_key=pki.key))
    for key in ("inference_address", "management_address", "metrics_address"):
        assert props[key].startswith("https://"), key
    assert props["certificate_file"] == str(pki.cert) and props["private_key_file"] == str(pki.key)
    assert props["enable_grpc_ssl"] == "true"
    assert "certificate_file" not in _props(_settings(tmp_path))
    with pytest.raises(ConfigError, match="set from a typed setting"):
        _props(_settings(tmp_path, extra={"enable_grpc_ssl": "false"}))


def test_tls_needs_both_files_and_a_key_torchserve_can_read(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(ConfigError, match="both"):
        _settings(tmp_path, tls_cert=pki.cert).validate()
    with pytest.raises(ConfigError, match="found nothing"):
        _settings(tmp_path, tls_cert=pki.cert, tls_key=tmp_path / "missing.key").validate()
    with pytest.raises(ConfigError, match="PEM certificate"):
        _settings(tmp_path, tls_cert=pki.key, tls_key=pki.key).validate()
    for kind in ("ec", "pkcs1"):
        bad = make_key(tmp_path / f"{kind}.key", kind)
        with pytest.raises(ConfigError, match="PKCS#8 RSA") as caught:
            _settings(tmp_path, tls_cert=pki.cert, tls_key=bad).validate()
        assert "openssl pkcs8" in (caught.value.hint or "")


def test_clients_take_the_key_from_the_flag_then_the_environment_then_the_key_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "key_file.json"
    key_file.write_text(json.dumps({"inference": {"key": "from-file"}, "management": {"key": "m"}}))
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert resolve_token(None, None) is None
    assert resolve_token(None, key_file) == "from-file"
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert resolve_token(None, key_file) == "from-env"
    assert resolve_token("from-flag", key_file) == "from-flag"
    monkeypatch.delenv(TOKEN_ENV)
    with pytest.raises(RequestError, match="inference key"):
        resolve_token(None, tmp_path / "missing.json")


def test_loopback_tls_names_the_certificate_host(pki: Pki, tmp_path: Path) -> None:
    # The gateway reaches TorchServe at 127.0.0.1 and checks the certificate against its own name.
    assert certificate_name(pki.cert) == "localhost"
    assert certificate_name(tmp_path / "missing.pem") is None
    context = loopback_context(pki.cert)
    assert not context.check_hostname and context.verify_mode is ssl.CERT_REQUIRED
