"""
A spool commit process that dies once it has committed a batch, before it answers: what a
crash (or the OOM killer) between the flush and the reply leaves.  Started by
``tests.test_spool_commit_process`` in place of L{gateway.spool.commit_process}.
"""

import os

from gateway.spool import commit_process
from gateway.spool.fileops import FileOps


class DiesInsteadOfAnswering(FileOps):
    """The spool's file calls, except that writing the answer (to stdout) ends the process."""

    def write(self, fd: int, data: bytes) -> None:
        if fd == 1:
            os._exit(3)
        super().write(fd, data)


if __name__ == "__main__":
    commit_process.FileOps = DiesInsteadOfAnswering  # type: ignore[misc]
    commit_process.main()
