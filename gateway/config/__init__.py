"""Configuration: one typed, validated, immutable object built from TOML, options and environment."""

from gateway.config.errors import ConfigError
from gateway.config.loader import load_config
from gateway.config.model import GatewayConfig, Limits, ListenerConfig

__all__ = ["ConfigError", "load_config", "GatewayConfig", "Limits", "ListenerConfig"]
