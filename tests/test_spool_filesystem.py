"""
The spool names the filesystem it is on once at start-up when that is one it should not be on:
the one it is known to be slow on (ext4 without a journal, where a new file costs more the more
files were recently deleted), from what Linux's sysfs says, and those that lose acknowledged
messages (tmpfs and ramfs at a restart, overlayfs with its container, a systemd service's
private /tmp when the service stops), from the mount table.
Any other answer, or none, says nothing.  sysfs and the mount table are fakes here: the real
ones depend on the machine the tests run on.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase

from gateway.spool import filesystem, store
from gateway.spool.filesystem import (
    CONTAINER_LAYER,
    IN_MEMORY,
    JOURNAL_LESS_EXT4,
    PRIVATE_TMP,
    filesystem_type,
    mount_id,
    private_tmp_warning,
    slow_creation_warning,
    spool_filesystem_warning,
    volatile_storage_warning,
)
from gateway.testing.logs import LogCapture
from gateway.testing.threads import ManualThreadPool
from tests.test_spool_store import SpoolTestMixin


class SlowCreationWarningTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.spool = os.path.abspath(self.mktemp())
        os.makedirs(self.spool)
        self.sysfs = os.path.abspath(self.mktemp())
        device = os.stat(self.spool).st_dev
        block = os.path.join(self.sysfs, "devices", "virtual", "block", "vdz")
        os.makedirs(block)
        os.makedirs(os.path.join(self.sysfs, "dev", "block"))
        os.symlink(block, os.path.join(self.sysfs, "dev", "block", f"{os.major(device)}:{os.minor(device)}"))

    def journal_task(self, text: str) -> None:
        directory = os.path.join(self.sysfs, "fs", "ext4", "vdz")
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "journal_task"), "w") as f:
            f.write(text)

    def test_ext4_without_a_journal_is_named(self) -> None:
        self.journal_task("<none>\n")
        self.assertEqual(slow_creation_warning(self.spool, self.sysfs), JOURNAL_LESS_EXT4)

    def test_ext4_with_a_journal_is_not(self) -> None:
        self.journal_task("812\n")
        self.assertIsNone(slow_creation_warning(self.spool, self.sysfs))

    def test_another_filesystem_is_not(self) -> None:
        """No ext4 entry for the device (tmpfs, XFS, btrfs): nothing to say."""
        self.assertIsNone(slow_creation_warning(self.spool, self.sysfs))

    def test_a_partition_and_a_mapped_device_are_named_by_their_own_entry(self) -> None:
        """ext4 names its sysfs entry as the kernel names the device: ``sda1``, ``nvme0n1p2``, ``dm-0``."""
        device = os.stat(self.spool).st_dev
        link = os.path.join(self.sysfs, "dev", "block", f"{os.major(device)}:{os.minor(device)}")
        for target, name in ((os.path.join("pci0000:00", "block", "sda", "sda1"), "sda1"),
                             (os.path.join("pci0000:00", "nvme", "nvme0", "nvme0n1", "nvme0n1p2"), "nvme0n1p2"),
                             (os.path.join("virtual", "block", "dm-0"), "dm-0")):
            os.makedirs(os.path.join(self.sysfs, "devices", target))
            os.remove(link)
            os.symlink(os.path.join("..", "..", "devices", target), link)
            self.assertIsNone(slow_creation_warning(self.spool, self.sysfs), name)
            os.makedirs(os.path.join(self.sysfs, "fs", "ext4", name))
            with open(os.path.join(self.sysfs, "fs", "ext4", name, "journal_task"), "w") as f:
                f.write("<none>\n")
            self.assertEqual(slow_creation_warning(self.spool, self.sysfs), JOURNAL_LESS_EXT4, name)

    def test_unreadable_answers_say_nothing(self) -> None:
        """A journal_task that is not text, or a link that loops: no warning, no error."""
        self.journal_task("\xff\xfe")
        with open(os.path.join(self.sysfs, "fs", "ext4", "vdz", "journal_task"), "wb") as f:
            f.write(b"\xff<none>")
        self.assertIsNone(slow_creation_warning(self.spool, self.sysfs))
        device = os.stat(self.spool).st_dev
        link = os.path.join(self.sysfs, "dev", "block", f"{os.major(device)}:{os.minor(device)}")
        os.remove(link)
        os.symlink(link, link)
        self.assertIsNone(slow_creation_warning(self.spool, self.sysfs))

    def test_no_sysfs_is_not(self) -> None:
        self.assertIsNone(slow_creation_warning(self.spool, os.path.join(self.sysfs, "absent")))
        self.assertIsNone(slow_creation_warning(os.path.join(self.spool, "absent"), self.sysfs))


class VolatileStorageWarningTests(SynchronousTestCase):
    """
    Before: a spool on tmpfs or in a container's layer started without a word.  These tables
    are found by the spool's device, as on a kernel without fdinfo's mount id (the kernel's id
    would pick a line of the machine's own numbering); PrivateTmpWarningTests covers the id.
    """

    def setUp(self) -> None:
        self.patch(filesystem, "mount_id", lambda path: None)
        self.spool = os.path.abspath(self.mktemp())
        os.makedirs(self.spool)
        device = os.stat(self.spool).st_dev
        self.device = f"{os.major(device)}:{os.minor(device)}"
        self.mountinfo = os.path.abspath(self.mktemp())

    def mounts(self, *types: str) -> str:
        """
        A mount table with a line for the spool's device per type in ``types`` (the first one
        counts), among others with no optional field, two of them, and a mount point holding
        " - " (the kernel writes its spaces as \\040).
        """
        lines = ["22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw",
                 "25 22 0:21 / /proc rw,nosuid shared:12 master:3 - proc proc rw",
                 "26 22 0:22 / /run/a\\040-\\040ext4\\040b rw shared:13 - tmpfs tmpfs rw"]
        for n, fstype in enumerate(types):
            optional = " shared:20 master:7" if n % 2 else ""
            lines.append(f"{40 + n} 22 {self.device} / /srv/mail-spool-{n} rw,relatime{optional} - {fstype} "
                         f"source-{n} rw,lowerdir=/l:/m,upperdir=/u,workdir=/w")
        with open(self.mountinfo, "w") as f:
            f.write("\n".join(lines) + "\n")
        return self.mountinfo

    def test_tmpfs_and_ramfs_are_named(self) -> None:
        for fstype in ("tmpfs", "ramfs"):
            warning = volatile_storage_warning(self.spool, self.mounts(fstype))
            self.assertEqual(warning, IN_MEMORY.format(fstype=fstype))
            self.assertIn(f"in memory ({fstype})", warning)

    def test_overlayfs_is_named(self) -> None:
        self.assertEqual(volatile_storage_warning(self.spool, self.mounts("overlay")), CONTAINER_LAYER)

    def test_the_type_is_read_after_the_separator_whatever_the_optional_fields(self) -> None:
        """Zero optional fields, or two: the type is the first field after the lone "-"."""
        self.assertEqual(filesystem_type(self.spool, self.mounts("tmpfs")), "tmpfs")
        self.assertEqual(filesystem_type(self.spool, self.mounts("ext4", "tmpfs")), "ext4")
        with open(self.mountinfo) as f:
            last = f.read().splitlines()[-1]
        self.assertIn("master:7 - tmpfs", last)
        with open(self.mountinfo, "w") as f:
            f.write(last + "\n")
        self.assertEqual(filesystem_type(self.spool, self.mountinfo), "tmpfs")

    def test_a_disk_is_not(self) -> None:
        for fstype in ("ext4", "xfs", "btrfs", "zfs"):
            self.assertIsNone(volatile_storage_warning(self.spool, self.mounts(fstype)), fstype)

    def test_a_device_not_in_the_table_says_nothing(self) -> None:
        self.mounts()
        self.assertIsNone(filesystem_type(self.spool, self.mountinfo))
        self.assertIsNone(volatile_storage_warning(self.spool, self.mountinfo))

    def test_unreadable_tables_say_nothing(self) -> None:
        """No table (another OS), a line cut short, bytes that are not text: no warning, no error."""
        self.assertIsNone(volatile_storage_warning(self.spool, self.mountinfo + ".absent"))
        self.assertIsNone(volatile_storage_warning(os.path.join(self.spool, "absent"), self.mounts("tmpfs")))
        with open(self.mountinfo, "wb") as f:
            f.write(f"40 22 {self.device} / /x rw -\n\xff\xfe 40 22\n".encode("latin-1"))
        self.assertIsNone(volatile_storage_warning(self.spool, self.mountinfo))

    def test_the_real_table_is_read(self) -> None:
        """Linux's own mount table names /proc's filesystem, so the parsing matches the kernel's format."""
        self.patch(filesystem, "mount_id", mount_id)  # the kernel's id again: the real table has it
        self.assertEqual(filesystem_type("/proc"), "proc")

    def test_the_start_up_check_names_memory_before_speed(self) -> None:
        self.assertEqual(spool_filesystem_warning(self.spool, os.path.abspath(self.mktemp()), self.mounts("tmpfs")),
                         IN_MEMORY.format(fstype="tmpfs"))
        self.assertIsNone(spool_filesystem_warning(self.spool, os.path.abspath(self.mktemp()), self.mounts("ext4")))


