"""
Old home of the spool test doubles, kept because plugin and SMTP-layer tests outside this
repository import it (it was documented as public): they live in L{gateway.testing.spool}
(file operations, L{make_test_spool}) and L{gateway.testing.threads} (reactor and pools).
"""

from gateway.testing.spool import (
    FailingFileOps,
    FullDiskFileOps,
    RecordingFileOps,
    make_test_spool,
)
from gateway.testing.threads import ImmediateReactor, ManualThreadPool, SynchronousThreadPool

__all__ = [
    "ImmediateReactor", "SynchronousThreadPool", "ManualThreadPool", "RecordingFileOps",
    "FullDiskFileOps", "FailingFileOps", "make_test_spool",
]
