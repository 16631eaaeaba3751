"""Optional dependencies: the packages an extra of pyproject.toml installs, imported on
demand, with an ImportError that names the extra when one is missing.

The core (scenarios, trace replay, the explain tools) needs none of them; tables
(``Report.to_pandas``, ``TraceStats.to_pandas``) and sweeps need pandas, which
``pip install 'pagewalk[sweep]'`` installs.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# pyproject.toml's extras (Plotly is a core dependency: the web view serves its plotly.js)
EXTRA_OF_MODULE = {"pandas": "sweep", "pyarrow": "sweep", "dask": "sweep",
                   "distributed": "sweep", "matplotlib": "sweep"}


def require(module: str, purpose: str) -> ModuleType:
    """``module`` imported, or an ImportError saying that ``purpose`` needs it and which
    extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        top = module.partition(".")[0]
        extra = EXTRA_OF_MODULE.get(top, "sweep")
        raise ImportError(f"{purpose} needs {top}, which is not installed: "
                          f"pip install 'pagewalk[{extra}]'", name=top) from err


__all__ = ["EXTRA_OF_MODULE", "require"]
