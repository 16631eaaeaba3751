"""Trace replay (issue 6, ``docs/trace-model.md``): memory traces through the TLB model.

``replay_trace`` is the entry point; ``formats`` reads lackey/.pwt/.npy, ``reference``
is the readable engine, ``fast`` the compiled one, ``presets`` the named models.
"""

from pagewalk.trace.replay import (
    REFERENCE_MODEL,
    PageSizeMap,
    TraceModel,
    TraceReplayer,
    TraceStats,
    replay_trace,
)

__all__ = ["REFERENCE_MODEL", "PageSizeMap", "TraceModel", "TraceReplayer", "TraceStats",
           "replay_trace"]
