"""A member's configuration: etcd's flags, environment variables and config file.

``raftkv serve`` takes etcd's own flag names and defaults (etcd 3.5 ``etcd --help``), so an
operator can swap etcd for raftkv without rewriting a unit file. Where a value comes from:

* without a config file: command-line flag > ``RAFTKV_<FLAG>`` > ``ETCD_<FLAG>`` > default;
* with ``--config-file`` (or ``RAFTKV_CONFIG_FILE`` / ``ETCD_CONFIG_FILE``): the file's keys
  > default, and every other flag and environment variable is ignored, as etcd does (a
  warning lists what was ignored).

Every value is read as text and parsed by one parser per option, so an error names where the
bad value came from and the flag it sets (``ConfigError``). Cross-field rules (election vs
heartbeat, the member's entry in ``--initial-cluster``) are checked on the parsed values.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Literal, cast
from urllib.parse import urlsplit

import yaml

from raftkv import limits
from raftkv.api.options import GRPC_FRONTENDS
from raftkv.server.logs import LOG_FORMATS, LogFormat
from raftkv.server.tls import TlsFiles, TlsFilesError, check_files, read_pem

ClusterState = Literal["new", "existing"]
CompactionMode = Literal["periodic", "revision"]
LogLevel = Literal["debug", "info", "warn", "error", "panic", "fatal"]
MetricsLevel = Literal["basic", "extensive"]

CLUSTER_STATES: tuple[ClusterState, ...] = ("new", "existing")
COMPACTION_MODES: tuple[CompactionMode, ...] = ("periodic", "revision")
LOG_LEVELS: tuple[LogLevel, ...] = ("debug", "info", "warn", "error", "panic", "fatal")
METRICS_LEVELS: tuple[MetricsLevel, ...] = ("basic", "extensive")

DEFAULT_NAME = "default"
DEFAULT_CLIENT_URL = "http://localhost:2379"
DEFAULT_PEER_URL = "http://localhost:2380"
# etcd 3.6's default (3.5 used 100,000): fewer entries between snapshots, shorter replays.
DEFAULT_SNAPSHOT_COUNT = 10_000
DEFAULT_HEARTBEAT_INTERVAL_MS = 100
DEFAULT_ELECTION_TIMEOUT_MS = 1000
ENV_PREFIXES = ("ETCD_", "RAFTKV_")  # later wins
URL_SCHEMES = ("http", "https")
SECONDS_PER_HOUR = 3600


class ConfigError(Exception):
    """An unusable configuration; the message names the flag (and the source) and why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class ServerConfig:
    """One member's settings, parsed and validated (see ``load_config``)."""

    name: str = DEFAULT_NAME
    data_dir: str = f"{DEFAULT_NAME}.etcd"
    listen_client_urls: tuple[str, ...] = (DEFAULT_CLIENT_URL,)
    advertise_client_urls: tuple[str, ...] = (DEFAULT_CLIENT_URL,)
    # HTTP-only client traffic: raftkv serves the JSON gateway (and /health) here only,
    # since grpcio cannot share a port with HTTP/1.1.
    listen_client_http_urls: tuple[str, ...] = ()
    listen_peer_urls: tuple[str, ...] = (DEFAULT_PEER_URL,)
    initial_advertise_peer_urls: tuple[str, ...] = (DEFAULT_PEER_URL,)
    initial_cluster: dict[str, tuple[str, ...]] = field(
        default_factory=lambda: {DEFAULT_NAME: (DEFAULT_PEER_URL,)}
    )
    initial_cluster_state: ClusterState = "new"
    initial_cluster_token: str = "etcd-cluster"
    heartbeat_interval_ms: int = DEFAULT_HEARTBEAT_INTERVAL_MS
    election_timeout_ms: int = DEFAULT_ELECTION_TIMEOUT_MS
    snapshot_count: int = DEFAULT_SNAPSHOT_COUNT
    quota_backend_bytes: int = limits.BACKEND_QUOTA_BYTES_DEFAULT
    max_request_bytes: int = limits.MAX_REQUEST_BYTES
    max_txn_ops: int = limits.MVCC_MAX_TXN_OPS
    auto_compaction_mode: CompactionMode = "periodic"
    auto_compaction_retention: str = "0"  # as given; "0" = off
    auto_compaction_retention_seconds: int = 0  # periodic mode; 0 = off
    auto_compaction_retention_revisions: int = 0  # revision mode; 0 = off
    log_level: LogLevel = "info"
    log_format: LogFormat = "text"
    log_outputs: tuple[str, ...] = ("default",)
    # Plain HTTP(S) listeners for /metrics and the health endpoints (etcd's flag).
    listen_metrics_urls: tuple[str, ...] = ()
    metrics: MetricsLevel = "basic"
    warning_apply_duration_ms: int = limits.APPLY_WARN_DURATION_DEFAULT_MS
    # etcd's --backend-batch-interval and --backend-batch-limit: the member commits its
    # applied batches to the backend at most this often, or after this many batches.
    backend_batch_interval_ms: int = limits.BACKEND_BATCH_INTERVAL_MS
    backend_batch_limit: int = limits.BACKEND_BATCH_LIMIT_WRITES
    unsafe_no_fsync: bool = False
    # Auth: etcd's --auth-token (simple tokens only), --auth-token-ttl, --bcrypt-cost.
    auth_token: str = "simple"
    auth_token_ttl_s: int = limits.AUTH_TOKEN_TTL_DEFAULT_S
    bcrypt_cost: int = limits.AUTH_BCRYPT_COST_DEFAULT
    enable_grpc_gateway: bool = True
    initial_election_tick_advance: bool = True
    # raftkv's own flag: which gRPC server answers clients (api/h2 or grpcio's).
    grpc_frontend: str = "h2"
    # TLS on the client URLs (gRPC and the JSON gateway) that use https, and on the peer
    # URLs that use https; None without the flags.
    client_tls: TlsFiles | None = None
    peer_tls: TlsFiles | None = None
    # Things worth telling the operator that do not stop the member (etcd logs them).
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def election_ticks(self) -> int:
        """The election timeout in heartbeat ticks (etcd's ElectionTicks)."""
        return self.election_timeout_ms // self.heartbeat_interval_ms


