"""
Notice sendmail drop-offs and queue-tool requests the moment they land in ``incoming/``.

The queue runner scans ``incoming/`` every few seconds anyway (that scan is the guarantee); on
Linux this service adds inotify so a cron job's mail is picked up immediately instead of up to
one scan interval later.  Where inotify is unavailable it does nothing and says so once.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.application.service import Service
from twisted.logger import Logger
from twisted.python.filepath import FilePath


class IncomingWatcher(Service):
    """Calls ``kick`` whenever a file is renamed into (or finished in) ``directory``."""

    log = Logger()

    def __init__(self, directory: str, kick: Callable[[], None], reactor: Any = None) -> None:
        self.directory = directory
        self.kick = kick
        self.reactor = reactor
        self._notifier: Any = None

    def startService(self) -> None:
        super().startService()
        try:
            from twisted.internet import inotify

            notifier = inotify.INotify(reactor=self.reactor) if self.reactor is not None else inotify.INotify()
            notifier.startReading()
            path = FilePath(self.directory)
            path.makedirs(ignoreExistingDirectory=True)
            notifier.watch(path, mask=inotify.IN_MOVED_TO | inotify.IN_CLOSE_WRITE, callbacks=[self._changed])
        except Exception as e:  # no inotify on this platform, or no more watches
            self.log.info("watching {directory} is not possible ({error}); sendmail drop-offs are picked up "
                          "by the periodic scan", directory=self.directory, error=e)
            return
        self._notifier = notifier

    def _changed(self, watch: Any, path: FilePath, mask: int) -> None:
        # Temporary names start with a dot; only finished files matter.  inotify reports
        # byte paths.
        name = path.basename()
        if not name.startswith(b"." if isinstance(name, bytes) else "."):
            self.kick()

    def stopService(self) -> None:
        super().stopService()
        if self._notifier is not None:
            self._notifier.loseConnection()
            self._notifier = None


__all__ = ["IncomingWatcher"]
