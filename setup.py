"""pagewalk's build (the metadata is pyproject.toml's): setuptools' build_py, then the
simulator's machine code compiled into the package.

hw/compiled.py and trace/kernels.py compile their Numba code into machine code on first
use, which takes a minute or two; built here, at install time, it ships in
``pagewalk/_machine_code`` and a fresh install's first run starts at once. The build is
the one those modules run on first use, in a subprocess importing the package from the
build directory, so its key (the sources' contents, the Numba and llvmlite versions, this
CPU) is the installed package's. The wheel is built on the machine that installs it (`pip
install .`); on another CPU the key does not match and pagewalk builds into the user's
cache instead. An editable install (`pip install -e .`) builds nothing here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PACKAGE = "pagewalk"
MACHINE_CODE = "_machine_code"      # hw/compiled.py SHIPPED_NAME
BUILD_TIMEOUT = 1800                # seconds: two busy cores took about 4 minutes
# the sets of @compiled functions a process registers before its first compiled call: every
# command's (pagewalk.machine), and `replay`'s, which adds its access loop
EXTRA_SETS: tuple[tuple[str, ...], ...] = ((), ("pagewalk.record.fastloop",))
BUILD = """
import importlib
import sys
sys.path.insert(0, sys.argv[1])
import pagewalk.machine            # registers every @compiled function, as every command does
for extra in sys.argv[2:]:         # a command's own compiled code on top (replay's loop)
    importlib.import_module(extra)
from pagewalk.hw import compiled
from pagewalk.trace import kernels
sources = (compiled.mode(), kernels.compiled().source)
if sources != ("native", "native"):
    sys.exit(f"machine code not built (fault path: {sources[0]}, trace: {sources[1]})")
"""


class BuildPyWithMachineCode(build_py):
    """build_py, then the machine code of the package just built into build_lib."""

    def run(self) -> None:
        super().run()
        if self.editable_mode or os.environ.get("NUMBA_DISABLE_JIT", "0") not in ("", "0"):
            return
        target = Path(self.build_lib) / PACKAGE / MACHINE_CODE
        shutil.rmtree(target, ignore_errors=True)      # a stale one from an earlier build
        target.mkdir(parents=True)
        with tempfile.TemporaryDirectory(prefix="pagewalk-numba-") as numba_cache:
            # the cache directory is the package's own: the build writes there; Numba's
            # own cache files go elsewhere (they would land beside the built sources)
            env = {**os.environ, "PAGEWALK_CACHE_DIR": str(target),
                   "NUMBA_CACHE_DIR": numba_cache}
            failure: list[str] = []
            for extra in EXTRA_SETS:
                try:
                    done = subprocess.run([sys.executable, "-c", BUILD, self.build_lib, *extra],
                                          env=env, capture_output=True, text=True,
                                          timeout=BUILD_TIMEOUT, check=False)
                    failure = [] if done.returncode == 0 else (
                        done.stderr.strip().splitlines()[-1:] or
                        [f"exit status {done.returncode}"])
                except subprocess.TimeoutExpired:
                    failure = [f"no machine code after {BUILD_TIMEOUT} s"]
                if failure:
                    break
        if failure:
            # the package still works: its first run builds into the user's cache
            self.warn(f"pagewalk: machine code not built at install ({failure[0]}); "
                      "the first run will compile it")
            shutil.rmtree(target, ignore_errors=True)
            return
        for leftover in target.glob("*.tmp"):
            leftover.unlink()


setup(cmdclass={"build_py": BuildPyWithMachineCode})
