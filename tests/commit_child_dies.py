"""
A spool commit process that dies once it has committed a batch, before it answers: what a
crash (or the OOM killer) between the flush and the reply leaves.  Started by
``tests.test_spool_commit_process`` in place of L{gateway.spool.commit_process}.
"""

import os

from gateway.spool import commit_process


def _die_instead_of_answering(fd: int, data: bytes) -> None:
    os._exit(3)


if __name__ == "__main__":
    commit_process._write_all = _die_instead_of_answering
    commit_process.main()
