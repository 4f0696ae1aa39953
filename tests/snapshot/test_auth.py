"""Snapshots carry auth: users (with their bcrypt hashes), roles, permissions, the enabled
flag and the auth revision survive raftkv -> etcd file -> raftkv, etcd -> raftkv and
raftkv -> etcd, and the restored member enforces them.

The in-process test checks the restored store through the auth store's API and the file's
buckets byte for byte against raftkv's tables; the process tests drive etcd's own etcdctl.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from raftkv import limits
from raftkv.api.etcdpb.authpb import auth_pb2
from raftkv.server.auth.permissions import PermissionType
from raftkv.server.auth.store import AuthStore, hash_password, password_matches
from raftkv.server.auth.tokens import SimpleTokens
from raftkv.server.requests import (
    AuthEnableRequest,
    AuthManagementRequest,
    RoleAddRequest,
    RoleGrantPermissionRequest,
    UserAddRequest,
    UserGrantRoleRequest,
)
from raftkv.storage.backend import DB_AUTH, DB_AUTH_ROLES, DB_AUTH_USERS, Backend
from raftkv.storage.etcdsnap import SnapshotFormatError, layout, restore_snapshot
from raftkv.storage.etcdsnap.bbolt import open_reader
from raftkv.verify.cluster import ProcessCluster
from tests.etcd_process import run_etcd
from tests.procs import etcdctl
from tests.snapshot.data import start_restored
from tests.snapshot.test_restore import Source, etcd_file, options, snapshot_of

ROOT_PASSWORD = "Root-Snap-71c2"
ALICE_PASSWORD = "Alice-Snap-3f9a"
BCRYPT_COST = limits.AUTH_BCRYPT_COST_MIN
AUTH_TABLES = {
    layout.BUCKET_AUTH: DB_AUTH,
    layout.BUCKET_AUTH_USERS: DB_AUTH_USERS,
    layout.BUCKET_AUTH_ROLES: DB_AUTH_ROLES,
}


# --- In process: raftkv backend -> etcd file -> restored backend ---------------------------


@pytest.fixture
def auth_source(tmp_path: Path) -> Iterator[Path]:
    """A backend with auth enabled: root, alice (read on /pub/ by role reader, readwrite on
    /own by role writer) and bob without roles."""
    directory = tmp_path / "source"
    backend = Backend(str(directory), sync=False)
    try:
        store = AuthStore(backend, SimpleTokens(60), bcrypt_cost=BCRYPT_COST)
        requests: list[AuthManagementRequest] = [
            UserAddRequest("root", hash_password(ROOT_PASSWORD, BCRYPT_COST)),
            RoleAddRequest("root"),
            UserGrantRoleRequest("root", "root"),
            UserAddRequest("alice", hash_password(ALICE_PASSWORD, BCRYPT_COST)),
            UserAddRequest("bob", b"", no_password=True),
            RoleAddRequest("reader"),
            RoleGrantPermissionRequest("reader", PermissionType.READ, b"/pub/", b"/pub0"),
            RoleAddRequest("writer"),
            RoleGrantPermissionRequest("writer", PermissionType.READWRITE, b"/own", b""),
            UserGrantRoleRequest("alice", "reader"),
            UserGrantRoleRequest("alice", "writer"),
            AuthEnableRequest(),
        ]
        for request in requests:
            with backend.write() as batch:
                store.apply(batch, request)
        assert store.enabled and store.revision > 1
    finally:
        backend.close()
    yield directory


def table(directory: Path, db: bytes) -> list[tuple[bytes, bytes]]:
    backend = Backend(str(directory), sync=False)
    try:
        with backend.read() as txn, txn.cursor(db=backend.db(db)) as cursor:
            return [(bytes(key), bytes(value)) for key, value in cursor]
    finally:
        backend.close()


def open_store(directory: Path) -> tuple[Backend, AuthStore]:
    backend = Backend(str(directory), sync=False)
    return backend, AuthStore(backend, SimpleTokens(60), bcrypt_cost=BCRYPT_COST)


def test_auth_travels_through_an_etcd_snapshot(auth_source: Path, tmp_path: Path) -> None:
    snapshot = snapshot_of_dir(auth_source, tmp_path / "auth.db")
    with open_reader(str(snapshot)) as reader:
        buckets = {bucket.key: bucket for bucket in reader.buckets()}
        for bucket_name, db in AUTH_TABLES.items():
            in_file = [(e.key, e.value) for e in reader.items(buckets[bucket_name])]
            assert in_file == table(auth_source, db), bucket_name  # byte for byte
    restore_snapshot(options(snapshot, tmp_path / "out"))
    restored_dir = tmp_path / "out" / "member" / "db"
    for db in AUTH_TABLES.values():
        assert table(restored_dir, db) == table(auth_source, db)
    source_backend, source = open_store(auth_source)
    restored_backend, restored = open_store(restored_dir)
    try:
        assert restored.enabled
        assert restored.revision == source.revision
        assert restored.user_names() == ["alice", "bob", "root"]
        assert restored.role_names() == ["reader", "root", "writer"]
        for name in source.user_names():
            assert restored.user(name) == source.user(name)
        for name in source.role_names():
            assert restored.role(name) == source.role(name)
        alice = restored.user("alice")
        assert alice is not None and alice.roles == ("reader", "writer")
        assert password_matches(ALICE_PASSWORD, alice.password_hash)
        assert not password_matches(ROOT_PASSWORD, alice.password_hash)
        bob = restored.user("bob")
        assert bob is not None and bob.no_password
        reader_role = restored.role("reader")
        assert reader_role is not None
        assert [(p.perm_type, p.key, p.range_end) for p in reader_role.permissions] == [
            (PermissionType.READ, b"/pub/", b"/pub0")
        ]
    finally:
        source_backend.close()
        restored_backend.close()


def snapshot_of_dir(directory: Path, path: Path) -> Path:
    return snapshot_of(Source(directory, compacted=0, current=0), path)  # only the dir is read


def test_a_store_that_never_changed_is_written_as_a_fresh_etcd(tmp_path: Path) -> None:
    Backend(str(tmp_path / "empty"), sync=False).close()
    snapshot = snapshot_of_dir(tmp_path / "empty", tmp_path / "empty.db")
    with open_reader(str(snapshot)) as reader:
        buckets = {bucket.key: bucket for bucket in reader.buckets()}
        auth = [(e.key, e.value) for e in reader.items(buckets[layout.BUCKET_AUTH])]
    assert auth == [
        (layout.AUTH_ENABLED_KEY, layout.AUTH_DISABLED),
        (layout.AUTH_REVISION_KEY, layout.encode_u64(1)),
    ]
    restore_snapshot(options(snapshot, tmp_path / "out"))
    backend, store = open_store(tmp_path / "out" / "member" / "db")
    try:
        assert (store.enabled, store.revision, store.user_names()) == (False, 1, [])
    finally:
        backend.close()


def user_record(name: bytes) -> bytes:
    return auth_pb2.User(name=name, password=b"$2a$10$x").SerializeToString()


@pytest.mark.parametrize(
    ("bucket", "record", "message"),
    [
        (layout.BUCKET_AUTH, (layout.AUTH_ENABLED_KEY, b"\x02"), "not 00 or 01"),
        (layout.BUCKET_AUTH, (layout.AUTH_REVISION_KEY, b"\x01"), "not 8"),
        (layout.BUCKET_AUTH_USERS, (b"alice", user_record(b"bob")), "holds user"),
        (layout.BUCKET_AUTH_USERS, (b"alice", b"\xff\xff"), "authUsers bucket"),
        (
            layout.BUCKET_AUTH_ROLES,
            (
                b"r",
                auth_pb2.Role(
                    name=b"r",
                    keyPermission=[auth_pb2.Permission(permType=7, key=b"k")],  # type: ignore[arg-type]
                ).SerializeToString(),
            ),
            "unknown permission type 7",
        ),
    ],
)
def test_malformed_auth_records_are_refused(
    tmp_path: Path, bucket: bytes, record: tuple[bytes, bytes], message: str
) -> None:
    path = etcd_file(tmp_path / "bad.db", {bucket: [record]})
    with pytest.raises(SnapshotFormatError, match=message):
        restore_snapshot(options(path, tmp_path / "out"))
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.restoring").exists()


# --- Real processes: etcd -> raftkv and raftkv -> etcd, checked with etcdctl ---------------


def ctl(endpoint: str, *args: str) -> tuple[int, str]:
    """etcdctl's exit code and output (error lines reduced to their message)."""
    done = etcdctl(endpoint, *args, timeout_s=30.0)
    lines = []
    for line in (done.stdout + done.stderr).splitlines():
        if line.startswith('{"level"'):
            record = json.loads(line)
            if "error" not in record:
                continue
            line = str(record["error"])
        lines.append(line)
    return done.returncode, "\n".join(lines)


