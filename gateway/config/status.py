"""The ``[status]`` section: where (if anywhere) the HTTP status endpoint listens."""

from __future__ import annotations

from typing import Mapping, Optional

import attrs

from gateway.config.reader import TableReader, check_endpoint


@attrs.frozen
class StatusConfig:
    """``endpoint`` is a Twisted endpoint description; ``None`` (the default) serves nothing."""

    endpoint: Optional[str] = None


def parse_status(root: TableReader, environ: Mapping[str, str], resolve: object) -> StatusConfig:
    table = root.table_at("status")
    config = StatusConfig(endpoint=table.string("endpoint"))
    table.finish()
    if config.endpoint:
        check_endpoint(config.endpoint, table.key("endpoint"))
    return config


__all__ = ["StatusConfig", "parse_status"]
