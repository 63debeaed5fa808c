"""Encrypted disks (qcow2 with qemu's LUKS) and the local key directory.

What an attacker with the disk file sees (no plaintext; a control shows the same check finds it
in a plain disk), that a wrong key refuses, that delete leaves no key, that the key never reaches
the ledger, an argv or the JSON output, and that bad input is refused in one line with the ledger
and storage (key directory included) unchanged.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from diskledger.backends import DiskSource, SourceKind, runner
from diskledger.backends.qemu import Luks
from diskledger.backends.qemu import info as qemu_info
from diskledger.engine import Config, Engine
from diskledger.engine.encryption import key_problems
from diskledger.errors import InvalidInput, KeyNotFound, UnsafeKeyStore
from diskledger.hypervisor import describe
from diskledger.keys import LocalKeyDirectory, default_key_dir
from tests.backends.helpers import MiB, keyed_io, qemu_io, write_pattern
from tests.recovery.helpers import cli, error_line

MARKER = 0x5A
FAST = {"DISKLEDGER_LUKS_ITER_TIME": "10"}  # random keys: PBKDF stretching buys nothing
TEXT_MARKER = b"diskledger-plaintext-marker-7f3a"


@pytest.fixture(autouse=True)
def commands(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, ...]]]:
    """Every command run (overrides the backends' recorder: an encrypted image is opened by
    ``--image-opts driver=qcow2,...`` instead of ``-f``, which pins its format just as well)."""
    calls: list[tuple[str, ...]] = []
    real = runner.run

    def recording(argv: Sequence[str], **options: Any) -> str:
        if os.path.basename(argv[0]) == "qemu-img":
            pinned = "-f" in argv or any(str(a).startswith("driver=") for a in argv)
            assert pinned, argv
        calls.append(tuple(argv))
        return real(argv, **options)

    monkeypatch.setattr(runner, "run", recording)
    yield calls


def open_engine(root: Path, backend: str = "qcow2", **environ: str) -> Engine:
    return Engine.open(
        Config.load(root=root, backend=backend, environ={**FAST, **environ}, recover=False)
    )


def key_dir(root: Path) -> Path:
    return Path(default_key_dir(root))


def key_file(root: Path, engine: Engine, disk: str) -> Path:
    made = engine.show(disk).encryption
    assert made is not None
    return key_dir(root) / f"{made.key}.key"


def plaintext_run(path: str | Path, byte: int = MARKER) -> bool:
    """Whether the file holds 4 KiB of ``byte`` in a row: what a 64 KiB pattern write leaves."""
    return bytes([byte]) * 4096 in Path(path).read_bytes()


def snapshot_of(root: Path, engine: Engine) -> tuple[int, list[tuple[str, int]]]:
    """The ledger's event count, and every file under the root and the key directory."""
    events = len(list(engine.runtime.store.read_all()))
    files = []
    for base in (root, key_dir(root)):
        for directory, _, names in os.walk(base):
            for name in names:
                path = os.path.join(directory, name)
                if name.startswith("ledger.db"):
                    continue
                files.append((path, os.lstat(path).st_size))
    return events, sorted(files)


# -- the local key directory ------------------------------------------------------------------


def test_keys_are_random_root_only_files_and_destroy_is_idempotent(tmp_path: Path) -> None:
    keys = LocalKeyDirectory(tmp_path / "keys")
    keys.check()
    first, second = keys.create("op1"), keys.create("op1")
    first.release()
    second.release()
    assert first.ref != second.ref and first.ref.startswith("op1-")
    assert stat.S_IMODE(os.stat(tmp_path / "keys").st_mode) == 0o700
    for ref in (first.ref, second.ref):
        path = tmp_path / "keys" / f"{ref}.key"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        material = keys.material(ref)
        assert len(material) == 43 and material.isascii()  # 32 random bytes, base64url
    assert keys.material(first.ref) != keys.material(second.ref)
    with keys.secret_file(first.ref) as path_text:
        assert Path(path_text).read_bytes() == keys.material(first.ref)
    assert keys.destroy(first.ref) is True
    assert keys.destroy(first.ref) is False  # idempotent
    assert not keys.exists(first.ref)
    with pytest.raises(KeyNotFound):
        keys.material(first.ref)
    assert [k.ref for k in keys.list_keys()] == [second.ref]