class PrivateTmpWarningTests(SynchronousTestCase):
    """
    Before: a spool under the shipped unit's private /tmp (emptied whenever the service stops)
    started without a word, on ext4 as on tmpfs.
    """

    PRIVATE = b"/tmp/systemd-private-6d0e4b5bc2e14c4f8e1f7d1c3a9b2e10-graphsmtp.service-Qw3rTy/tmp"

    def setUp(self) -> None:
        # The spool's real path has a space in a directory name, as the kernel escapes it.
        self.base = os.path.realpath(os.path.abspath(self.mktemp())) + " dir"
        self.spool = os.path.join(self.base, "state", "spool")
        os.makedirs(self.spool)
        device = os.stat(self.spool).st_dev
        self.device = f"{os.major(device)}:{os.minor(device)}".encode()
        self.mountinfo = os.path.abspath(self.mktemp())
        self.kernel_id = mount_id(self.spool)
        self.assertIsNotNone(self.kernel_id, "Linux names the mount of a directory in /proc/self/fdinfo")
        self.other_ids = iter(range(self.kernel_id + 1000, self.kernel_id + 2000))

    def table(self, *lines: bytes) -> str:
        root = b"%d 1 %s / / rw,relatime - ext4 /dev/sda1 rw" % (next(self.other_ids), self.device)
        proc = b"%d 22 0:21 / /proc rw,nosuid shared:12 master:3 - proc proc rw" % next(self.other_ids)
        with open(self.mountinfo, "wb") as f:
            f.write(b"\n".join([root, proc, *lines]) + b"\n")
        return self.mountinfo

    def mount(self, root: bytes, point: object, kernels: bool = False, device: bytes = b"",
              fstype: bytes = b"ext4") -> bytes:
        """A line mounting ``root`` at ``point``: the spool's own mount (``kernels``) or another one."""
        escaped = os.fsencode(point).replace(b"\\", b"\\134").replace(b" ", b"\\040")
        ident = self.kernel_id if kernels else next(self.other_ids)
        return b"%d 22 %s %s %s rw,nosuid,nodev shared:5 - %s /dev/sda1 rw" % (
            ident, device or self.device, root, escaped, fstype)

    def without_mount_ids(self) -> None:
        self.patch(filesystem, "mount_id", lambda path: None)

    def test_the_private_tmp_is_named_on_any_filesystem(self) -> None:
        self.assertIn("lost when the service stops", PRIVATE_TMP)
        for root, fstype in ((self.PRIVATE, b"ext4"), (self.PRIVATE[len(b"/tmp"):], b"tmpfs")):
            table = self.table(self.mount(root, self.base, kernels=True, fstype=fstype))
            self.assertEqual(private_tmp_warning(self.spool, table), PRIVATE_TMP, fstype)
            self.assertEqual(spool_filesystem_warning(self.spool, os.path.abspath(self.mktemp()), table), PRIVATE_TMP)

    def test_the_kernels_mount_id_decides(self) -> None:
        """Not the mount points: stacked, moved or covered mounts cannot fool the kernel's id."""
        deeper_private = self.mount(self.PRIVATE, os.path.join(self.base, "state"))
        self.assertIsNone(private_tmp_warning(self.spool, self.table(self.mount(b"/srv", self.base, True),
                                                                     deeper_private)))
        self.assertEqual(private_tmp_warning(self.spool, self.table(self.mount(self.PRIVATE, "/elsewhere", True),
                                                                    self.mount(b"/srv", self.base))), PRIVATE_TMP)
        self.assertIsNone(private_tmp_warning(self.spool, self.table(self.mount(b"/var/lib/graphsmtp", self.base,
                                                                                True))))

    def test_the_type_is_the_kernels_mount_too(self) -> None:
        """The tmpfs/overlay check reads the same line: a device number that is not the table's (btrfs) cannot hide it."""
        table = self.table(self.mount(b"/", "/elsewhere", kernels=True, device=b"0:99", fstype=b"tmpfs"),
                           self.mount(b"/", self.base))
        self.assertEqual(filesystem_type(self.spool, table), "tmpfs")
        self.assertEqual(spool_filesystem_warning(self.spool, os.path.abspath(self.mktemp()), table),
                         IN_MEMORY.format(fstype="tmpfs"))

    def test_without_a_mount_id_the_mount_point_decides(self) -> None:
        """
        An older kernel: of the spool's device's mounts, the longest mount point above it
        counts, the last of equal ones; not a neighbour's, nor a deeper one of another device.
        """
        self.without_mount_ids()
        private = self.mount(self.PRIVATE, self.base)
        below = self.mount(b"/srv/spool", os.path.join(self.base, "state"))
        self.assertIsNone(private_tmp_warning(self.spool, self.table(private, below)))
        covered = self.mount(b"/srv/spool", os.path.join(self.base, "state"), device=b"0:99")
        self.assertEqual(private_tmp_warning(self.spool, self.table(private, covered)), PRIVATE_TMP)
        self.assertIsNone(private_tmp_warning(self.spool, self.table(private, self.mount(b"/", self.base))))
        self.assertEqual(private_tmp_warning(self.spool, self.table(self.mount(b"/", self.base), private)), PRIVATE_TMP)
        self.assertIsNone(private_tmp_warning(self.spool, self.table(self.mount(self.PRIVATE, self.base, device=b"0:99"))))
        self.assertIsNone(private_tmp_warning(self.spool, self.table(self.mount(self.PRIVATE, self.base + "x"))))
        self.assertIsNone(private_tmp_warning(self.spool, self.table(self.mount(self.PRIVATE, self.spool + "/x"))))

    def test_a_path_that_is_not_utf8(self) -> None:
        """Mount points are bytes: a directory named in Latin-1 is matched as the kernel writes it."""
        self.without_mount_ids()
        latin = os.path.join(os.fsencode(self.base), b"caf\xe9")
        os.makedirs(latin)
        self.assertEqual(private_tmp_warning(os.fsdecode(latin), self.table(self.mount(self.PRIVATE, latin))),
                         PRIVATE_TMP)

    def test_unreadable_tables_say_nothing(self) -> None:
        self.assertIsNone(private_tmp_warning(self.spool, self.mountinfo + ".absent"))
        self.assertIsNone(private_tmp_warning(os.path.join(self.spool, "absent"), self.table()))
        with open(self.mountinfo, "wb") as f:
            f.write(b"61 22 8:1\n\xff\xfe - \n%d x" % self.kernel_id)
        self.assertIsNone(private_tmp_warning(self.spool, self.mountinfo))

    def test_the_real_table_names_a_real_mount(self) -> None:
        """The kernel's own table has a line for the id its fdinfo gives (the format the code reads)."""
        with open("/proc/self/mountinfo", "rb") as f:
            self.assertIn(str(self.kernel_id).encode(), [line.split()[0] for line in f])
        self.assertIsNone(private_tmp_warning(self.spool))