def set_up_auth(endpoint: str) -> None:
    """root, and alice who may read /pub/ only; a public and a secret key; auth on."""
    for args in (
        ["user", "add", f"root:{ROOT_PASSWORD}"],
        ["user", "add", f"alice:{ALICE_PASSWORD}"],
        ["role", "add", "reader"],
        ["role", "grant-permission", "reader", "read", "/pub/", "--prefix"],
        ["user", "grant-role", "alice", "reader"],
        ["put", "/pub/x", "public"],
        ["put", "/secret", "hidden"],
        ["auth", "enable"],
    ):
        code, out = ctl(endpoint, *args)
        assert code == 0, (args, out)


def save_as_root(endpoint: str, path: Path) -> None:
    code, out = ctl(endpoint, f"--user=root:{ROOT_PASSWORD}", "snapshot", "save", str(path))
    assert code == 0, out


def assert_auth_enforced(endpoint: str) -> None:
    alice = f"--user=alice:{ALICE_PASSWORD}"
    code, out = ctl(endpoint, alice, "get", "/pub/x", "--print-value-only")
    assert (code, out) == (0, "public")
    code, out = ctl(endpoint, alice, "get", "/secret")
    assert code != 0 and "permission denied" in out, out
    code, out = ctl(endpoint, "get", "/pub/x")
    assert code != 0 and "user name is empty" in out, out
    code, out = ctl(endpoint, "--user=alice:wrong", "get", "/pub/x")
    assert code != 0 and "authentication failed" in out, out
    code, out = ctl(
        endpoint, f"--user=root:{ROOT_PASSWORD}", "get", "/secret", "--print-value-only"
    )
    assert (code, out) == (0, "hidden")
    code, out = ctl(endpoint, f"--user=root:{ROOT_PASSWORD}", "auth", "status")
    assert code == 0 and "Authentication Status: true" in out, out


def test_an_etcd_snapshot_with_auth_restores_into_raftkv(tmp_path: Path) -> None:
    (tmp_path / "etcd").mkdir()
    snapshot = tmp_path / "etcd.db"
    with run_etcd(tmp_path / "etcd") as etcd:
        set_up_auth(etcd.endpoint)
        save_as_root(etcd.endpoint, snapshot)
    with start_restored(tmp_path / "restored", ["m1"], snapshot, "raftkv") as copy:
        assert_auth_enforced(copy.member(0).client_endpoint)


def test_a_raftkv_snapshot_with_auth_restores_into_etcd(tmp_path: Path) -> None:
    (tmp_path / "source").mkdir()
    snapshot = tmp_path / "raftkv.db"
    with ProcessCluster.start(tmp_path / "source", 1, bcrypt_cost=BCRYPT_COST) as source:
        source.wait_for_leader()
        endpoint = source.member(0).client_endpoint
        set_up_auth(endpoint)
        save_as_root(endpoint, snapshot)
    with start_restored(tmp_path / "etcd", ["e1"], snapshot, "etcd") as etcd:
        assert_auth_enforced(etcd.member(0).client_endpoint)
