"""
Delivery through Microsoft Graph ``sendMail`` with app-only tokens.

Modules, one job each: ``credentials`` (which tenant), ``token`` (MSAL in threads),
``client`` (the REST calls over treq), ``body`` (streamed request bodies), ``mime`` (header
section, sending mailbox, exact recipients), ``structure`` (MIME tree for the large path),
``scheduler`` (how long a 429 pauses a mailbox; admission itself is the queue runner's), ``outcomes`` (answers → outcomes),
``deliverer`` (the flow), ``factory`` (building it), ``dsn`` (failure notices), ``sizes``.
"""

from gateway.delivery.graph.credentials import (
    ConfigCredentialResolver,
    ICredentialResolver,
    TenantCredentials,
    UnknownCredentials,
    credentials_from_config,
)
from gateway.delivery.graph.deliverer import GraphDeliverer, TenantHealth
from gateway.delivery.graph.factory import build_graph_deliverer
from gateway.delivery.graph.sizes import max_message_size
from gateway.delivery.graph.token import AccessToken, TokenError, TokenProviders

__all__ = [
    "GraphDeliverer", "TenantHealth", "build_graph_deliverer", "max_message_size",
    "TokenProviders", "TokenError", "AccessToken",
    "ICredentialResolver", "TenantCredentials", "ConfigCredentialResolver", "UnknownCredentials",
    "credentials_from_config",
]