@dataclass(frozen=True)
class _Option:
    flag: str  # etcd's flag name, also its config-file key and (upper-cased) env suffix
    default: str  # as text; "" for the two defaults derived from other options
    metavar: str
    help: str
    is_bool: bool = False

    @property
    def env_suffix(self) -> str:
        return self.flag.upper().replace("-", "_")


_OPTIONS: tuple[_Option, ...] = (
    _Option("name", DEFAULT_NAME, "NAME", "human-readable name for this member"),
    _Option("data-dir", "", "DIR", "path to the data directory (default: ${name}.etcd)"),
    _Option("listen-client-urls", DEFAULT_CLIENT_URL, "URLS", "URLs to listen on for gRPC clients"),
    _Option(
        "advertise-client-urls",
        DEFAULT_CLIENT_URL,
        "URLS",
        "this member's client URLs to advertise to the cluster and clients",
    ),
    _Option(
        "listen-client-http-urls",
        "",
        "URLS",
        "URLs to listen on for HTTP clients: the JSON gateway and /health",
    ),
    _Option("listen-peer-urls", DEFAULT_PEER_URL, "URLS", "URLs to listen on for peer traffic"),
    _Option(
        "initial-advertise-peer-urls",
        DEFAULT_PEER_URL,
        "URLS",
        "this member's peer URLs to advertise to the rest of the cluster",
    ),
    _Option(
        "initial-cluster",
        "",
        "NAME=URL,...",
        "initial cluster configuration for bootstrapping "
        "(default: ${name}=${initial-advertise-peer-urls})",
    ),
    _Option("initial-cluster-state", "new", "new|existing", "initial cluster state"),
    _Option("initial-cluster-token", "etcd-cluster", "TOKEN", "initial cluster token"),
    _Option("heartbeat-interval", "100", "MS", "time (in milliseconds) of a heartbeat interval"),
    _Option("election-timeout", "1000", "MS", "time (in milliseconds) for an election to timeout"),
    _Option(
        "snapshot-count",
        str(DEFAULT_SNAPSHOT_COUNT),
        "N",
        "number of committed transactions to trigger a snapshot to disk",
    ),
    _Option(
        "quota-backend-bytes",
        "0",
        "BYTES",
        "raise alarms when the backend size exceeds this (0: the default, 2 GiB)",
    ),
    _Option(
        "max-request-bytes",
        str(limits.MAX_REQUEST_BYTES),
        "BYTES",
        "maximum client request size in bytes the server will accept",
    ),
    _Option(
        "max-txn-ops",
        str(limits.MVCC_MAX_TXN_OPS),
        "N",
        "maximum number of operations permitted in a transaction",
    ),
    _Option(
        "auto-compaction-mode",
        "periodic",
        "periodic|revision",
        "interpret --auto-compaction-retention as a duration or a revision count",
    ),
    _Option(
        "auto-compaction-retention",
        "0",
        "RETENTION",
        "auto compaction retention: a duration (1h, 30m; a bare number is hours) in periodic "
        "mode, a revision count in revision mode; 0 disables auto compaction",
    ),
    _Option("log-level", "info", "LEVEL", "debug, info, warn, error, panic or fatal"),
    _Option("log-format", "text", "text|json", "log lines as text or as one JSON object each"),
    _Option(
        "log-outputs",
        "default",
        "OUTPUTS",
        "default, stderr, stdout or file paths, comma-separated",
    ),
    _Option(
        "listen-metrics-urls", "", "URLS", "URLs to listen on for /metrics and health endpoints"
    ),
    _Option(
        "metrics", "basic", "basic|extensive", "extensive adds the gRPC handling-time histogram"
    ),
    _Option(
        "experimental-warning-apply-duration",
        f"{limits.APPLY_WARN_DURATION_DEFAULT_MS}ms",
        "DURATION",
        "warn when applying a batch of entries takes longer than this",
    ),
    _Option(
        "backend-batch-interval",
        f"{limits.BACKEND_BATCH_INTERVAL_MS}ms",
        "DURATION",
        "commit applied writes to the backend at least this often (0: the default); the WAL "
        "replays what a crash loses",
    ),
    _Option(
        "backend-batch-limit",
        str(limits.BACKEND_BATCH_LIMIT_WRITES),
        "N",
        "or after this many applied batches (0: the default)",
    ),
    _Option(
        "unsafe-no-fsync",
        "false",
        "BOOL",
        "disables fsync: unsafe, a crash can lose acknowledged writes",
        is_bool=True,
    ),
    _Option("enable-grpc-gateway", "true", "BOOL", "enable the JSON gateway", is_bool=True),
    _Option(
        "grpc-frontend",
        "h2",
        "h2|grpcio",
        "the gRPC server clients talk to: raftkv's own HTTP/2 server (h2), or grpcio's "
        "asyncio server (raftkv's flag, not etcd's)",
    ),
    _Option(
        "initial-election-tick-advance",
        "true",
        "BOOL",
        "once enough peers are connected at start, campaign after two ticks, not a timeout",
        is_bool=True,
    ),
    _Option("auth-token", "simple", "TYPE", "auth token type: simple (JWT is not supported)"),
    _Option(
        "auth-token-ttl",
        str(limits.AUTH_TOKEN_TTL_DEFAULT_S),
        "SECONDS",
        "how long an unused simple token stays valid",
    ),
    _Option(
        "bcrypt-cost",
        str(limits.AUTH_BCRYPT_COST_DEFAULT),
        "COST",
        f"bcrypt cost of password hashes ({limits.AUTH_BCRYPT_COST_MIN}-"
        f"{limits.AUTH_BCRYPT_COST_MAX})",
    ),
    _Option("cert-file", "", "PATH", "path to the client server TLS cert file"),
    _Option("key-file", "", "PATH", "path to the client server TLS key file"),
    _Option(
        "client-cert-auth",
        "false",
        "BOOL",
        "require client certificates signed by --trusted-ca-file",
        is_bool=True,
    ),
    _Option(
        "trusted-ca-file",
        "",
        "PATH",
        "path to the client server TLS trusted CA cert file (also requires client certs, "
        "as in etcd)",
    ),
    _Option("peer-cert-file", "", "PATH", "path to the peer server TLS cert file"),
    _Option("peer-key-file", "", "PATH", "path to the peer server TLS key file"),
    _Option(
        "peer-client-cert-auth",
        "false",
        "BOOL",
        "require peer certificates signed by --peer-trusted-ca-file",
        is_bool=True,
    ),
    _Option(
        "peer-trusted-ca-file",
        "",
        "PATH",
        "path to the peer server TLS trusted CA file (also requires peer certs, as in etcd)",
    ),
)
_OPTIONS_BY_FLAG = {option.flag: option for option in _OPTIONS}
_CONFIG_FILE_FLAG = "config-file"

