"""raftkv serve's configuration: etcd's flags, env vars, config file, defaults and checks."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest

from raftkv import limits
from raftkv.cli import main
from raftkv.server.config import ConfigError, ServerConfig, load_config

GIB = 1024 * limits.MIB
PEER_A = "http://127.0.0.1:12380"
PEER_B = "http://127.0.0.1:22380"


def error_of(argv: list[str], environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as raised:
        load_config(argv, environ or {})
    assert str(raised.value) == raised.value.message
    return raised.value.message


def write_config_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "etcd.conf.yml"
    path.write_text(text, encoding="utf-8")
    return path


# --- Defaults ----------------------------------------------------------------------------


def test_defaults_are_etcds() -> None:
    config = load_config([], {})
    assert config.name == "default"
    assert config.data_dir == "default.etcd"
    assert config.listen_client_urls == ("http://localhost:2379",)
    assert config.advertise_client_urls == ("http://localhost:2379",)
    assert config.listen_client_http_urls == ()
    assert config.listen_peer_urls == ("http://localhost:2380",)
    assert config.initial_advertise_peer_urls == ("http://localhost:2380",)
    assert config.initial_cluster == {"default": ("http://localhost:2380",)}
    assert config.initial_cluster_state == "new"
    assert config.initial_cluster_token == "etcd-cluster"
    assert (config.heartbeat_interval_ms, config.election_timeout_ms) == (100, 1000)
    assert config.election_ticks == 10
    assert config.snapshot_count == 10_000  # etcd 3.6's default
    assert config.quota_backend_bytes == 2 * GIB
    assert config.max_request_bytes == 1_572_864
    assert config.max_txn_ops == 128
    assert config.auto_compaction_mode == "periodic"
    assert config.auto_compaction_retention == "0"
    assert config.auto_compaction_retention_seconds == 0
    assert config.log_level == "info"
    assert config.unsafe_no_fsync is False
    assert config.enable_grpc_gateway is True
    assert (config.backend_batch_interval_ms, config.backend_batch_limit) == (100, 10_000)
    # The dataclass's own defaults agree with what an empty command line gives.
    assert config == ServerConfig()


def test_backend_batch_flags_as_etcd_reads_them() -> None:
    config = load_config(["--backend-batch-interval", "20ms", "--backend-batch-limit", "50"], {})
    assert (config.backend_batch_interval_ms, config.backend_batch_limit) == (20, 50)
    environ = {"ETCD_BACKEND_BATCH_INTERVAL": "1s", "ETCD_BACKEND_BATCH_LIMIT": "7"}
    config = load_config([], environ)
    assert (config.backend_batch_interval_ms, config.backend_batch_limit) == (1000, 7)
    # etcd's zero values stand for the defaults.
    config = load_config(["--backend-batch-interval", "0", "--backend-batch-limit", "0"], {})
    assert (config.backend_batch_interval_ms, config.backend_batch_limit) == (100, 10_000)
    assert "not a duration" in error_of(["--backend-batch-interval", "soon"])
    assert "must not be negative" in error_of(["--backend-batch-limit", "-1"])


def test_data_dir_and_initial_cluster_follow_the_name() -> None:
    config = load_config(
        ["--name", "infra1", "--initial-advertise-peer-urls", PEER_A, "--listen-peer-urls", PEER_A],
        {},
    )
    assert config.data_dir == "infra1.etcd"
    assert config.initial_cluster == {"infra1": (PEER_A,)}


def test_quota_zero_means_the_default_and_a_huge_quota_warns() -> None:
    assert load_config(["--quota-backend-bytes", "0"], {}).quota_backend_bytes == 2 * GIB
    config = load_config(["--quota-backend-bytes", str(9 * GIB)], {})
    assert config.quota_backend_bytes == 9 * GIB
    assert any("--quota-backend-bytes" in warning for warning in config.warnings)
    assert not any("--quota-backend-bytes" in warning for warning in load_config([], {}).warnings)


# --- Precedence: flag > RAFTKV_ env > ETCD_ env > default -----------------------------------


@pytest.mark.parametrize(
    ("flag", "env_suffix", "values", "read"),
    [
        ("--log-level", "LOG_LEVEL", ("debug", "warn", "error"), lambda c: c.log_level),
        (
            "--heartbeat-interval",
            "HEARTBEAT_INTERVAL",
            ("50", "60", "70"),
            lambda c: str(c.heartbeat_interval_ms),
        ),
        ("--data-dir", "DATA_DIR", ("/d/etcd", "/d/raftkv", "/d/flag"), lambda c: c.data_dir),
        ("--snapshot-count", "SNAPSHOT_COUNT", ("5", "6", "7"), lambda c: str(c.snapshot_count)),
    ],
)
def test_flag_beats_raftkv_env_beats_etcd_env_beats_default(
    flag: str, env_suffix: str, values: tuple[str, str, str], read: Any
) -> None:
    etcd_value, raftkv_value, flag_value = values
    default = read(load_config([], {}))
    assert default not in values
    assert read(load_config([], {f"ETCD_{env_suffix}": etcd_value})) == etcd_value
    both = {f"ETCD_{env_suffix}": etcd_value, f"RAFTKV_{env_suffix}": raftkv_value}
    assert read(load_config([], both)) == raftkv_value
    assert read(load_config([flag, flag_value], both)) == flag_value
    assert read(load_config([f"{flag}={flag_value}"], both)) == flag_value


def test_env_url_lists_and_cluster_are_read_like_flags() -> None:
    environ = {
        "ETCD_NAME": "b",
        "ETCD_INITIAL_CLUSTER": f"a={PEER_A}, b={PEER_B}",
        "ETCD_INITIAL_ADVERTISE_PEER_URLS": PEER_B,
        "ETCD_LISTEN_PEER_URLS": PEER_B,
        "ETCD_LISTEN_CLIENT_URLS": "http://127.0.0.1:1,http://127.0.0.1:2",
        "ETCD_ADVERTISE_CLIENT_URLS": "http://127.0.0.1:1",
        "ETCD_INITIAL_CLUSTER_STATE": "existing",
        "ETCD_UNSAFE_NO_FSYNC": "true",
    }
    config = load_config([], environ)
    assert config.initial_cluster == {"a": (PEER_A,), "b": (PEER_B,)}
    assert config.listen_client_urls == ("http://127.0.0.1:1", "http://127.0.0.1:2")
    assert config.initial_cluster_state == "existing"
    assert config.unsafe_no_fsync is True


def test_unknown_env_vars_warn_and_do_not_stop_the_member() -> None:
    config = load_config([], {"ETCD_NO_SUCH_THING": "1", "RAFTKV_MAX_WALS": "3", "HOME": "/"})
    assert "ignoring unrecognized environment variable ETCD_NO_SUCH_THING" in config.warnings
    assert any(w.startswith("ignoring RAFTKV_MAX_WALS") for w in config.warnings)
    assert not any("HOME" in warning for warning in config.warnings)


def test_bool_flags_take_go_spellings() -> None:
    assert load_config(["--unsafe-no-fsync"], {}).unsafe_no_fsync is True
    assert load_config(["--unsafe-no-fsync=false"], {}).unsafe_no_fsync is False
    assert load_config(["--enable-grpc-gateway=0"], {}).enable_grpc_gateway is False
    assert load_config([], {"RAFTKV_ENABLE_GRPC_GATEWAY": "FALSE"}).enable_grpc_gateway is False
    assert error_of(["--unsafe-no-fsync=yes"]) == '--unsafe-no-fsync: "yes" is not true or false'


def test_unknown_flag_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        load_config(["--max-wals", "3"], {})
    assert raised.value.code == 2
    assert "unrecognized arguments: --max-wals" in capsys.readouterr().err


def test_flags_are_not_abbreviated() -> None:
    with pytest.raises(SystemExit):
        load_config(["--heartbeat", "50"], {})


# --- Config file: used alone, as etcd does ----------------------------------------------------


def test_config_file_keys_are_etcds(tmp_path: Path) -> None:
    path = write_config_file(
        tmp_path,
        f"""