def test_using_a_key_leaves_no_descriptor_open(tmp_path: Path) -> None:
    """Every qemu-img call on an encrypted disk goes through ``secret_file``: each leaked a
    descriptor of the key, so a long-running engine ran out of them, and the key directory's
    file system could not be unmounted (found by the power-loss rig: ``umount`` busy)."""
    keys = LocalKeyDirectory(tmp_path / "keys")
    key = keys.create("op3")
    key.release()

    def open_in_keys() -> list[str]:
        held = []
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(FileNotFoundError):  # the listing's own descriptor
                held.append(os.readlink(f"/proc/self/fd/{fd}"))
        return [p for p in held if p.startswith(str(tmp_path / "keys"))]

    for _ in range(3):
        with keys.secret_file(key.ref):
            pass
        keys.material(key.ref)
    assert keys.exists(key.ref)
    assert open_in_keys() == []


def test_a_key_is_held_by_its_maker_until_released(tmp_path: Path) -> None:
    keys = LocalKeyDirectory(tmp_path / "keys")
    new = keys.create("op2")
    assert [(k.ref, k.owner, k.held) for k in keys.list_keys()] == [(new.ref, "op2", True)]
    new.release()
    assert [k.held for k in keys.list_keys()] == [False]


@pytest.mark.parametrize("how", ["group-readable", "other-owner", "symlink", "file"])
def test_a_key_directory_that_is_not_root_only_is_refused(tmp_path: Path, how: str) -> None:
    directory = tmp_path / "keys"
    if how == "symlink":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        directory.symlink_to(tmp_path / "elsewhere")
    elif how == "file":
        directory.write_bytes(b"")
    else:
        directory.mkdir(mode=0o700)
        if how == "group-readable":
            directory.chmod(0o750)
        else:
            os.chown(directory, 65534, 65534)
    keys = LocalKeyDirectory(directory)
    with pytest.raises(UnsafeKeyStore):
        keys.check()
    with pytest.raises(UnsafeKeyStore):
        keys.create("op3")
    if directory.is_dir():
        assert list(directory.iterdir()) == []


def test_a_loosely_kept_key_file_is_refused(tmp_path: Path) -> None:
    keys = LocalKeyDirectory(tmp_path / "keys")
    new = keys.create("op4")
    new.release()
    (tmp_path / "keys" / f"{new.ref}.key").chmod(0o644)
    with pytest.raises(UnsafeKeyStore):
        keys.material(new.ref)


# -- what the disk file shows --------------------------------------------------------------------


