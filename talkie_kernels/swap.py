"""One way to run mlx-lm's own code with some of its module attributes replaced.

mlx-lm's command modules (``mlx_lm.generate``, ``mlx_lm.server``,
``mlx_lm.convert``) import what they call (``load``, ``make_sampler``,
``ResponseGenerator``, ``argparse``, ...) into their own namespace and call it
by that name. Swapping exactly those bindings for the length of a ``with``
block, and restoring them after it whatever happens, routes their work through
talkie_kernels and leaves the rest of their code, flags and behaviour untouched.
"""

from __future__ import annotations

import contextlib
import sys


@contextlib.contextmanager
def swapped(target, **values):
    """Within the block, ``target.<name>`` is ``values[name]`` for each name.

    1. Save each current value (the attribute must exist: a misspelt name, or
       an mlx-lm release that renamed it, raises ``AttributeError`` here rather
       than silently adding an attribute nobody reads).
    2. Set the new values and run the block.
    3. Restore the saved values, also when the block raises.
    """
    saved = {name: getattr(target, name) for name in values}
    try:
        for name, value in values.items():
            setattr(target, name, value)
        yield
    finally:
        for name, value in saved.items():
            setattr(target, name, value)


def sys_argv(prog: str, args):
    """``sys.argv`` as ``[prog, *args]`` within the block (mlx-lm's mains parse it)."""
    return swapped(sys, argv=[prog, *args])


def loading_through_talkie(module):
    """Within the block, ``module.load`` is ``talkie_kernels.load``: the mlx-lm
    command in ``module`` loads the fused model, with everything else its own."""
    from .loader import load

    return swapped(module, load=load)
