"""``raftkv snapshot save|restore|status``: etcdctl's and etcdutl's snapshot commands.

``save FILE --endpoints URL`` streams one member's Maintenance Snapshot into FILE (written
as FILE.part, checked against its trailing SHA-256, then renamed), from raftkv or etcd.
``restore FILE --data-dir DIR ...`` takes etcdutl's flags and builds a new member's data
directory that ``raftkv serve`` with the same --name, --initial-cluster,
--initial-cluster-token and --initial-advertise-peer-urls starts from. ``status FILE``
prints what ``etcdutl snapshot status`` prints, in its simple, table or json form.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import TYPE_CHECKING

from raftkv import limits

if TYPE_CHECKING:  # the CLI imports this module for every command: keep it light
    import grpc

    from raftkv.storage.etcdsnap import SnapshotStatus

EXIT_ERROR = 1
EXIT_BAD_FLAGS = 2
WRITE_OUT_FORMATS = ("simple", "table", "json")
# etcdutl's restore defaults (the same as etcd's server flags).
DEFAULT_NAME = "default"
DEFAULT_PEER_URL = "http://localhost:2380"
DEFAULT_CLUSTER_TOKEN = "etcd-cluster"
_SIZE_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB")
_SI_BASE = 1000


def add_snapshot_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    snapshot = sub.add_parser(
        "snapshot",
        help="save, restore or inspect a snapshot (etcd's format: etcd's tools read it too)",
    )
    actions = snapshot.add_subparsers(dest="snapshot_action", metavar="ACTION", required=True)
    save = actions.add_parser("save", help="stream one member's snapshot into FILE")
    save.add_argument("file", metavar="FILE")
    save.add_argument(
        "--endpoints", default="127.0.0.1:2379", metavar="URL", help="one member's client URL"
    )
    save.add_argument(
        "--dial-timeout",
        type=float,
        default=limits.ETCD_SNAPSHOT_SAVE_CONNECT_TIMEOUT_S,
        metavar="SECONDS",
        help="how long to wait for the connection",
    )
    save.add_argument("--cacert", default=None, metavar="FILE", help="CA bundle (https)")
    save.add_argument("--cert", default=None, metavar="FILE", help="client certificate (https)")
    save.add_argument("--key", default=None, metavar="FILE", help="client key (https)")
    restore = actions.add_parser("restore", help="build a new member's data dir from FILE")
    restore.add_argument("file", metavar="FILE")
    restore.add_argument("--data-dir", default=None, metavar="DIR", help="default: NAME.etcd")
    restore.add_argument("--name", default=DEFAULT_NAME)
    restore.add_argument("--initial-cluster", default=f"{DEFAULT_NAME}={DEFAULT_PEER_URL}")
    restore.add_argument("--initial-cluster-token", default=DEFAULT_CLUSTER_TOKEN)
    restore.add_argument("--initial-advertise-peer-urls", default=DEFAULT_PEER_URL)
    restore.add_argument(
        "--skip-hash-check",
        action="store_true",
        help="accept a file without the trailing SHA-256 (e.g. a copied member/snap/db)",
    )
    status = actions.add_parser("status", help="hash, revision, keys and size of FILE")
    status.add_argument("file", metavar="FILE")
    status.add_argument("-w", "--write-out", choices=WRITE_OUT_FORMATS, default="simple")


def run_snapshot(args: argparse.Namespace) -> int:
    from raftkv.storage.etcdsnap import EtcdSnapshotError, snapshot_status

    action: str = args.snapshot_action
    try:
        if action == "save":
            return _run_save(args)
        if action == "restore":
            return _run_restore(args)
        assert action == "status", action
        print(format_status(snapshot_status(args.file), args.write_out))
        return 0
    except (EtcdSnapshotError, OSError) as error:
        print(f"raftkv snapshot {action}: {error}", file=sys.stderr)
        return EXIT_ERROR


# --- save -------------------------------------------------------------------------------


def _run_save(args: argparse.Namespace) -> int:
    endpoints = [e for e in args.endpoints.split(",") if e]
    if len(endpoints) != 1:
        print(
            "raftkv snapshot save: snapshot must be requested to one selected node, "
            f"not multiple {endpoints}",
            file=sys.stderr,
        )
        return EXIT_BAD_FLAGS
    save_snapshot(endpoints[0], args.file, args.cacert, args.cert, args.key, args.dial_timeout)
    print(f"Snapshot saved at {args.file}")  # etcdctl's words, for scripts that look
    return 0


def save_snapshot(
    endpoint: str,
    path: str,
    cacert: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    connect_timeout_s: float = limits.ETCD_SNAPSHOT_SAVE_CONNECT_TIMEOUT_S,
) -> int:
    """Stream ``endpoint``'s snapshot into ``path``; returns its size in bytes."""
    import grpc

    from raftkv.api.etcdpb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
    from raftkv.storage.etcdsnap import (
        SnapshotHashMismatchError,
        SnapshotSaveError,
        verify_trailing_hash,
    )

    scheme, _, address = endpoint.rpartition("://")
    if scheme not in ("", "http", "https"):
        raise SnapshotSaveError(f"{endpoint}: only http:// and https:// endpoints are supported")
    channel = _channel(address, scheme == "https" or cacert is not None, cacert, cert, key)
    partial = path + ".part"
    try:
        grpc.channel_ready_future(channel).result(timeout=connect_timeout_s)
        stub = rpc_pb2_grpc.MaintenanceStub(channel)
        with open(partial, "wb") as handle:
            stream = stub.Snapshot(
                rpc_pb2.SnapshotRequest(), timeout=limits.ETCD_SNAPSHOT_SAVE_TIMEOUT_S
            )
            for response in stream:
                handle.write(response.blob)
            handle.flush()
            os.fsync(handle.fileno())
        verify_trailing_hash(partial)
        os.replace(partial, path)
    except grpc.FutureTimeoutError:
        raise SnapshotSaveError(f"{endpoint}: no connection within {connect_timeout_s} s") from None
    except grpc.RpcError as error:
        raise SnapshotSaveError(f"{endpoint}: {error.code().name}: {error.details()}") from None
    except SnapshotHashMismatchError as error:
        raise SnapshotSaveError(f"{endpoint} sent a damaged snapshot: {error}") from error
    finally:
        channel.close()
        if os.path.exists(partial):
            os.remove(partial)
    return os.path.getsize(path)