def test_data_written_through_the_key_is_not_in_the_file_but_is_in_a_plain_disk(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    with open_engine(root) as engine:
        plain = engine.create("vm-1/plain", size=8 * MiB)
        secret = engine.create("vm-1/secret", size=8 * MiB, encrypt=True)
        assert plain.encryption is None and secret.encryption is not None
        key = key_file(root, engine, "vm-1/secret")
    assert plain.location and secret.location
    # The control: the same check finds the pattern in a disk without encryption.
    write_pattern(plain.location, "qcow2", MARKER)
    assert plaintext_run(plain.location)
    done = keyed_io(secret.location, key, f"write -P {MARKER:#x} 0 64k")
    assert done.returncode == 0, done.stderr
    assert not plaintext_run(secret.location)
    read = keyed_io(secret.location, key, f"read -P {MARKER:#x} 0 64k")
    assert read.returncode == 0 and "verification failed" not in read.stdout
    # Format inspection needs no key: the header says qcow2 with LUKS inside.
    seen = qemu_info(secret.location, "qcow2")
    assert seen["encrypted"] is True
    assert seen["format-specific"]["data"]["encrypt"]["format"] == "luks"
    # ... and without the key qemu refuses to open the data at all.
    assert qemu_io(secret.location, "qcow2", "read 0 64k").returncode != 0


def test_a_wrong_key_refuses(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with open_engine(root) as engine:
        view = engine.create("vm-1/root", size=8 * MiB, encrypt=True)
    assert view.location
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(b"A" * 43)
    wrong.chmod(0o600)
    done = keyed_io(view.location, wrong, "read 0 64k")
    assert done.returncode != 0
    assert "Invalid password" in done.stderr


def test_template_data_is_encrypted_on_its_way_into_the_disk(tmp_path: Path) -> None:
    root = tmp_path / "root"
    template = tmp_path / "base.raw"
    with template.open("wb") as f:
        f.truncate(16 * MiB)
        f.write(TEXT_MARKER * 2048)
    with open_engine(root) as engine:
        engine.add_template("base", template, "raw")
        view = engine.create("vm-1/root", template="base", size=32 * MiB, encrypt=True)
        key = key_file(root, engine, "vm-1/root")
        imported = engine.import_disk("vm-1/imp", template, "raw", encrypt=True)
        imported_key = key_file(root, engine, "vm-1/imp")
    assert view.location and imported.location
    assert view.backing is None and view.size == 32 * MiB  # a copy, not an overlay
    for location, secret in ((view.location, key), (imported.location, imported_key)):
        assert TEXT_MARKER not in Path(location).read_bytes()
        done = keyed_io(location, secret, f"read -v 0 {len(TEXT_MARKER)}")
        assert done.returncode == 0, done.stderr
        assert "diskledger.plain" in done.stdout  # qemu-io shows the bytes it decrypted
    assert TEXT_MARKER in template.read_bytes()  # the control


def test_resize_snapshot_and_rollback_work_through_the_key(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with open_engine(root) as engine:
        view = engine.create("vm-1/root", size=8 * MiB, encrypt=True)
        key = key_file(root, engine, "vm-1/root")
        assert view.location
        assert keyed_io(view.location, key, "write -P 0x11 0 64k").returncode == 0
        engine.snapshot("vm-1/root", "s1")
        assert keyed_io(view.location, key, "write -P 0x22 0 64k").returncode == 0
        assert engine.resize("vm-1/root", 16 * MiB).size == 16 * MiB
        after = engine.rollback("vm-1/root", "s1")
        assert after.size == 16 * MiB
        read = keyed_io(view.location, key, "read -P 0x11 0 64k")
        assert read.returncode == 0 and "verification failed" not in read.stdout
        engine.remove_snapshot("vm-1/root", "s1")
        assert engine.verify().ok
        assert key_problems(engine.runtime) == []


def test_delete_destroys_the_key_after_the_data(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with open_engine(root) as engine:
        view = engine.create("vm-1/root", size=8 * MiB, encrypt=True)
        key = key_file(root, engine, "vm-1/root")
        assert key.exists()
        engine.delete("vm-1/root")
        assert not key.exists()
        assert list(key_dir(root).iterdir()) == []
        assert view.location and not os.path.exists(view.location)
        completed = [
            e for e in engine.runtime.store.read_all() if e.type == "disk.delete.completed"
        ]
        assert view.encryption is not None
        assert completed[-1].data["key_destroyed"] == view.encryption.key


def test_the_key_never_reaches_the_ledger_an_argv_or_the_json(
    tmp_path: Path, commands: list[tuple[str, ...]]
) -> None:
    root = tmp_path / "root"
    with open_engine(root) as engine:
        engine.create("vm-1/root", size=8 * MiB, encrypt=True)
        material = key_file(root, engine, "vm-1/root").read_bytes().decode()
        engine.resize("vm-1/root", 16 * MiB)
        engine.snapshot("vm-1/root", "s1")
        events = [
            json.dumps(e.data) + json.dumps(e.metadata.to_json())
            for e in engine.runtime.store.read_all()
        ]
        assert any('"encryption"' in text for text in events)  # the reference is recorded
    assert not any(material in text for text in events)
    argvs = [" ".join(argv) for argv in commands]
    assert any("secret,id=" in a for a in argvs)
    assert not any(material in a for a in argvs)
    assert not any("data=" in a for a in argvs)
    shown = cli(root, "disk", "show", "vm-1/root", backend="qcow2")
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc["encryption"]["format"] == "luks" and doc["encryption"]["provider"] == "local"
    assert material not in shown.stdout


def test_recovery_destroys_a_key_no_intent_names(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with open_engine(root) as engine:
        engine.create("vm-1/root", size=8 * MiB, encrypt=True)
        keys = engine.runtime.keys
        assert keys is not None
        orphan = keys.create("deadbeef")
        held = keys.create("cafe")
        orphan.release()  # its maker "died" before recording an intent
        problems = key_problems(engine.runtime)
        assert problems == [{"key": orphan.ref, "problem": "no disk or operation names it"}]
        report = engine.recover()
        assert report.keys_destroyed == [orphan.ref]
        assert not keys.exists(orphan.ref)
        assert keys.exists(held.ref)  # still held: its maker may be about to record it
        assert key_file(root, engine, "vm-1/root").exists()  # named by a disk
        held.release()


# -- bad input: one line, nothing changed ----------------------------------------------------------


def _refused(root: Path, engine: Engine, call: Any, error: type[Exception]) -> None:
    before = snapshot_of(root, engine)
    with pytest.raises(error) as raised:
        call()
    assert "\n" not in str(raised.value)
    assert snapshot_of(root, engine) == before


def test_encrypt_on_a_backend_that_cannot_is_refused_unchanged(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with open_engine(root, "raw") as engine:
        engine.create("vm-1/other", size=MiB)
        _refused(
            root,
            engine,
            lambda: engine.create("vm-1/root", size=MiB, encrypt=True),
            InvalidInput,
        )
    assert not key_dir(root).exists()
    done = cli(root, "disk", "create", "vm-1/root", "--blank", "--size", "1M", "--encrypt")
    assert done.returncode == 1
    assert "cannot encrypt" in error_line(done.stderr)
    source = tmp_path / "src.raw"
    source.write_bytes(b"\0" * MiB)
    done = cli(root, "disk", "import", "vm-1/imp", str(source), "--format", "raw", "--encrypt")
    assert done.returncode == 1 and "cannot encrypt" in error_line(done.stderr)
    with open_engine(root, "raw") as engine:
        assert [v.disk for v in engine.list()] == ["vm-1/other"]
    assert not key_dir(root).exists()


def test_a_loose_key_directory_refuses_encrypt_unchanged(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with open_engine(root) as engine:
        key_dir(root).mkdir(mode=0o755)
        key_dir(root).chmod(0o755)
        _refused(
            root,
            engine,
            lambda: engine.create("vm-1/root", size=MiB, encrypt=True),
            UnsafeKeyStore,
        )
    done = cli(
        root, "disk", "create", "vm-1/root", "--blank", "--size", "1M", "--encrypt", backend="qcow2"
    )
    assert done.returncode == 1 and "mode 0755" in error_line(done.stderr)


def test_a_disk_whose_key_is_gone_is_refused_unchanged(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with open_engine(root) as engine:
        engine.create("vm-1/root", size=MiB, encrypt=True)
        key = key_file(root, engine, "vm-1/root")
        key.unlink()
        for call in (
            lambda: engine.resize("vm-1/root", 2 * MiB),
            lambda: engine.snapshot("vm-1/root", "s1"),
            lambda: engine.attach("vm-1/root", "no-such-domain", target_dev="vdb"),
        ):
            _refused(root, engine, call, KeyNotFound)
        assert key_problems(engine.runtime) == [
            {"disk": "vm-1/root", "key": key.name[:-4], "problem": "its key is missing"}
        ]
        # Delete still works: the data goes, and there is no key left to destroy.
        engine.delete("vm-1/root")


def test_export_of_an_encrypted_disk_is_refused_unchanged(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with open_engine(root) as engine:
        engine.create("vm-1/root", size=MiB, encrypt=True)
        target = tmp_path / "out.qcow2"
        _refused(root, engine, lambda: engine.export("vm-1/root", target), InvalidInput)
        assert not target.exists()


def test_an_encrypted_disk_is_described_with_its_libvirt_secret() -> None:
    source = DiskSource(SourceKind.FILE, path="/var/lib/diskledger/disks/vm-1/root")
    uuid = "8a1d2f3e-0c4b-4d5e-9f60-718293a4b5c6"
    xml = describe(source, "qcow2", target_dev="vdb", encryption_uuid=uuid).to_xml()
    assert '<encryption format="luks">' in xml
    assert f'<secret type="passphrase" uuid="{uuid}" />' in xml
    with pytest.raises(InvalidInput):
        describe(source, "raw", target_dev="vdb", encryption_uuid=uuid)
    assert "encryption" not in describe(source, "qcow2", target_dev="vdb").to_xml()


def test_luks_options_never_carry_the_key() -> None:
    luks = Luks("/keys/a,b.key", 10)
    assert luks.object_args() == ["--object", "secret,id=dlkey0,file=/keys/a,,b.key,format=raw"]


def test_a_flaky_pbkdf_benchmark_is_retried_on_a_new_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """qemu sizes a new key slot by timing its PBKDF in thread CPU time, and sometimes reads no
    time at all: such a create is made again; any other failure is not."""
    from diskledger.backends import qemu
    from diskledger.errors import CommandFailed

    flake = "qemu-img: x: Unable to get accurate CPU usage"
    tries: list[tuple[str, ...]] = []

    def flaky(argv: Sequence[str], **options: Any) -> str:
        tries.append(tuple(argv))
        Path(argv[-2]).write_bytes(b"partial")
        if len(tries) < 3:
            raise CommandFailed("qemu-img failed", command=list(argv), returncode=1, stderr=flake)
        return ""

    monkeypatch.setattr(runner, "run", flaky)
    target = tmp_path / "new.qcow2"
    qemu.create(str(target), "qcow2", MiB, luks=Luks(str(tmp_path / "k"), 10))
    assert len(tries) == 3
    tries.clear()

    def broken(argv: Sequence[str], **options: Any) -> str:
        tries.append(tuple(argv))
        raise CommandFailed("qemu-img failed", command=list(argv), returncode=1, stderr="nope")

    monkeypatch.setattr(runner, "run", broken)
    with pytest.raises(CommandFailed):
        qemu.create(str(target), "qcow2", MiB, luks=Luks(str(tmp_path / "k"), 10))
    assert len(tries) == 1


def test_a_create_refused_at_its_intent_leaves_no_key(tmp_path: Path) -> None:
    """The key is made before the intent; when the intent is refused (here: an unowned file
    where the disk would go), nothing names the key and it goes again at once."""
    from diskledger.errors import Conflict

    root = tmp_path / "root"
    with open_engine(root) as engine:
        engine.create("vm-1/other", size=MiB, encrypt=True)
        squatter = root / "disks" / "vm-1" / "root"
        squatter.write_bytes(b"not ours")
        _refused(
            root,
            engine,
            lambda: engine.create("vm-1/root", size=MiB, encrypt=True),
            Conflict,
        )
        assert len(list(key_dir(root).iterdir())) == 1  # the other disk's


def test_a_repeated_encrypted_create_makes_no_second_key(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with open_engine(root) as engine:
        first = engine.create("vm-1/root", size=MiB, encrypt=True, op_id="op-enc-1")
        again = engine.create("vm-1/root", size=MiB, encrypt=True, op_id="op-enc-1")
        assert again.encryption == first.encryption
        assert len(list(key_dir(root).iterdir())) == 1


def test_a_key_directory_that_cannot_be_listed_does_not_stop_recovery(tmp_path: Path) -> None:
    root = tmp_path / "root"
    not_a_dir = tmp_path / "keys-file"
    not_a_dir.write_bytes(b"")
    with open_engine(root, DISKLEDGER_KEY_DIR=str(not_a_dir)) as engine:
        engine.create("vm-1/root", size=MiB)
        assert engine.recover().keys_destroyed == []
        with pytest.raises(UnsafeKeyStore):
            engine.create("vm-1/enc", size=MiB, encrypt=True)


def test_verify_reports_a_lost_key_and_an_orphan_key(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with open_engine(root) as engine:
        engine.create("vm-1/root", size=8 * MiB, encrypt=True)
        engine.create("vm-2/root", size=8 * MiB, encrypt=True)
        assert engine.verify().ok
        key_file(root, engine, "vm-1/root").unlink()  # the data can no longer be read
        keys = engine.runtime.keys
        assert keys is not None
        orphan = keys.create("deadbeef")
        orphan.release()  # its maker died before recording an intent
        report = engine.verify()
        assert not report.ok
        lost = engine.show("vm-1/root").encryption
        assert lost is not None
        assert report.to_json()["keys"] == [
            {"disk": "vm-1/root", "key": lost.key, "problem": "its key is missing"},
            {"key": orphan.ref, "problem": "no disk or operation names it"},
        ]
    shown = cli(root, "verify", backend="qcow2")
    assert shown.returncode == 3  # needs an operator
    assert "its key is missing" in shown.stdout and orphan.ref in shown.stdout


def test_verify_reports_a_key_directory_it_may_not_trust(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with open_engine(root) as engine:
        engine.create("vm-1/root", size=8 * MiB, encrypt=True)
        key_dir(root).chmod(0o755)
        report = engine.verify()
        assert not report.ok
        [problem] = report.to_json()["keys"]
        assert "key directory" in problem["problem"], problem
