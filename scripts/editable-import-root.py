#!/usr/bin/env python3
"""
Make graphsmtp's editable install expose only what is installable: ``gateway`` and
``twisted/plugins`` — not the checkout's ``tests``, ``bench`` or ``scripts``.

``pip install -e . --config-settings editable_mode=compat`` puts the checkout itself on
``sys.path`` (a ``__editable__.graphsmtp-*.pth`` naming the repository root).  Every
top-level directory there becomes importable from anywhere, so graphsmtp's own ``tests``
package shadowed a plugin's: ``trial tests`` in a plugin's folder ran graphsmtp's suite.  This
script points that ``.pth`` at a small directory of symlinks instead (``gateway`` and
``twisted/plugins``, whole directories, so new modules are seen without reinstalling).
Running the suite from the checkout (``python -m twisted.trial tests``) is unchanged: the
current directory comes first on ``sys.path``.

Run it with the virtualenv's interpreter after the editable install; it is idempotent.
"""

from __future__ import annotations

import glob
import os
import sys
import sysconfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPOSED = ("gateway", os.path.join("twisted", "plugins"))


def _link(target: str, link: str) -> None:
    if os.path.islink(link):
        if os.readlink(link) == target:
            return
        os.unlink(link)
    os.makedirs(os.path.dirname(link), exist_ok=True)
    os.symlink(target, link)


def main() -> int:
    pths = glob.glob(os.path.join(sysconfig.get_paths()["purelib"], "__editable__.graphsmtp-*.pth"))
    if not pths:
        sys.stderr.write("editable-import-root: graphsmtp is not installed in editable compat mode in "
                         f"{sys.prefix}; run pip install -e . --config-settings editable_mode=compat first\n")
        return 69  # EX_UNAVAILABLE
    view = os.path.join(sys.prefix, "graphsmtp-import-root")
    for relative in EXPOSED:
        _link(os.path.join(ROOT, relative), os.path.join(view, relative))
    for pth in pths:
        with open(pth, "w", encoding="utf-8") as f:
            f.write(view + "\n")
    print(f"editable install now exposes {', '.join(EXPOSED)} through {view}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