def _channel(
    address: str, secure: bool, cacert: str | None, cert: str | None, key: str | None
) -> grpc.Channel:
    options = [("grpc.max_receive_message_length", limits.API_GRPC_MAX_SEND_MESSAGE_BYTES)]
    import grpc

    if not secure:
        return grpc.insecure_channel(address, options=options)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read_optional(cacert),
        private_key=_read_optional(key),
        certificate_chain=_read_optional(cert),
    )
    return grpc.secure_channel(address, credentials, options=options)


def _read_optional(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as handle:
        return handle.read()


# --- restore ----------------------------------------------------------------------------


def _run_restore(args: argparse.Namespace) -> int:
    # serve's own checks, so the member id and cluster computed here are serve's.
    from raftkv.server.config import ConfigError, load_config
    from raftkv.storage.etcdsnap import RestoreOptions, restore_snapshot

    data_dir = args.data_dir or f"{args.name}.etcd"
    argv = [
        f"--name={args.name}",
        f"--data-dir={data_dir}",
        f"--initial-cluster={args.initial_cluster}",
        f"--initial-cluster-token={args.initial_cluster_token}",
        f"--initial-advertise-peer-urls={args.initial_advertise_peer_urls}",
    ]
    try:
        config = load_config(argv, {})
    except ConfigError as error:
        print(f"raftkv snapshot restore: {error.message}", file=sys.stderr)
        return EXIT_BAD_FLAGS
    options = RestoreOptions(
        snapshot_path=args.file,
        data_dir=data_dir,
        name=config.name,
        initial_cluster=dict(config.initial_cluster),
        initial_cluster_token=config.initial_cluster_token,
        initial_advertise_peer_urls=tuple(config.initial_advertise_peer_urls),
        skip_hash_check=args.skip_hash_check,
    )
    summary = restore_snapshot(options)
    print(
        f"restored snapshot {args.file} into {data_dir}: revision {summary.revision} "
        f"(compacted {summary.compacted_revision}), {summary.key_records} key records, "
        f"{summary.leases} leases; member {summary.member_id:x} of cluster "
        f"{summary.cluster_id:x}"
    )
    return 0


# --- status -----------------------------------------------------------------------------


def format_status(status: SnapshotStatus, write_out: str) -> str:
    """etcdutl's three renderings of a snapshot status."""
    size = human_bytes(status.total_size_bytes)
    if write_out == "json":
        body = {
            "hash": status.hash,
            "revision": status.revision,
            "totalKey": status.total_keys,
            "totalSize": status.total_size_bytes,
        }
        return json.dumps(body, separators=(",", ":"))
    cells = [f"{status.hash:x}", str(status.revision), str(status.total_keys), size]
    if write_out == "simple":
        return ", ".join(cells)
    assert write_out == "table", write_out
    return _table(["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"], cells)


def _table(headers: list[str], cells: list[str]) -> str:
    widths = [max(len(h), len(c)) + 2 for h, c in zip(headers, cells, strict=True)]
    rule = "+" + "+".join("-" * width for width in widths) + "+"
    header = "|" + "|".join(_center(h, w) for h, w in zip(headers, widths, strict=True)) + "|"
    row = "|" + "|".join(f" {c.rjust(w - 2)} " for c, w in zip(cells, widths, strict=True)) + "|"
    return "\n".join([rule, header, rule, row, rule])


def _center(text: str, width: int) -> str:
    """Centered with the odd space on the right, as etcd's table writer does."""
    left = (width - len(text)) // 2
    return " " * left + text + " " * (width - len(text) - left)


def human_bytes(size_bytes: int) -> str:
    """go-humanize's Bytes (SI units), as etcd prints sizes: 487424 -> "487 kB"."""
    if size_bytes < 10:
        return f"{size_bytes} B"
    exponent = int(math.floor(math.log(size_bytes) / math.log(_SI_BASE)))
    value = math.floor(size_bytes / _SI_BASE**exponent * 10 + 0.5) / 10
    return (
        f"{value:.1f} {_SIZE_UNITS[exponent]}"
        if value < 10
        else (f"{value:.0f} {_SIZE_UNITS[exponent]}")
    )
