"""
External tools the tests use.  A missing tool is a broken test machine, not a reason to skip:
the test fails and says which Debian package ``scripts/test.sh`` would have installed
(the list is ``scripts/debian-packages.txt``).
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any, Optional


def missing_tool_message(command: str, package: str, detail: str = "") -> str:
    extra = f" ({detail})" if detail else ""
    return (f"{command} is not usable{extra}: install the Debian package {package} "
            f"(bash scripts/test.sh installs everything in scripts/debian-packages.txt)")


def require_tool(case: Any, command: str, package: str) -> str:
    """The tool's path, or the test fails with what to install."""
    path = shutil.which(command)
    if path is None:
        case.fail(missing_tool_message(command, package))
    return path


def require_swaks_with_tls(case: Any, path: Optional[str] = None) -> str:
    """swaks that can do --tls/--tlsc: it needs the Perl TLS modules, which are only recommended."""
    path = path or require_tool(case, "swaks", "swaks")
    problem = swaks_tls_problem(path)
    if problem:
        case.fail(missing_tool_message("swaks --tls", "libnet-ssleay-perl and libio-socket-ssl-perl", problem))
    return path


def swaks_tls_problem(path: str) -> Optional[str]:
    out = subprocess.run([path, "--support"], capture_output=True, text=True, timeout=30)
    text = out.stdout + out.stderr
    if "=== TLS supported" in text:
        return None
    lines = [line.strip("* ") for line in text.splitlines() if "TLS" in line]
    return lines[0] if lines else "swaks --support does not list TLS"


__all__ = ["require_tool", "require_swaks_with_tls", "missing_tool_message", "swaks_tls_problem"]
