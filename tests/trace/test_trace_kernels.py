"""trace/kernels.py: the compiled drivers load from a cache of machine code without
importing Numba (the start-up of `pagewalk trace`), and every way of running them gives
the reference engine's numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pagewalk.trace import kernels
from pagewalk.trace.formats import Chunk, pack_records
from pagewalk.trace.replay import TraceReplayer

BASE = 0x7F0000000000
UNCOMPILED = os.environ.get("NUMBA_DISABLE_JIT", "0") not in ("", "0")
needs_jit = pytest.mark.skipif(UNCOMPILED, reason="NUMBA_DISABLE_JIT=1: nothing is compiled")

LOAD_CHECK = """
import json, sys
from pagewalk.trace import kernels
loaded = kernels.compiled()
print(json.dumps({"source": loaded.source, "numba": "numba" in sys.modules}))
"""


@needs_jit
def test_a_fresh_process_loads_the_drivers_without_numba() -> None:
    """Once built (here, by this process if need be), the machine code is reused: a new
    process loads it with llvmlite alone and never imports Numba."""
    assert kernels.compiled().source == "native"
    result = subprocess.run([sys.executable, "-c", LOAD_CHECK], capture_output=True,
                            text=True, timeout=300, check=True,
                            env={k: v for k, v in os.environ.items()
                                 if k != "NUMBA_DISABLE_JIT"})
    assert json.loads(result.stdout) == {"source": "native", "numba": False}


@needs_jit
def test_the_machine_code_calls_nothing_outside_itself() -> None:
    """No symbol is left for the JIT linker to find (Numba's runtime is not loaded)."""
    import llvmlite.binding as llvm
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    key = kernels.cache_key(llvm)
    kernels.compiled()
    path = kernels.find_object(key)     # the copy built at install, else the user's cache
    assert path is not None
    code = kernels._read_object(path, key)
    assert code is not None
    assert kernels.undefined_symbols(code) == []


def test_a_damaged_or_foreign_cache_file_is_not_loaded(tmp_path: Path) -> None:
    """A file whose checksum does not match its contents, or made for other sources or
    another CPU (its key differs), reads as missing (and is rebuilt)."""
    path = tmp_path / "trace-kernels-x.o"
    kernels._write_object(path, "fast.py 1000 1 cafe", b"\x7fELF machine code")
    assert kernels._read_object(path, "fast.py 1000 1 cafe") == b"\x7fELF machine code"
    assert kernels._read_object(path, "fast.py 1001 1 cafe") is None
    path.write_bytes(path.read_bytes()[:-3])
    assert kernels._read_object(path, "fast.py 1000 1 cafe") is None
    assert kernels._read_object(tmp_path / "missing.o", "fast.py 1000 1 cafe") is None


def test_the_cache_key_follows_the_sources(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The key names every source with its size and checksums, and the CPU: a changed
    source (here a stand-in for one) is another key and another file."""
    import llvmlite.binding as llvm
    key = kernels.cache_key(llvm)
    assert "fast.py" in key and "fasttlb.py" in key and llvm.get_host_cpu_name() in key
    source = tmp_path / "fast.py"
    source.write_text("x = 1\n")
    monkeypatch.setattr(kernels, "_SOURCES", (str(source),))   # an absolute path
    before = kernels.cache_key(llvm)
    source.write_text("x = 2\n")
    after = kernels.cache_key(llvm)
    assert before != after
    assert kernels.cache_path(before) != kernels.cache_path(after)


def test_the_numba_dispatchers_give_the_same_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    """When the cache cannot be used, Numba's own dispatchers run (the plain Python with
    NUMBA_DISABLE_JIT=1): same counts."""
    monkeypatch.setattr(kernels, "_loaded", None)

    def refuse() -> kernels.Kernels:
        raise OSError("no cache here")

    monkeypatch.setattr(kernels, "_native", refuse)
    assert kernels.compiled().source == ("python" if UNCOMPILED else "numba")
    rng = np.random.default_rng(3)
    words = pack_records(np.where(rng.random(20_000) < 0.5, BASE + 8 * np.arange(20_000),
                                  BASE + rng.integers(0, 1 << 30, 20_000)),
                         rng.integers(0, 3, 20_000))
    replayers = [TraceReplayer(engine=engine) for engine in ("fast", "reference")]
    for replayer in replayers:
        replayer.feed(Chunk(words, 0, words.nbytes))
    assert replayers[0].stats() == replayers[1].stats()


def test_a_driver_refuses_an_array_of_the_wrong_type() -> None:
    """The machine code trusts its pointers, so the caller checks dtype and layout."""
    loaded = kernels.compiled()
    if loaded.source != "native":
        pytest.skip("only the machine code's callers check")
    walks = np.zeros(4, dtype=np.int32)
    with pytest.raises(TypeError, match="mapped_rehash"):
        loaded.mapped_rehash(walks, np.zeros(8, dtype=np.int64))
