"""graphsmtp's built-in delivery observers, discovered exactly like third-party ones."""

from gateway.delivery.observers import LazyObserverFactory

jsonLog = LazyObserverFactory(
    "json-log",
    "Append one JSON line per delivery outcome (delivered, deferred, failed) to a file",
    "gateway.delivery.observers",
    "build_json_log",
)
