"""
A spool commit process started from code whose batches are in another format: what a child
started after the package was changed under a running daemon meets.  Started by
``tests.test_spool_commit_process`` in place of L{gateway.spool.commit_process}.
"""

from gateway.spool import commit_process, commit_wire

if __name__ == "__main__":
    commit_wire.FORMAT += 1
    commit_process.main()