name: infra2
data-dir: /var/lib/raftkv
listen-client-urls: http://127.0.0.1:3379,http://127.0.0.1:4379
advertise-client-urls: http://127.0.0.1:3379
listen-peer-urls: {PEER_B}
initial-advertise-peer-urls: {PEER_B}
initial-cluster: infra1={PEER_A},infra2={PEER_B}
initial-cluster-state: existing
initial-cluster-token: tok
heartbeat-interval: 50
election-timeout: 500
snapshot-count: 42
quota-backend-bytes: 1048576
max-request-bytes: 4096
max-txn-ops: 16
auto-compaction-mode: revision
auto-compaction-retention: 1000
log-level: warn
unsafe-no-fsync: true
enable-grpc-gateway: false
""",
    )
    config = load_config(["--config-file", str(path)], {})
    assert config.name == "infra2"
    assert config.data_dir == "/var/lib/raftkv"
    assert config.listen_client_urls == ("http://127.0.0.1:3379", "http://127.0.0.1:4379")
    assert config.initial_cluster == {"infra1": (PEER_A,), "infra2": (PEER_B,)}
    assert config.initial_cluster_state == "existing"
    assert config.initial_cluster_token == "tok"
    assert (config.heartbeat_interval_ms, config.election_timeout_ms) == (50, 500)
    assert (config.snapshot_count, config.quota_backend_bytes) == (42, 1048576)
    assert (config.max_request_bytes, config.max_txn_ops) == (4096, 16)
    assert config.auto_compaction_mode == "revision"
    assert config.auto_compaction_retention_revisions == 1000
    assert config.log_level == "warn"
    assert config.unsafe_no_fsync is True
    assert config.enable_grpc_gateway is False


def test_with_a_config_file_flags_and_env_are_ignored_with_a_warning(tmp_path: Path) -> None:
    path = write_config_file(tmp_path, "log-level: error\n")
    config = load_config(
        ["--config-file", str(path), "--log-level", "debug", "--snapshot-count", "5"],
        {"ETCD_NAME": "from-env", "RAFTKV_LOG_LEVEL": "warn"},
    )
    assert config.log_level == "error"  # the file
    assert config.name == "default"  # the default, not ETCD_NAME
    assert config.snapshot_count == 10_000  # the default, not the flag
    [warning] = [w for w in config.warnings if "ignored" in w]
    for ignored in ("--log-level", "--snapshot-count", "ETCD_NAME", "RAFTKV_LOG_LEVEL"):
        assert ignored in warning


def test_config_file_can_come_from_the_environment(tmp_path: Path) -> None:
    path = write_config_file(tmp_path, "name: from-file\n")
    assert load_config([], {"RAFTKV_CONFIG_FILE": str(path)}).name == "from-file"
    assert load_config([], {"ETCD_CONFIG_FILE": str(path)}).name == "from-file"


def test_config_file_problems_are_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yml"
    assert "cannot read it" in error_of(["--config-file", str(missing)])
    broken = write_config_file(tmp_path, "a: [")
    assert "not valid YAML" in error_of(["--config-file", str(broken)])
    assert "expected a mapping" in error_of(
        ["--config-file", str(write_config_file(tmp_path, "- a\n- b\n"))]
    )
    unknown = write_config_file(tmp_path, "nmae: typo\n")
    assert error_of(["--config-file", str(unknown)]) == f"{unknown}: unknown key 'nmae'"
    as_list = write_config_file(tmp_path, "listen-client-urls: [http://127.0.0.1:1]\n")
    assert "comma-separated" in error_of(["--config-file", str(as_list)])
    bad_value = write_config_file(tmp_path, "heartbeat-interval: fast\n")
    assert error_of(["--config-file", str(bad_value)]) == (
        f'{bad_value}: heartbeat-interval (--heartbeat-interval): "fast" is not an integer'
    )


def test_config_file_etcd_keys_raftkv_lacks_only_warn(tmp_path: Path) -> None:
    path = write_config_file(tmp_path, "max-wals: 3\nexperimental-foo: 1\nname: x\n")
    config = load_config(["--config-file", str(path)], {})
    assert config.name == "x"
    assert sum("does not implement" in warning for warning in config.warnings) == 2


# --- Validation: every message names the flag -----------------------------------------------


def test_election_timeout_bounds() -> None:
    assert error_of(["--election-timeout", "50"]) == (
        "--election-timeout (50) must be at least 5 times --heartbeat-interval (100)"
    )
    assert error_of(["--election-timeout", "50001"]) == (
        "--election-timeout (50001) must be at most 50000 ms"
    )
    assert load_config(["--election-timeout", "500"], {}).election_timeout_ms == 500
    assert error_of(["--heartbeat-interval", "0"]) == (
        "--heartbeat-interval (0) must be at least 1"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--listen-peer-urls", "foo"],
            '--listen-peer-urls: "foo" is not a URL like http://host:port',
        ),
        (
            ["--listen-client-urls", "http://127.0.0.1", "--advertise-client-urls", "http://a:1"],
            '--listen-client-urls: "http://127.0.0.1" is not a URL like http://host:port',
        ),
        (
            ["--listen-peer-urls", "https://127.0.0.1:2380"],
            "--listen-peer-urls: https://127.0.0.1:2380 uses https, which needs "
            "--peer-cert-file and --peer-key-file",
        ),
        (
            ["--advertise-client-urls", "http://h:1/v3"],
            '--advertise-client-urls: "http://h:1/v3" must be only http://host:port, '
            "without a path",
        ),
        (
            ["--listen-peer-urls", "http://example.com:2380"],
            '--listen-peer-urls: "http://example.com:2380": a listen URL needs an IP address '
            "or localhost, not a host name",
        ),
        (
            ["--listen-peer-urls", "http://127.0.0.1:0"],
            '--listen-peer-urls: "http://127.0.0.1:0" needs a port from 1 to 65535',
        ),
        (["--listen-peer-urls", ""], "--listen-peer-urls must list at least one URL"),
    ],
)
def test_bad_urls(argv: list[str], message: str) -> None:
    assert error_of(argv) == message


def test_listen_client_urls_need_advertise_client_urls() -> None:
    assert error_of(["--listen-client-urls", "http://127.0.0.1:3379"]) == (
        "--advertise-client-urls is required when --listen-client-urls is set explicitly"
    )


def test_one_address_is_not_listened_on_twice() -> None:
    assert error_of(["--listen-client-http-urls", "http://localhost:2379"]) == (
        "--listen-client-http-urls: localhost:2379 is already used by --listen-client-urls"
    )


def test_env_values_are_checked_and_named() -> None:
    message = error_of([], {"ETCD_INITIAL_CLUSTER_STATE": "bogus"})
    assert message == (
        'ETCD_INITIAL_CLUSTER_STATE (--initial-cluster-state): "bogus" is not one of new, existing'
    )
    assert error_of([], {"RAFTKV_MAX_TXN_OPS": "many"}) == (
        'RAFTKV_MAX_TXN_OPS (--max-txn-ops): "many" is not an integer'
    )


def test_initial_cluster_must_hold_this_member() -> None:
    assert error_of(["--name", "c", "--initial-cluster", f"a={PEER_A},b={PEER_B}"]) == (
        '--initial-cluster (a, b) has no entry for --name ("c")'
    )


def test_advertised_peer_urls_must_match_the_cluster_entry() -> None:
    argv = ["--name", "a", "--initial-cluster", f"a={PEER_A}", "--initial-advertise-peer-urls"]
    assert error_of([*argv, PEER_B]) == (
        f"--initial-advertise-peer-urls ({PEER_B}) must match the --initial-cluster entry "
        f'for "a" ({PEER_A})'
    )
    assert load_config([*argv, PEER_A], {}).initial_cluster == {"a": (PEER_A,)}


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--quota-backend-bytes", "-1", "--quota-backend-bytes (-1) must not be negative"),
        ("--max-request-bytes", "-5", "--max-request-bytes (-5) must not be negative"),
        ("--snapshot-count", "-1", "--snapshot-count (-1) must not be negative"),
        ("--max-txn-ops", "0", "--max-txn-ops (0) must be at least 1"),
        ("--max-request-bytes", "1.5", '--max-request-bytes: "1.5" is not an integer'),
    ],
)
def test_bad_sizes(flag: str, value: str, message: str) -> None:
    assert error_of([flag, value]) == message


def test_max_request_bytes_ceiling() -> None:
    ceiling = limits.MAX_REQUEST_BYTES_CEILING
    assert load_config(["--max-request-bytes", str(ceiling)], {}).max_request_bytes == ceiling
    message = error_of(["--max-request-bytes", str(ceiling + 1)])
    assert message.startswith(f"--max-request-bytes ({ceiling + 1}) must be at most {ceiling}")


def test_unknown_log_level() -> None:
    assert error_of(["--log-level", "loud"]) == (
        '--log-level: "loud" is not one of debug, info, warn, error, panic, fatal'
    )


def test_name_must_be_usable_in_initial_cluster() -> None:
    assert error_of(["--name", ""]) == "--name must not be empty"
    assert "may not contain" in error_of(["--name", "a=b"])


# --- --initial-cluster parsing -----------------------------------------------------------------


def test_initial_cluster_parsing() -> None:
    config = load_config(
        [
            "--name",
            "a",
            "--initial-advertise-peer-urls",
            f"{PEER_A},http://127.0.0.1:12381",
            "--initial-cluster",
            f" a={PEER_A}/ ,b={PEER_B},a=http://127.0.0.1:12381,",
        ],
        {},
    )
    # A name listed twice has two peer URLs; a trailing slash and spaces are dropped.
    assert config.initial_cluster == {
        "a": (PEER_A, "http://127.0.0.1:12381"),
        "b": (PEER_B,),
    }


@pytest.mark.parametrize(
    ("cluster", "message"),
    [
        ("a", '--initial-cluster: "a" is not name=http://host:port'),
        (f"={PEER_A}", f'--initial-cluster: "={PEER_A}" is not name=http://host:port'),
        (f"a={PEER_A},b={PEER_A}", f"--initial-cluster: peer URL {PEER_A} is listed twice"),
        ("a=foo", '--initial-cluster: "foo" is not a URL like http://host:port'),
        (",", "--initial-cluster must list at least one member"),
    ],
)
def test_bad_initial_cluster(cluster: str, message: str) -> None:
    assert error_of(["--name", "a", "--initial-cluster", cluster]) == message


# --- Auto-compaction retention -------------------------------------------------------------


@pytest.mark.parametrize(
    ("retention", "seconds"),
    [
        ("0", 0),
        ("1", 3600),  # a bare number is hours in periodic mode, as in etcd
        ("72", 72 * 3600),
        ("1h", 3600),
        ("30m", 1800),
        ("5s", 5),
        ("1h30m", 5400),
        ("1.5h", 5400),
        ("2500ms", None),
        ("1x", None),
        ("-1h", None),
        ("h", None),
    ],
)
def test_periodic_retention(retention: str, seconds: int | None) -> None:
    argv = [f"--auto-compaction-retention={retention}"]
    if seconds is None:
        assert error_of(argv).startswith(f'--auto-compaction-retention: "{retention}" is not')
        return
    config = load_config(argv, {})
    assert config.auto_compaction_retention == retention
    assert config.auto_compaction_retention_seconds == seconds
    assert config.auto_compaction_retention_revisions == 0


def test_revision_retention() -> None:
    config = load_config(
        ["--auto-compaction-mode", "revision", "--auto-compaction-retention", "1000"], {}
    )
    assert config.auto_compaction_retention_revisions == 1000
    assert config.auto_compaction_retention_seconds == 0
    assert error_of(
        ["--auto-compaction-mode", "revision", "--auto-compaction-retention", "1h"]
    ) == (
        '--auto-compaction-retention: "1h" is not a revision count (a non-negative integer), '
        "as --auto-compaction-mode is revision"
    )
    assert error_of(["--auto-compaction-mode", "hourly"]) == (
        '--auto-compaction-mode: "hourly" is not one of periodic, revision'
    )


# --- `raftkv serve` --------------------------------------------------------------------------


def test_serve_reports_a_bad_config_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--election-timeout", "10"]) == 2
    captured = capsys.readouterr()
    assert captured.err == (
        "raftkv serve: --election-timeout (10) must be at least 5 times "
        "--heartbeat-interval (100)\n"
    )


def test_serve_hands_the_config_to_the_server(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    served: list[ServerConfig] = []

    def fake_serve(config: ServerConfig) -> int:
        served.append(config)
        return 7

    fake = types.ModuleType("raftkv.server.main")
    fake.serve = fake_serve  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "raftkv.server.main", fake)
    monkeypatch.setenv("RAFTKV_LOG_LEVEL", "debug")
    monkeypatch.delenv("ETCD_CONFIG_FILE", raising=False)
    monkeypatch.delenv("RAFTKV_CONFIG_FILE", raising=False)

    assert main(["serve", "--name", "solo", "--unsafe-no-fsync"]) == 7
    [config] = served
    assert (config.name, config.log_level, config.unsafe_no_fsync) == ("solo", "debug", True)
    assert "raftkv serve: warning: --unsafe-no-fsync" in capsys.readouterr().err


def test_grpc_frontend_is_h2_by_default_and_grpcio_on_request() -> None:
    assert load_config([], {}).grpc_frontend == "h2"
    assert load_config(["--grpc-frontend", "grpcio"], {}).grpc_frontend == "grpcio"
    assert load_config([], {"ETCD_GRPC_FRONTEND": "grpcio"}).grpc_frontend == "grpcio"
    assert "grpc-frontend" in error_of(["--grpc-frontend", "tornado"])
