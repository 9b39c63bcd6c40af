"""graphsmtp's built-in delivery observers, discovered exactly like third-party ones."""

from gateway.delivery.observers import IDeliveryObserverFactory
from gateway.plugins.factory import LazyPluginFactory

jsonLog = LazyPluginFactory(
    IDeliveryObserverFactory,
    "json-log",
    "Append one JSON line per delivery outcome (delivered, deferred, failed) to a file",
    "gateway.delivery.observers",
    "build_json_log",
)
