"""Output arenas offered back to the stage that made them (docs/architecture.md, "Output
arenas"). A send or receive returns its frames in an arena of its own, which the caller's
result keeps; made fresh for every call, the C library hands the freed top of its heap back
to the system after each call and the next one faults the same memory in again, page by
page. An ``ArenaRecycler`` keeps the last arena and offers it to the next call once nothing
else refers to it any more (the result that held it is gone), so it is never written while
anything can still read it."""
from __future__ import annotations

import sys
from typing import Optional

import numpy as np

# Arenas outside these bounds are not kept: small ones fault little, and a large one would
# stay allocated for the whole life of the miniport or stack
KEEP_MIN = 64 << 10
KEEP_MAX = 16 << 20


class ArenaRecycler:
    """The last output arena of one stage (``offer`` before the call, ``keep`` after)."""

    __slots__ = ("_arena",)

    def __init__(self) -> None:
        self._arena: Optional[np.ndarray] = None

    def offer(self) -> Optional[np.ndarray]:
        """The kept arena when nothing else holds it (no result, view or export), else
        None."""
        arena = self._arena
        # the references: this slot, the local name and getrefcount's argument
        if arena is not None and sys.getrefcount(arena) == 3:
            return arena
        return None

    def keep(self, out: np.ndarray) -> None:
        """Keep the arena ``out`` lies in (itself or the array it is a view of)."""
        base = out if out.base is None else out.base
        if isinstance(base, np.ndarray) and base.base is None \
                and KEEP_MIN <= base.nbytes <= KEEP_MAX:
            self._arena = base
