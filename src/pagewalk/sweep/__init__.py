"""Sweeps (issue 8, docs/sweeps.md): many scenario runs, trace replays or replays of a
recorded program at once, on Dask.

``spec`` reads the sweep file, ``runs`` expands it into checked run configurations,
``execute`` runs them on a local or remote Dask cluster and collects one table,
``plot`` draws it with Matplotlib, ``command`` holds ``pagewalk sweep`` and
``pagewalk plot``. Dask, pandas, PyArrow and Matplotlib are imported only when used.
"""

from pagewalk.sweep.runs import (
    RecordingConfig,
    RunConfig,
    ScenarioConfig,
    TraceConfig,
    expand_runs,
)
from pagewalk.sweep.spec import PlotSpec, Sweep, load_sweep, parse_sweep

__all__ = ["PlotSpec", "RecordingConfig", "RunConfig", "ScenarioConfig", "Sweep", "TraceConfig",
           "expand_runs", "load_sweep", "parse_sweep"]
