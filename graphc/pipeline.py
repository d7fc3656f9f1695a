"""The pass pipeline every compiled graph goes through.

Order: ``fold`` (constants, e.g. the broadcast seeds autodiff makes) then ``simplify``
(algebraic rewrites such as x*1 that folding exposed), ``cse`` (merge the duplicates
rewrites leave behind), ``dce`` (drop what no output uses) and
last ``fusion`` (kernel groups; only with ``fuse=True``). ``disable`` turns off any
pass by name. Set ``GRAPHC_VERIFY=1`` (the test suite does) to verify after every pass.

>>> [name for name, _ in default_passes()]
['fold', 'simplify', 'cse', 'collect', 'dce', 'fusion']
>>> [name for name, _ in default_passes(fuse=False)]
['fold', 'simplify', 'cse', 'collect', 'dce']
"""
from __future__ import annotations

import os

from graphc.passes import PassManager, collect_terms, cse, dce, fold, simplify


def default_passes(fuse: bool = True):
    # fold first: autodiff seeds broadcast constants that fold into x*1 for simplify
    passes = [("fold", fold), ("simplify", simplify), ("cse", cse), ("collect", collect_terms),
              ("dce", dce)]
    if fuse:
        from graphc.passes.fusion import fusion
        passes.append(("fusion", fusion))
    return passes


def optimize(graph, fuse: bool = True, disable=(), snapshot=None):
    """Run the pipeline on ``graph`` (mutated); returns ``(graph, manager)``."""
    pm = PassManager(default_passes(fuse), disabled=disable,
                     verify_each=os.environ.get("GRAPHC_VERIFY") == "1", snapshot=snapshot)
    return pm.run(graph), pm