# etcd settings raftkv does not implement: accepted (and ignored, with a warning) in an
# environment variable or a config file, so an etcd setup can be reused as it is.
_ETCD_SETTINGS_NOT_IMPLEMENTED = frozenset(
    {
        "wal-dir", "max-snapshots", "max-wals", "snapshot-catchup-entries",
        "backend-bbolt-freelist-type", "max-concurrent-streams", "grpc-keepalive-min-time",
        "grpc-keepalive-interval", "grpc-keepalive-timeout", "socket-reuse-port",
        "socket-reuse-address", "discovery", "discovery-fallback", "discovery-proxy",
        "discovery-srv", "discovery-srv-name", "strict-reconfig-check", "pre-vote",
        "enable-v2", "v2-deprecation", "cors", "host-whitelist",
        "enable-pprof", "logger", "enable-log-rotation",
        "log-rotation-config-json",
        "force-new-cluster", "proxy", "proxy-failure-wait", "proxy-refresh-interval",
        "proxy-dial-timeout", "proxy-write-timeout", "proxy-read-timeout",
        "self-signed-cert-validity", "cipher-suites", "tls-min-version", "tls-max-version",
        "auto-tls", "peer-auto-tls", "client-crl-file", "peer-crl-file",
        "peer-cert-allowed-cn", "peer-cert-allowed-hostname", "client-cert-file",
        "client-key-file", "peer-client-cert-file", "peer-client-key-file",
    }
)  # fmt: skip


@dataclass(frozen=True)
class _Setting:
    text: str
    origin: str  # "--flag", "ETCD_FLAG", "RAFTKV_FLAG", "<file>: key" or "default"


class _Settings:
    """The text of each option with where it came from; defaults fill the gaps."""

    def __init__(self, given: Mapping[str, _Setting]) -> None:
        self._given = given

    def is_given(self, flag: str) -> bool:
        return flag in self._given

    def get(self, flag: str) -> _Setting:
        return self._given.get(flag) or _Setting(_OPTIONS_BY_FLAG[flag].default, "default")

    def label(self, flag: str) -> str:
        """How an error names the value: the flag, and its source when not a flag."""
        origin = self.get(flag).origin
        if origin in (f"--{flag}", "default"):
            return f"--{flag}"
        return f"{origin} (--{flag})"


