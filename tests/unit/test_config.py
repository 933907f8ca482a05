"""Config mistakes: each is a ConfigError whose text is one line naming the setting, what is wrong
and how to fix it; ``cloudrec serve`` prints that line and exits with status 2."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from cloudrec.config import (
    ConfigError,
    Settings,
    check_settings,
    load_settings,
    start_warnings,
    with_dev_app,
)

CLUSTER = Settings(redis_url="redis://10.0.0.5:6379/0", database_url="postgresql://u:pw@db/c",
                   cluster_secret="a long random string")


def one_line(exc: pytest.ExceptionInfo[ConfigError], setting: str, *fix: str) -> str:
    text = str(exc.value)
    assert text.startswith(f"config error: {setting} "), text
    assert "\n" not in text and "\r" not in text and len(text.splitlines()) == 1
    assert exc.value.setting == setting and exc.value.fix
    for words in fix:
        assert words in exc.value.fix, text
    return text


def check(**changes: object) -> pytest.ExceptionInfo[ConfigError]:
    with pytest.raises(ConfigError) as exc:
        check_settings(replace(Settings(), **changes))  # type: ignore[arg-type]
    return exc


def toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_defaults_and_a_cluster_pass() -> None:
    check_settings(Settings())
    check_settings(CLUSTER)
    check_settings(replace(CLUSTER, redis_url="rediss://r:6380", database_url="postgres://db/c"))
    check_settings(replace(CLUSTER, redis_url="unix:///run/redis.sock"))
    check_settings(Settings(ice_port_min=40000, ice_port_max=40999, workers=1, max_cpu=64.0,
                            ice_announced_addresses="203.0.113.11, 2001:db8::1"))


def test_database_url_alone_is_one_node_with_postgresql() -> None:
    check_settings(Settings(database_url="postgresql://db/c"))


def test_cluster_without_secret() -> None:
    text = one_line(check(redis_url="redis://r:6379/0", database_url="postgresql://db/c"),
                    "cluster_secret", "cluster_secret", "CLOUDREC_CLUSTER_SECRET")
    assert "is empty" in text and "every node" in text


def test_cluster_without_database_url() -> None:
    text = one_line(check(redis_url="redis://r:6379/0", cluster_secret="s"), "database_url",
                    "postgresql://", "CLOUDREC_DATABASE_URL")
    assert "redis_url is set" in text


def test_database_url_scheme_and_no_password_shown() -> None:
    text = one_line(check(database_url="mysql://u:hunter2@db/c"), "database_url",
                    "postgresql://", "CLOUDREC_DATABASE_URL")
    assert "'mysql://'" in text and "hunter2" not in text


def test_redis_url_scheme() -> None:
    text = one_line(check(redis_url="http://:hunter2@r:6379", cluster_secret="s",
                          database_url="postgresql://db/c"), "redis_url", "redis://",
                    "CLOUDREC_REDIS_URL")
    assert "hunter2" not in text
    one_line(check(redis_url="localhost:6379"), "redis_url", "redis://")


@pytest.mark.parametrize("port", [0, -1, 65536])
def test_port_out_of_range(port: int) -> None:
    one_line(check(port=port), "port", "1 to 65535", "CLOUDREC_PORT", "--port")


def test_workers_negative() -> None:
    one_line(check(workers=-1), "workers", "0 or more", "CLOUDREC_WORKERS")


@pytest.mark.parametrize("value", [0.0, -0.5, float("nan"), float("inf")])
def test_max_cpu_not_positive(value: float) -> None:
    one_line(check(max_cpu=value), "max_cpu", "positive", "CLOUDREC_MAX_CPU")


@pytest.mark.parametrize(("low", "high", "setting"), [
    (40999, 40000, "ice_port_min"), (0, 40000, "ice_port_min"), (40000, 0, "ice_port_max"),
    (-5, 40000, "ice_port_min"), (40000, 70000, "ice_port_max")])
def test_ice_port_range(low: int, high: int, setting: str) -> None:
    one_line(check(ice_port_min=low, ice_port_max=high), setting, "1-65535", "ICE_PORT_MIN")


def test_ice_announced_address_not_an_ip() -> None:
    text = one_line(check(ice_announced_addresses="203.0.113.11,example.com"),
                    "ice_announced_addresses", "IP addresses", "CLOUDREC_ICE_ANNOUNCED_ADDRESSES")
    assert "'example.com'" in text


def test_negative_and_zero_durations() -> None:
    one_line(check(stop_timeout_s=-1.0), "stop_timeout_s", "0 or more")
    one_line(check(segment_seconds=0.0), "segment_seconds", "positive")


def test_public_url_scheme() -> None:
    one_line(check(public_url="203.0.113.11:8080"), "public_url", "http://",
             "CLOUDREC_PUBLIC_URL")


def test_log_level_and_format() -> None:
    check_settings(Settings(log_level="DEBUG", log_format="json"))
    one_line(check(log_level="loud"), "log_level", "debug, info, warning, error", "--log-level")
    one_line(check(log_format="xml"), "log_format", "text or json", "--log-format")


def test_unknown_setting_in_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(toml(tmp_path, "prot = 8080\n"), env={})
    text = one_line(exc, "prot", "correct or remove it")
    assert "did you mean port?" in text and str(tmp_path / "c.toml") in text


def test_wrong_type_in_toml(tmp_path: Path) -> None:
    for line, setting in [('port = "http"', "port"), ("workers = 1.5", "workers"),
                          ('max_cpu = "much"', "max_cpu"), ("allow_private_urls = 7",
                                                             "allow_private_urls"),
                          ('host = ["a", "b"]', "host"), ("idle_timeout_s = true",
                                                          "idle_timeout_s")]:
        with pytest.raises(ConfigError) as exc:
            load_settings(toml(tmp_path, line + "\n"), env={})
        one_line(exc, setting, f"CLOUDREC_{setting.upper()}")
        assert "c.toml" in exc.value.problem


def test_compatible_types_in_toml_still_read(tmp_path: Path) -> None:
    path = toml(tmp_path, 'port = "8081"\nworkers = 2.0\nidle_timeout_s = 7\nnode_id = 5\n')
    s = load_settings(path, env={})
    assert (s.port, s.workers, s.idle_timeout_s, s.node_id) == (8081, 2, 7.0, "5")


def test_wrong_type_from_environment() -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(None, env={"CLOUDREC_PORT": "eighty"})
    text = one_line(exc, "port", "set CLOUDREC_PORT to a whole number", "unset it")
    assert "'eighty'" in text
    with pytest.raises(ConfigError) as exc:
        load_settings(None, env={"CLOUDREC_ALLOW_PRIVATE_URLS": "maybe"})
    one_line(exc, "allow_private_urls", "CLOUDREC_ALLOW_PRIVATE_URLS", "true", "false")
    env = {"CLOUDREC_ALLOW_PRIVATE_URLS": "Yes", "CLOUDREC_ALLOW_PRIVATE_STORAGE": "off"}
    s = load_settings(None, env=env)
    assert s.allow_private_urls and not s.allow_private_storage


def test_unreadable_and_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(tmp_path / "missing.toml", env={})
    one_line(exc, f"--config {tmp_path / 'missing.toml'}", "readable TOML file")
    with pytest.raises(ConfigError) as exc:
        load_settings(tmp_path, env={})  # a directory
    one_line(exc, f"--config {tmp_path}", "readable TOML file")
    with pytest.raises(ConfigError) as exc:
        load_settings(toml(tmp_path, "port = \n[broken\n"), env={})
    text = one_line(exc, f"--config {tmp_path / 'c.toml'}", "correct the file")
    assert "not valid TOML" in text and "line 1" in text


def test_bad_apps_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(toml(tmp_path, '[[apps]]\nappid = 7\nkey = "k"\n'), env={})
    assert "lacks secret" in one_line(exc, "apps", "appid", "key and secret")
    with pytest.raises(ConfigError) as exc:
        load_settings(toml(tmp_path, '[[apps]]\nappid = "x"\nkey = "k"\nsecret = "s"\n'), env={})
    one_line(exc, "apps", "appid")


def test_unwritable_data_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError) as exc:
        with_dev_app(Settings(data_dir=blocker / "data"))
    one_line(exc, "data_dir", "CLOUDREC_DATA_DIR")


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)
    assert "\n" not in str(ConfigError("x", "is\nbad", "fix\r\nit"))


def test_cluster_warns_that_local_storage_stays_on_the_node() -> None:
    assert start_warnings(Settings()) == []
    assert start_warnings(Settings(database_url="postgresql://db/c")) == []
    (warning,) = start_warnings(CLUSTER)
    assert "vender 101" in warning and "own disk" in warning and "\n" not in warning
    assert "storage_root" in warning
    shared = replace(CLUSTER, storage_root="/mnt/shared/recordings")
    assert start_warnings(shared) == []  # a root every node sees
    assert shared.local_storage_dir == Path("/mnt/shared/recordings")
    assert Settings(data_dir=Path("/d")).local_storage_dir == Path("/d/storage")


def serve(tmp_path: Path, *args: str, **env_vars: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDREC_")}
    return subprocess.run([sys.executable, "-m", "cloudrec.cli", "serve", *args], cwd=tmp_path,
                          env={**env, **env_vars}, capture_output=True, text=True, timeout=60)


def assert_one_line_exit_2(done: subprocess.CompletedProcess[str], setting: str) -> None:
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr.startswith(f"config error: {setting} ") and done.stderr.endswith("\n")
    assert done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert not any(0x2500 <= ord(c) <= 0x257F for c in done.stderr), "no box drawing"


def test_serve_without_cluster_secret_prints_one_line(tmp_path: Path) -> None:
    done = serve(tmp_path, CLOUDREC_REDIS_URL="redis://127.0.0.1:1")
    assert_one_line_exit_2(done, "cluster_secret")
    assert "CLOUDREC_CLUSTER_SECRET" in done.stderr
    assert list(tmp_path.iterdir()) == [], "nothing is created before the check"


def test_serve_with_a_bad_file_prints_one_line(tmp_path: Path) -> None:
    assert_one_line_exit_2(serve(tmp_path, "--config", str(tmp_path / "none.toml")),
                           f"--config {tmp_path / 'none.toml'}")
    assert_one_line_exit_2(serve(tmp_path, "--log-level", "loud"), "log_level")