class JobMarkingPool(ManualThreadPool):
    """Knows whether the code running now is one of its jobs (not a callback of one)."""

    in_job = False

    def callInThreadWithCallback(self, onResult: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        def job(*a: Any, **kw: Any) -> Any:
            self.in_job = True
            try:
                return f(*a, **kw)
            finally:
                self.in_job = False

        super().callInThreadWithCallback(onResult, job, *args, **kwargs)


class StartUpLineTests(SpoolTestMixin, SynchronousTestCase):
    def recovered_lines(self, warning: object) -> list[dict]:
        self.patch(store, "spool_filesystem_warning", lambda path: warning)
        log = LogCapture.install(self)
        self.successResultOf(self.make_spool().recover())
        return [e for e in log.events if e.get("log_namespace", "").startswith("gateway.spool")]

    def test_recovery_warns_once_about_a_slow_filesystem(self) -> None:
        warnings = [e for e in self.recovered_lines(JOURNAL_LESS_EXT4) if e["log_level"] is LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["note"], JOURNAL_LESS_EXT4)
        self.assertEqual(warnings[0]["directory"], self.directory)

    def test_the_check_reads_sysfs_in_a_spool_thread(self) -> None:
        """Invariant 6: sysfs and the mount table are file reads, made in the spool's pool, not on the reactor."""
        asked: list[tuple[str, bool]] = []
        pool = JobMarkingPool()
        self.patch(store, "spool_filesystem_warning", lambda path: asked.append((path, pool.in_job)))
        d = self.make_spool(pool=pool).recover_schedule()
        self.assertEqual(asked, [])
        pool.run_all()
        self.successResultOf(d)
        self.assertEqual(asked, [(os.path.join(self.directory, "tmp"), True)])

    def test_a_spool_in_memory_is_named_at_start_up(self) -> None:
        """The real check, on a real tmpfs (/dev/shm, which every Linux has): one warning naming it."""
        self.assertTrue(os.path.isdir("/dev/shm"), "this test needs Linux's /dev/shm")
        self.directory = tempfile.mkdtemp(prefix="graphsmtp-spool-", dir="/dev/shm")
        self.addCleanup(shutil.rmtree, self.directory, True)
        log = LogCapture.install(self)
        self.successResultOf(self.make_spool().recover())
        warnings = [e for e in log.events if e["log_level"] is LogLevel.warn and e.get("note")]
        self.assertEqual([e["note"] for e in warnings], [IN_MEMORY.format(fstype="tmpfs")])

    def test_nothing_is_said_otherwise(self) -> None:
        self.assertEqual([e for e in self.recovered_lines(None) if e["log_level"] is LogLevel.warn], [])
