"""
systemd's ``MemoryDenyWriteExecute=yes``, imposed on this process by the same means systemd uses:
a seccomp filter that refuses (EPERM) ``mmap`` of memory both writable and executable,
``mprotect``/``pkey_mprotect`` that would make memory executable, and ``shmat`` with
``SHM_EXEC``.

Why here and not only ``prctl(PR_SET_MDWE)``: that switch exists since Linux 6.3, so on an older
kernel (Debian 12's 6.1) the test of the shipped unit's sandbox could only skip.  The filter
works on every kernel with seccomp, and it is the rule systemd itself installs.

Only the standard library (ctypes): the daemon's bootstrap imports this before anything else,
and the filter cannot be lifted once set, so it is installed in that child process only.
"""

from __future__ import annotations

import ctypes
import errno
import platform
from typing import Optional

# linux/filter.h: BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_JMP|BPF_JSET|BPF_K,
# BPF_ALU|BPF_AND|BPF_K, BPF_RET|BPF_K.
_LOAD, _JEQ, _JSET, _AND, _RET = 0x20, 0x15, 0x45, 0x54, 0x06
# linux/seccomp.h
_ALLOW = 0x7FFF0000
_DENY = 0x00050000 | errno.EPERM  # SECCOMP_RET_ERRNO
_PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 38, 22, 2
# struct seccomp_data: nr at 0, arch at 4, args[i] at 16 + 8 i (the low 32 bits first).
_NR, _ARCH, _ARG2 = 0, 4, 32
_PROT_WRITE, _PROT_EXEC, _SHM_EXEC = 0x2, 0x4, 0o100000

#: AUDIT_ARCH_* and the syscall numbers (mmap, mprotect, pkey_mprotect, shmat) per machine.
_MACHINES = {
    "x86_64": (0xC000003E, 9, 10, 329, 30),
    "aarch64": (0xC00000B7, 222, 226, 288, 196),
}


class _Instruction(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]


class _Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_Instruction))]


def unsupported() -> Optional[str]:
    """``None`` where the filter can be installed, else why not."""
    if platform.system() != "Linux":
        return "seccomp is Linux only"
    if platform.machine() not in _MACHINES:
        return f"no write-execute filter written for {platform.machine()}"
    return None


def program(machine: str) -> list[tuple[int, int, int, int]]:
    """The filter as (code, jump if true, jump if false, k); jumps count the instructions skipped."""
    arch, mmap, mprotect, pkey_mprotect, shmat = _MACHINES[machine]
    return [
        (_LOAD, 0, 0, _ARCH),
        (_JEQ, 0, 13, arch),              # another ABI: allowed (15)
        (_LOAD, 0, 0, _NR),
        (_JEQ, 4, 0, mmap),               # -> 8
        (_JEQ, 6, 0, mprotect),           # -> 11
        (_JEQ, 5, 0, pkey_mprotect),      # -> 11
        (_JEQ, 6, 0, shmat),              # -> 13
        (_RET, 0, 0, _ALLOW),
        (_LOAD, 0, 0, _ARG2),             # 8: mmap's prot
        (_AND, 0, 0, _PROT_WRITE | _PROT_EXEC),
        (_JEQ, 5, 4, _PROT_WRITE | _PROT_EXEC),  # both: denied (16), else allowed (15)
        (_LOAD, 0, 0, _ARG2),             # 11: mprotect's prot
        (_JSET, 3, 2, _PROT_EXEC),
        (_LOAD, 0, 0, _ARG2),             # 13: shmat's flags
        (_JSET, 1, 0, _SHM_EXEC),
        (_RET, 0, 0, _ALLOW),             # 15
        (_RET, 0, 0, _DENY),              # 16
    ]


def deny_write_execute() -> None:
    """Install the filter on this process (irreversibly); OSError when the kernel refuses it."""
    reason = unsupported()
    if reason:
        raise OSError(errno.ENOSYS, reason)
    steps = program(platform.machine())
    instructions = (_Instruction * len(steps))(*(_Instruction(*step) for step in steps))
    prog = _Program(len(steps), instructions)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_SECCOMP")


__all__ = ["deny_write_execute", "unsupported", "program"]