def load_config(argv: Sequence[str], environ: Mapping[str, str]) -> ServerConfig:
    """Parse ``raftkv serve`` arguments and the environment into a validated config.

    Raises ``ConfigError`` for a bad value; argparse exits (status 2) on an unknown flag.
    """
    flags = _parse_argv(argv)
    warnings: list[str] = []
    env, env_keys = _env_settings(environ, warnings)
    config_file = flags.get(_CONFIG_FILE_FLAG) or env.get(_CONFIG_FILE_FLAG)
    if config_file is not None:
        given = _file_settings(config_file, warnings)
        ignored = [s.origin for flag, s in flags.items() if flag != _CONFIG_FILE_FLAG]
        ignored += [key for key in env_keys if not key.endswith("_CONFIG_FILE")]
        if ignored:
            warnings.append(
                f"with a config file ({config_file.text}), these are ignored as etcd does: "
                + ", ".join(sorted(set(ignored)))
            )
    else:
        given = {**env, **flags}
    return _build(_Settings(given), warnings)


def build_argument_parser(prog: str = "raftkv serve") -> argparse.ArgumentParser:
    """The ``raftkv serve`` flags; unset flags are absent from the parsed namespace."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run one raftkv member. Flags, defaults and ETCD_* environment "
        "variables follow etcd's; see docs/operations.md.",
        argument_default=argparse.SUPPRESS,
        allow_abbrev=False,
    )
    parser.add_argument(
        f"--{_CONFIG_FILE_FLAG}",
        dest=_CONFIG_FILE_FLAG,
        metavar="PATH",
        help="YAML file with etcd's config-file keys; other flags and env vars are then ignored",
    )
    for option in _OPTIONS:
        default_text = option.default or "derived, see above"
        parser.add_argument(
            f"--{option.flag}",
            dest=option.flag,
            metavar=option.metavar,
            nargs="?" if option.is_bool else None,
            const="true" if option.is_bool else None,
            help=f"{option.help} (default: {default_text})",
        )
    return parser


def _parse_argv(argv: Sequence[str]) -> dict[str, _Setting]:
    namespace = build_argument_parser().parse_args(list(argv))
    return {flag: _Setting(str(text), f"--{flag}") for flag, text in vars(namespace).items()}


def _env_settings(
    environ: Mapping[str, str], warnings: list[str]
) -> tuple[dict[str, _Setting], list[str]]:
    """The settings the environment gives (RAFTKV_ over ETCD_) and every variable read."""
    suffixes = {option.env_suffix: option.flag for option in _OPTIONS}
    suffixes["CONFIG_FILE"] = _CONFIG_FILE_FLAG
    settings: dict[str, _Setting] = {}
    recognized: list[str] = []
    for prefix in ENV_PREFIXES:
        for key in sorted(environ):
            if not key.startswith(prefix):
                continue
            suffix = key.removeprefix(prefix)
            flag = suffixes.get(suffix)
            if flag is not None:
                settings[flag] = _Setting(environ[key], key)
                recognized.append(key)
            elif suffix.lower().replace("_", "-") in _ETCD_SETTINGS_NOT_IMPLEMENTED:
                warnings.append(f"ignoring {key}: raftkv does not implement this etcd setting")
            else:
                warnings.append(f"ignoring unrecognized environment variable {key}")
    return settings, recognized


def _file_settings(config_file: _Setting, warnings: list[str]) -> dict[str, _Setting]:
    path = Path(config_file.text)
    label = f"{config_file.origin} ({config_file.text})"
    try:
        if path.stat().st_size > limits.SERVER_CONFIG_FILE_MAX_BYTES:
            raise ConfigError(f"{label}: larger than {limits.SERVER_CONFIG_FILE_MAX_BYTES} bytes")
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"{label}: cannot read it: {error.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"{label}: not valid YAML: {error}") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"{label}: expected a mapping of etcd config keys")
    settings: dict[str, _Setting] = {}
    for key, value in document.items():
        origin = f"{path}: {key}"
        if key in _OPTIONS_BY_FLAG:
            if value is not None:  # an empty key leaves the default, like an absent one
                settings[key] = _Setting(_yaml_scalar_text(value, origin), origin)
        elif key in _TRANSPORT_SECURITY_PREFIXES:
            settings.update(_transport_security_settings(path, key, value, warnings))
        elif key in _ETCD_SETTINGS_NOT_IMPLEMENTED or str(key).startswith("experimental-"):
            warnings.append(f"ignoring {origin}: raftkv does not implement this etcd setting")
        else:
            raise ConfigError(f"{path}: unknown key {key!r}")
    return settings


# etcd's config file nests the TLS settings: ``client-transport-security: {cert-file: ...}``
# sets --cert-file, ``peer-transport-security: {cert-file: ...}`` sets --peer-cert-file.
_TRANSPORT_SECURITY_PREFIXES = {"client-transport-security": "", "peer-transport-security": "peer-"}
_TRANSPORT_SECURITY_KEYS = ("cert-file", "key-file", "client-cert-auth", "trusted-ca-file")
_TRANSPORT_SECURITY_NOT_IMPLEMENTED = frozenset(
    {
        "auto-tls", "crl-file", "allowed-cn", "allowed-hostname", "client-cert-file",
        "client-key-file", "skip-client-san-verification",
    }
)  # fmt: skip


def _transport_security_settings(
    path: Path, section: str, value: object, warnings: list[str]
) -> dict[str, _Setting]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {section}: expected a mapping of TLS settings")
    prefix = _TRANSPORT_SECURITY_PREFIXES[section]
    settings: dict[str, _Setting] = {}
    for key, item in value.items():
        origin = f"{path}: {section}.{key}"
        if key in _TRANSPORT_SECURITY_KEYS:
            if item is not None:
                settings[f"{prefix}{key}"] = _Setting(_yaml_scalar_text(item, origin), origin)
        elif key in _TRANSPORT_SECURITY_NOT_IMPLEMENTED:
            if item not in (None, False, ""):
                warnings.append(f"ignoring {origin}: raftkv does not implement this etcd setting")
        else:
            raise ConfigError(f"{path}: unknown key {section}.{key}")
    return settings


def _yaml_scalar_text(value: object, origin: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | str):
        return str(value)
    hint = " (URL lists are one comma-separated string)" if isinstance(value, list) else ""
    raise ConfigError(f"{origin}: expected a string or an integer, got {value!r}{hint}")


def _build(settings: _Settings, warnings: list[str]) -> ServerConfig:
    """Parse every option, apply the derived defaults, then check cross-field rules."""
    name = _parse_name(settings)
    peer_urls = _parse_urls(settings, "initial-advertise-peer-urls", bind=False)
    if settings.is_given("initial-cluster"):
        initial_cluster = _parse_initial_cluster(settings)
    else:
        initial_cluster = {name: peer_urls}
    mode = cast(CompactionMode, _parse_choice(settings, "auto-compaction-mode", COMPACTION_MODES))
    retention_seconds, retention_revisions = _parse_retention(settings, mode)
    config = ServerConfig(
        name=name,
        data_dir=_parse_data_dir(settings, name),
        listen_client_urls=_parse_urls(settings, "listen-client-urls", bind=True),
        advertise_client_urls=_parse_urls(settings, "advertise-client-urls", bind=False),
        listen_client_http_urls=_parse_urls(
            settings, "listen-client-http-urls", bind=True, allow_empty=True
        ),
        listen_peer_urls=_parse_urls(settings, "listen-peer-urls", bind=True),
        initial_advertise_peer_urls=peer_urls,
        initial_cluster=initial_cluster,
        initial_cluster_state=cast(
            ClusterState, _parse_choice(settings, "initial-cluster-state", CLUSTER_STATES)
        ),
        initial_cluster_token=settings.get("initial-cluster-token").text,
        heartbeat_interval_ms=_parse_int(settings, "heartbeat-interval", minimum=1),
        election_timeout_ms=_parse_int(settings, "election-timeout", minimum=1),
        snapshot_count=_parse_int(settings, "snapshot-count", minimum=1),
        quota_backend_bytes=_parse_quota(settings),
        max_request_bytes=_parse_int(
            settings,
            "max-request-bytes",
            minimum=1,
            maximum=limits.MAX_REQUEST_BYTES_CEILING,
            why_maximum="raftkv's WAL records are sized for it (etcd warns above 10 MiB)",
        ),
        max_txn_ops=_parse_int(
            settings, "max-txn-ops", minimum=1, maximum=limits.SERVER_MAX_TXN_OPS_CEILING
        ),
        auto_compaction_mode=mode,
        auto_compaction_retention=settings.get("auto-compaction-retention").text,
        auto_compaction_retention_seconds=retention_seconds,
        auto_compaction_retention_revisions=retention_revisions,
        log_level=cast(LogLevel, _parse_choice(settings, "log-level", LOG_LEVELS)),
        log_format=cast(LogFormat, _parse_choice(settings, "log-format", LOG_FORMATS)),
        log_outputs=_parse_log_outputs(settings),
        listen_metrics_urls=_parse_urls(
            settings, "listen-metrics-urls", bind=True, allow_empty=True
        ),
        metrics=cast(MetricsLevel, _parse_choice(settings, "metrics", METRICS_LEVELS)),
        warning_apply_duration_ms=_parse_duration_ms(
            settings, "experimental-warning-apply-duration"
        ),
        backend_batch_interval_ms=_parse_duration_ms(
            settings, "backend-batch-interval", zero_means=limits.BACKEND_BATCH_INTERVAL_MS
        ),
        backend_batch_limit=_parse_int(settings, "backend-batch-limit", minimum=0)
        or limits.BACKEND_BATCH_LIMIT_WRITES,
        unsafe_no_fsync=_parse_bool(settings, "unsafe-no-fsync"),
        auth_token=_parse_auth_token(settings),
        auth_token_ttl_s=_parse_int(settings, "auth-token-ttl", minimum=1),
        bcrypt_cost=_parse_int(
            settings,
            "bcrypt-cost",
            minimum=limits.AUTH_BCRYPT_COST_MIN,
            maximum=limits.AUTH_BCRYPT_COST_MAX,
            why_maximum="bcrypt's largest cost",
        ),
        enable_grpc_gateway=_parse_bool(settings, "enable-grpc-gateway"),
        initial_election_tick_advance=_parse_bool(settings, "initial-election-tick-advance"),
        grpc_frontend=_parse_choice(settings, "grpc-frontend", GRPC_FRONTENDS),
        client_tls=_parse_tls(settings, ""),
        peer_tls=_parse_tls(settings, "peer-"),
    )
    _check_cross_field(config, settings)
    warnings.extend(_warnings_for(config))
    return dataclasses.replace(config, warnings=tuple(warnings))


def _quote(text: str) -> str:
    """``text`` in double quotes, as etcd (Go's %q) shows values in its messages."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


# --- Single values ----------------------------------------------------------------------


def _parse_name(settings: _Settings) -> str:
    name = settings.get("name").text
    if not name:
        raise ConfigError(f"{settings.label('name')} must not be empty")
    if "=" in name or "," in name:
        raise ConfigError(
            f"{settings.label('name')}: {_quote(name)} may not contain '=' or ',' "
            "(it is a key of --initial-cluster)"
        )
    return name


def _parse_data_dir(settings: _Settings, name: str) -> str:
    if not settings.is_given("data-dir"):
        return f"{name}.etcd"
    data_dir = settings.get("data-dir").text
    if not data_dir:
        raise ConfigError(f"{settings.label('data-dir')} must not be empty")
    return data_dir


def _parse_int(
    settings: _Settings,
    flag: str,
    *,
    minimum: int,
    maximum: int | None = None,
    why_maximum: str = "",
) -> int:
    text = settings.get(flag).text.strip()
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        raise ConfigError(f"{settings.label(flag)}: {_quote(text)} is not an integer")
    value = int(text)
    if value < 0:
        raise ConfigError(f"{settings.label(flag)} ({value}) must not be negative")
    if value < minimum:
        raise ConfigError(f"{settings.label(flag)} ({value}) must be at least {minimum}")
    if maximum is not None and value > maximum:
        reason = f": {why_maximum}" if why_maximum else ""
        raise ConfigError(f"{settings.label(flag)} ({value}) must be at most {maximum}{reason}")
    return value


def _parse_auth_token(settings: _Settings) -> str:
    """Only etcd's simple tokens: a JWT configuration is refused, not silently ignored."""
    text = settings.get("auth-token").text.strip()
    if text != "simple":
        raise ConfigError(
            f"{settings.label('auth-token')}: {_quote(text)} is not supported; raftkv "
            "issues simple tokens only (docs/compatibility.md)"
        )
    return text


def _parse_quota(settings: _Settings) -> int:
    quota_bytes = _parse_int(
        settings,
        "quota-backend-bytes",
        minimum=0,
        maximum=limits.SERVER_QUOTA_BACKEND_BYTES_MAX,
        why_maximum="half the backend's map size",
    )
    return quota_bytes or limits.BACKEND_QUOTA_BYTES_DEFAULT  # 0 means the default, as in etcd


_BOOL_TEXTS = {
    **dict.fromkeys(("1", "t", "T", "true", "TRUE", "True"), True),
    **dict.fromkeys(("0", "f", "F", "false", "FALSE", "False"), False),
}  # the spellings Go's strconv.ParseBool accepts


def _parse_bool(settings: _Settings, flag: str) -> bool:
    text = settings.get(flag).text.strip()
    if text not in _BOOL_TEXTS:
        raise ConfigError(f"{settings.label(flag)}: {_quote(text)} is not true or false")
    return _BOOL_TEXTS[text]


def _parse_choice(settings: _Settings, flag: str, choices: Sequence[str]) -> str:
    text = settings.get(flag).text.strip()
    if text not in choices:
        raise ConfigError(
            f"{settings.label(flag)}: {_quote(text)} is not one of {', '.join(choices)}"
        )
    return text


def _parse_urls(
    settings: _Settings, flag: str, *, bind: bool, allow_empty: bool = False
) -> tuple[str, ...]:
    texts = [part.strip() for part in settings.get(flag).text.split(",")]
    texts = [text for text in texts if text]
    if not texts and not allow_empty:
        raise ConfigError(f"{settings.label(flag)} must list at least one URL")
    urls = tuple(_parse_url(text, settings.label(flag), bind=bind) for text in texts)
    if len(set(urls)) != len(urls):
        raise ConfigError(f"{settings.label(flag)} lists a URL twice")
    return urls


def _parse_url(text: str, label: str, *, bind: bool) -> str:
    """``text`` as a normalized ``http(s)://host:port``; ``bind`` URLs need an IP or
    localhost."""
    shape_error = ConfigError(f"{label}: {_quote(text)} is not a URL like http://host:port")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise shape_error from None
    if parts.scheme not in URL_SCHEMES or not parts.hostname or port is None:
        raise shape_error
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ConfigError(
            f"{label}: {_quote(text)} must be only {parts.scheme}://host:port, without a path"
        )
    if port == 0:
        raise ConfigError(f"{label}: {_quote(text)} needs a port from 1 to 65535")
    if bind and not _is_bindable_host(parts.hostname):
        raise ConfigError(
            f"{label}: {_quote(text)}: a listen URL needs an IP address or localhost, "
            "not a host name"
        )
    return f"{parts.scheme}://{parts.netloc}"


def is_tls_url(url: str) -> bool:
    return url.startswith("https://")


def url_address(url: str) -> str:
    """The ``host:port`` of a normalized URL."""
    return url.split("://", 1)[1]


def _is_bindable_host(hostname: str) -> bool:
    if hostname == "localhost":
        return True
    try:
        ipaddress.ip_address(hostname)
    except ValueError:
        return False
    return True


def _parse_initial_cluster(settings: _Settings) -> dict[str, tuple[str, ...]]:
    """etcd's ``name=url,name=url``; a name listed twice has several peer URLs."""
    label = settings.label("initial-cluster")
    cluster: dict[str, list[str]] = {}
    seen_urls: set[str] = set()
    for entry in settings.get("initial-cluster").text.split(","):
        entry = entry.strip()
        if not entry:
            continue
        name, separator, url_text = entry.partition("=")
        name = name.strip()
        if not separator or not name:
            raise ConfigError(f"{label}: {_quote(entry)} is not name=http://host:port")
        url = _parse_url(url_text.strip(), label, bind=False)
        if url in seen_urls:
            raise ConfigError(f"{label}: peer URL {url} is listed twice")
        seen_urls.add(url)
        cluster.setdefault(name, []).append(url)
    if not cluster:
        raise ConfigError(f"{label} must list at least one member")
    return {name: tuple(urls) for name, urls in cluster.items()}


_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNIT_SECONDS = {
    "ns": Fraction(1, 10**9),
    "us": Fraction(1, 10**6),
    "µs": Fraction(1, 10**6),
    "μs": Fraction(1, 10**6),
    "ms": Fraction(1, 1000),
    "s": Fraction(1),
    "m": Fraction(60),
    "h": Fraction(SECONDS_PER_HOUR),
}


def parse_duration_seconds(text: str) -> Fraction | None:
    """A Go duration without sign ("1h30m", "1.5h", "500ms", "0") in seconds, else None."""
    if text == "0":
        return Fraction(0)
    position = 0
    total = Fraction(0)
    while position < len(text):
        match = _DURATION_PART.match(text, position)
        if match is None:
            return None
        total += Fraction(match.group(1)) * _DURATION_UNIT_SECONDS[match.group(2)]
        position = match.end()
    return total if text else None


def _parse_duration_ms(settings: _Settings, flag: str, zero_means: int | None = None) -> int:
    """A Go duration (``100ms``, ``1s``) as whole milliseconds, at least 1; with
    ``zero_means``, a zero duration stands for that default (as etcd reads the flag)."""
    text = settings.get(flag).text.strip()
    seconds = parse_duration_seconds(text)
    if seconds == 0 and zero_means is not None:
        return zero_means
    if seconds is None or seconds * 1000 < 1:
        raise ConfigError(f"{settings.label(flag)}: {_quote(text)} is not a duration like 100ms")
    return int(seconds * 1000)


def _parse_log_outputs(settings: _Settings) -> tuple[str, ...]:
    outputs = tuple(part.strip() for part in settings.get("log-outputs").text.split(","))
    outputs = tuple(output for output in outputs if output)
    if not outputs:
        raise ConfigError(f"{settings.label('log-outputs')} must name at least one output")
    return outputs


def _parse_retention(settings: _Settings, mode: CompactionMode) -> tuple[int, int]:
    """(seconds, revisions) to retain; the one that does not apply to ``mode`` is 0."""
    label = settings.label("auto-compaction-retention")
    text = settings.get("auto-compaction-retention").text.strip()
    is_count = re.fullmatch(r"[0-9]+", text) is not None
    if mode == "revision":
        if not is_count:
            raise ConfigError(
                f"{label}: {_quote(text)} is not a revision count (a non-negative integer), "
                "as --auto-compaction-mode is revision"
            )
        return 0, int(text)
    if is_count:  # a bare number in periodic mode is hours, as in etcd
        return int(text) * SECONDS_PER_HOUR, 0
    seconds = parse_duration_seconds(text)
    if seconds is None:
        raise ConfigError(
            f"{label}: {_quote(text)} is not a duration like 1h, 30m, 5s or a number of hours"
        )
    if seconds.denominator != 1:
        raise ConfigError(f"{label}: {_quote(text)} is not a whole number of seconds")
    return int(seconds), 0


# --- Rules across options -----------------------------------------------------------------


def _check_cross_field(config: ServerConfig, settings: _Settings) -> None:
    _check_timeouts(config)
    _check_own_cluster_entry(config)
    if settings.is_given("listen-client-urls") and not settings.is_given("advertise-client-urls"):
        raise ConfigError(
            "--advertise-client-urls is required when --listen-client-urls is set explicitly"
        )
    _check_listeners_distinct(config)
    _check_tls(config, settings)


def _check_timeouts(config: ServerConfig) -> None:
    ratio = limits.SERVER_ELECTION_HEARTBEAT_RATIO_MIN
    if config.election_timeout_ms < ratio * config.heartbeat_interval_ms:
        raise ConfigError(
            f"--election-timeout ({config.election_timeout_ms}) must be at least {ratio} times "
            f"--heartbeat-interval ({config.heartbeat_interval_ms})"
        )
    if config.election_timeout_ms > limits.SERVER_ELECTION_TIMEOUT_MAX_MS:
        raise ConfigError(
            f"--election-timeout ({config.election_timeout_ms}) must be at most "
            f"{limits.SERVER_ELECTION_TIMEOUT_MAX_MS} ms"
        )


def _check_own_cluster_entry(config: ServerConfig) -> None:
    """The member is in --initial-cluster, under the peer URLs it advertises (as etcd checks)."""
    own_urls = config.initial_cluster.get(config.name)
    if own_urls is None:
        listed = ", ".join(config.initial_cluster)
        raise ConfigError(
            f"--initial-cluster ({listed}) has no entry for --name ({_quote(config.name)})"
        )
    if set(own_urls) != set(config.initial_advertise_peer_urls):
        advertised = ",".join(config.initial_advertise_peer_urls)
        raise ConfigError(
            f"--initial-advertise-peer-urls ({advertised}) must match the --initial-cluster "
            f"entry for {_quote(config.name)} ({','.join(own_urls)})"
        )


def _check_listeners_distinct(config: ServerConfig) -> None:
    """No address is listened on twice: gRPC, HTTP and peer traffic need their own ports."""
    owners: dict[str, str] = {}
    listeners = [
        ("--listen-client-urls", config.listen_client_urls),
        ("--listen-client-http-urls", config.listen_client_http_urls),
        ("--listen-peer-urls", config.listen_peer_urls),
        ("--listen-metrics-urls", config.listen_metrics_urls),
    ]
    for flag, urls in listeners:
        for url in urls:
            address = url_address(url)
            if address in owners:
                raise ConfigError(f"{flag}: {address} is already used by {owners[address]}")
            owners[address] = flag


def _warnings_for(config: ServerConfig) -> list[str]:
    warnings: list[str] = []
    if config.quota_backend_bytes > limits.SERVER_QUOTA_BACKEND_BYTES_WARN:
        warnings.append(
            f"--quota-backend-bytes ({config.quota_backend_bytes}) exceeds the recommended "
            f"maximum ({limits.SERVER_QUOTA_BACKEND_BYTES_WARN})"
        )
    if config.unsafe_no_fsync:
        warnings.append("--unsafe-no-fsync: a crash can lose acknowledged writes")
    if config.enable_grpc_gateway and not config.listen_client_http_urls:
        warnings.append(
            "the JSON gateway is served only on --listen-client-http-urls; none is set, "
            "so it is off"
        )
    return warnings


# --- TLS ----------------------------------------------------------------------------------


def _parse_tls(settings: _Settings, prefix: str) -> TlsFiles | None:
    """The ``--{prefix}cert-file`` family as TlsFiles, None when none of it is set; every
    file given must be readable, and certificate and key come together."""
    cert_flag, key_flag = f"{prefix}cert-file", f"{prefix}key-file"
    ca_flag, auth_flag = f"{prefix}trusted-ca-file", f"{prefix}client-cert-auth"
    paths = {flag: settings.get(flag).text.strip() for flag in (cert_flag, key_flag, ca_flag)}
    client_cert_auth = _parse_bool(settings, auth_flag)
    if not any(paths.values()) and not client_cert_auth:
        return None
    for flag, path in paths.items():
        if path:
            try:
                read_pem(path)
            except TlsFilesError as error:
                raise ConfigError(f"{settings.label(flag)}: {error}") from None
    for flag, other in ((cert_flag, key_flag), (key_flag, cert_flag)):
        if not paths[flag]:
            raise ConfigError(f"--{flag} is required with {settings.label(other)}")
    if client_cert_auth and not paths[ca_flag]:
        raise ConfigError(
            f"{settings.label(auth_flag)} needs {settings.label(ca_flag)}: raftkv verifies "
            "client certificates against that CA only"
        )
    files = TlsFiles(paths[cert_flag], paths[key_flag], paths[ca_flag], client_cert_auth)
    try:
        check_files(files)
    except TlsFilesError as error:
        names = f"{settings.label(cert_flag)}, {settings.label(key_flag)}"
        if files.trusted_ca_file:
            names += f", {settings.label(ca_flag)}"
        raise ConfigError(f"{names}: {error}") from None
    return files


def _check_tls(config: ServerConfig, settings: _Settings) -> None:
    """https URLs need the certificate flags of their side, and those flags need an https
    URL to serve (etcd only warns and ignores them; raftkv refuses a silent plaintext)."""
    client_urls = {
        "--listen-client-urls": config.listen_client_urls,
        "--listen-client-http-urls": config.listen_client_http_urls,
        "--listen-metrics-urls": config.listen_metrics_urls,
    }
    peer_urls = {
        "--listen-peer-urls": config.listen_peer_urls,
        "--initial-advertise-peer-urls": config.initial_advertise_peer_urls,
        "--initial-cluster": tuple(url for urls in config.initial_cluster.values() for url in urls),
    }
    for side, urls_by_flag, files, prefix in (
        ("client", client_urls, config.client_tls, ""),
        ("peer", peer_urls, config.peer_tls, "peer-"),
    ):
        tls_urls = [
            (flag, url) for flag, urls in urls_by_flag.items() for url in urls if is_tls_url(url)
        ]
        if tls_urls and files is None:
            flag, url = tls_urls[0]
            raise ConfigError(
                f"{settings.label(flag.removeprefix('--'))}: {url} uses https, which needs "
                f"--{prefix}cert-file and --{prefix}key-file"
            )
        if files is not None and not tls_urls:
            listed = " or ".join(urls_by_flag)
            raise ConfigError(
                f"--{prefix}cert-file and the other {side} TLS flags are set, but no URL of "
                f"{listed} uses https://"
            )
