"""Peer measurement: OpenStack Nova 34's own Rbd image backend (`images_type=rbd`,
nova/virt/libvirt/imagebackend.py and nova/storage/rbd_utils.py from the `nova` package on PyPI),
unmodified, making an instance's root disk the way `LibvirtDriver._create_and_inject_local_root`
does: a copy-on-write clone of the Glance image's snapshot in the same cluster, grown to the
flavor's size. Written beside nova_imagebackend.py (same set-up, same worker protocol) for
benchmarks/nova.py's `run_rbd`; run it with var/nova-venv/bin/python (scripts/nova-venv.sh links
Debian's python3-rados and python3-rbd into that venv, and nothing else of the system's packages).

    var/nova-venv/bin/python benchmarks/peers/nova_rbd.py --worker ROOT --conf CEPH_CONF \
        --user diskledger --pool diskledger --parent IMAGE --snap snap   # JSON lines

What is real Nova: `imagebackend.Backend(True).by_name(instance, "disk", "rbd")` (an `Rbd`, whose
`RBDDriver` connects to the cluster anew for every call, as Nova does), `backend.exists()` (what the
driver asks before creating), then `Image.cache(fetch_func=clone_fallback_to_fetch, filename,
size, image_id=..., context=None, trusted_certs=None)` with `clone_fallback_to_fetch` calling
`backend.clone(context, image_id)` as the driver's does: `Rbd.create_image` under the external
lock, `Rbd.clone` -> `RBDDriver.is_cloneable` (the cluster's fsid, the snapshot opened read-only)
-> `RBDDriver.clone` (librbd clone with the source pool's features), `verify_base_size`, and
`RBDDriver.resize` to the flavor's size. No eventlet monkey patching: Nova's threading mode (no
tpool proxies).

Stood in for: Glance. `imagebackend.IMAGE_API` (a Glance client object) is replaced by a stub whose
`get` returns the image's metadata (`disk_format` raw, one location
`rbd://<fsid>/<pool>/<parent>/<snap>`) without a network round trip, so Nova's time here is less
than it would be with a real Glance. The fallback that downloads the image when it cannot be cloned
is not taken (a clone that fails is an error here, not a download).

Config (`CONF([])`, no file): instances_path, image_cache subdirectory `_base`,
use_cow_images=True, libvirt.images_type=rbd, libvirt.images_rbd_pool, images_rbd_ceph_conf,
rbd_user, oslo_concurrency.lock_path. The instance is a `nova.objects.Instance` holding a uuid.
Untimed after each trial: the disk image is removed through one connection kept for that.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
import warnings

try:  # imported as benchmarks.peers.nova_rbd
    from benchmarks.peers import nova_imagebackend as nib
except ImportError:  # run as a script: the file beside this one (stdlib only at import time)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import nova_imagebackend as nib

MiB = 1 << 20
CREATE_SIZE = nib.CREATE_SIZE  # 128 MiB, the flavor's root disk
IMAGE_ID = "bench-template-rbd"
DISK = "disk"


class GlanceStub:
    """What `IMAGE_API.get(context, image_id, include_locations=True)` returns, without Glance."""

    def __init__(self, location: str) -> None:
        self.location = location

    def get(self, context, image_id, include_locations=False, show_deleted=True):
        return {
            "id": image_id,
            "disk_format": "raw",
            "locations": [{"url": self.location, "metadata": {}}],
        }


class NovaRbdSide:
    def __init__(self, root: str, conf_file: str, user: str, pool: str, parent: str, snap: str):
        warnings.simplefilter("ignore")  # eventlet's deprecation warning on import
        self.root = os.path.abspath(root)
        instances = os.path.join(self.root, "instances")
        os.makedirs(instances, exist_ok=True)

        import nova.conf
        from oslo_concurrency import lockutils  # registers [oslo_concurrency] on the global CONF

        conf = nova.conf.CONF
        assert lockutils.CONF is conf
        conf(args=[], project="nova", default_config_files=[], default_config_dirs=[])
        conf.set_override("instances_path", instances)
        conf.set_override("use_cow_images", True)
        conf.set_override("subdirectory_name", "_base", group="image_cache")
        conf.set_override("images_type", "rbd", group="libvirt")
        conf.set_override("images_rbd_pool", pool, group="libvirt")
        conf.set_override("images_rbd_ceph_conf", conf_file, group="libvirt")
        conf.set_override("rbd_user", user, group="libvirt")
        conf.set_override("lock_path", os.path.join(self.root, "locks"), group="oslo_concurrency")
        self.conf = conf

        from nova import objects
        from nova.storage import rbd_utils
        from nova.virt.libvirt import imagebackend, imagecache

        objects.register_all()
        self.imagebackend = imagebackend
        self.backend = imagebackend.Backend(conf.use_cow_images)  # as LibvirtDriver.__init__
        self.instance = objects.Instance(uuid=str(uuid.uuid4()))
        self.filename = imagecache.get_cache_fname(IMAGE_ID)
        driver = rbd_utils.RBDDriver()
        fsid = driver.get_fsid()
        imagebackend.IMAGE_API = GlanceStub(f"rbd://{fsid}/{pool}/{parent}/{snap}")
        # One connection of our own, for the untimed clean-up after each trial.
        import rados
        import rbd

        self.rbd = rbd
        self.cluster = rados.Rados(rados_id=user, conffile=conf_file)
        self.cluster.connect(timeout=30)
        self.ioctx = self.cluster.open_ioctx(pool)
        self.pool, self.snap = pool, snap

    def trial(self, backend: str, n: int, check: bool = False) -> dict[str, float]:
        assert backend == "rbd", backend
        by_name = self.backend.by_name
        t0 = time.perf_counter()
        image = by_name(self.instance, DISK, "rbd")
        if image.exists():  # LibvirtDriver: created_disks = not backend.exists()
            raise RuntimeError(f"{image.rbd_name} exists before the trial")

        def clone_fallback_to_fetch(context, target, image_id, trusted_certs=None):
            image.clone(context, image_id)  # the driver's: no download fallback here

        image.cache(
            fetch_func=clone_fallback_to_fetch,
            context=None,
            filename=self.filename,
            image_id=IMAGE_ID,
            size=CREATE_SIZE,
            trusted_certs=None,
        )
        created = time.perf_counter() - t0
        name = image.rbd_name
        if check:
            with self.rbd.Image(self.ioctx, name, read_only=True) as made:
                assert made.size() == CREATE_SIZE, (name, made.size())
                assert made.parent_info()[2] == self.snap, (name, made.parent_info())
        self.rbd.RBD().remove(self.ioctx, name)
        return {"create": created}

    def close(self) -> None:
        self.ioctx.close()
        self.cluster.shutdown()

    def describe(self) -> dict[str, str]:
        from importlib.metadata import version

        return {
            "nova": version("nova"),
            "oslo.concurrency": version("oslo.concurrency"),
            "python": sys.version.split()[0],
            "rados": sys.modules["rados"].__file__ or "?",
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", metavar="ROOT", required=True)
    parser.add_argument("--conf", required=True, help="the cluster's ceph.conf")
    parser.add_argument("--user", required=True, help="cephx id, without client.")
    parser.add_argument("--pool", required=True)
    parser.add_argument("--parent", required=True, help="the image to clone (Glance's image)")
    parser.add_argument("--snap", default="snap")
    args = parser.parse_args()
    out = nib.protocol_stdout()
    nib.serve(
        NovaRbdSide(args.worker, args.conf, args.user, args.pool, args.parent, args.snap), out
    )


if __name__ == "__main__":
    main()
