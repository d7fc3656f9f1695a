"""The pass pipeline every compiled graph goes through.

``fuse=False`` turns fusion off (the unfused baseline); ``disable`` turns off any pass
by name. Set ``GRAPHC_VERIFY=1`` (the test suite does) to verify after every pass.

>>> [name for name, _ in default_passes()]
['dce']
"""
from __future__ import annotations

import os

from graphc.passes import PassManager, dce


def default_passes(fuse: bool = True):
    return [("dce", dce)]


def optimize(graph, fuse: bool = True, disable=(), snapshot=None):
    """Run the pipeline on ``graph`` (mutated); returns ``(graph, manager)``."""
    pm = PassManager(default_passes(fuse), disabled=disable,
                     verify_each=os.environ.get("GRAPHC_VERIFY") == "1", snapshot=snapshot)
    return pm.run(graph), pm
