"""The test guest itself (tests/support/guest.py): what the LVM and dm-crypt tests stand on.

One guest boots for the session; each check here is a few commands in it.
"""

from __future__ import annotations

import json

from tests.support.guest import Guest

ENGINE = (
    "export PYTHONPATH=/payload/src:/payload/site DISKLEDGER_ROOT=/tmp/dl "
    "DISKLEDGER_LEDGER=sqlite:////tmp/dl/ledger.db DISKLEDGER_BACKEND=raw\n"
)


def test_commands_return_their_output_and_exit_status(guest: Guest) -> None:
    done = guest.run("echo one; echo two >&2; printf 'no newline'; exit 3")
    assert (done.rc, done.output) == (3, "one\ntwo\nno newline")
    assert guest.run("true").output == ""
    # Quotes, a marker look-alike and a long script survive the channel.
    long = "echo '@@x:1@@ \"$HOME\"'\n" + "true\n" * 2000
    assert guest.run(long).output == '@@x:1@@ "$HOME"\n'


def test_device_mapper_runs_lvm_thick_thin_and_tags(guest: Guest) -> None:
    script = """
    set -e
    pvcreate -q /dev/disk/by-serial/pv0
    vgcreate -q gtest /dev/disk/by-serial/pv0
    trap 'vgremove -q -f gtest >/dev/null; pvremove -q /dev/disk/by-serial/pv0' EXIT
    lvcreate -q -L 8M -n thick --addtag diskledger-op-1 gtest
    lvcreate -q -L 64M --thinpool pool gtest
    lvcreate -q -V 1G --thin -n thin gtest/pool
    lvextend -q -L 16M gtest/thick
    lvrename -q gtest thick thick2
    lvs --reportformat json -o lv_name,lv_size,lv_tags,pool_lv --units b gtest
    """
    done = guest.run(script)
    assert done.rc == 0, done.output
    report, _ = json.JSONDecoder().raw_decode(done.output[done.output.index("{") :])
    lvs = {lv["lv_name"]: lv for lv in report["report"][0]["lv"]}
    assert set(lvs) == {"thick2", "pool", "thin"}
    assert lvs["thick2"]["lv_size"] == "16777216B"
    assert lvs["thick2"]["lv_tags"] == "diskledger-op-1"
    assert lvs["thin"]["pool_lv"] == "pool"
    assert guest.run("vgs gtest").rc != 0  # removed on the way out


def test_dm_crypt_hides_the_plaintext_and_refuses_a_wrong_key(guest: Guest) -> None:
    # pbkdf2 with few iterations: argon2id's benchmark takes 18 s under emulation.
    script = """
    set -e
    disk=/dev/disk/by-serial/pv1
    plaintext() {  # busybox grep takes 7 s over 24 MiB of binary under emulation
        python3 -c "import sys; sys.exit(b'diskledger-plaintext-marker' not in open('$disk', 'rb').read(24 << 20))"
    }
    # The control: the search finds the marker when it is written in the clear.
    printf 'diskledger-plaintext-marker' | dd of=$disk bs=1M seek=20 conv=fsync status=none
    plaintext || { echo CONTROL-NOT-FOUND; exit 1; }
    head -c 32 /dev/urandom > /tmp/key; head -c 32 /dev/urandom > /tmp/wrong
    cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
        --key-file /tmp/key $disk
    trap 'cryptsetup close gcrypt 2>/dev/null; dd if=/dev/zero of=$disk bs=1M count=24 status=none' EXIT
    if cryptsetup open --key-file /tmp/wrong $disk gcrypt 2>/dev/null; then
        echo WRONG-KEY-OPENED; exit 1
    fi
    cryptsetup open --key-file /tmp/key $disk gcrypt
    # Ciphertext over the control (the LUKS2 header takes the first 16 MiB).
    dd if=/dev/zero of=/dev/mapper/gcrypt bs=1M count=8 status=none
    printf 'diskledger-plaintext-marker' | dd of=/dev/mapper/gcrypt conv=fsync status=none
    cryptsetup close gcrypt
    if plaintext; then echo PLAINTEXT-VISIBLE; exit 1; fi
    cryptsetup open --key-file /tmp/key $disk gcrypt
    head -c 27 /dev/mapper/gcrypt
    """
    done = guest.run(script)
    assert done.rc == 0, done.output
    assert done.output.endswith("diskledger-plaintext-marker")


def test_diskledger_runs_in_the_guest(guest: Guest) -> None:
    done = guest.run(
        ENGINE
        + "python3 -m diskledger.cli disk create vm-1/root --blank --size 1M --json >/dev/null\n"
        + "python3 -m diskledger.cli verify --json"
    )
    assert done.rc == 0, done.output
    assert json.loads(done.output)["ok"] is True
    guest.run("rm -rf /tmp/dl").check()
