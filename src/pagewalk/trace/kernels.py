"""The compiled kernels' interface and loader: counters, status codes and run state
(shared by trace/fast.py, which implements the drivers, and trace/replay.py and
trace/formats.py, which call them), and :func:`compiled`, which loads the drivers.

Importing Numba and loading its cached functions takes most of a second here, more than
a whole ``pagewalk trace`` of a small trace should (its start-up must stay under 0.4 s).
So the drivers are compiled once into one object file of machine code (a C entry point
each, no call into Python's or Numba's runtime), and later loaded with llvmlite's JIT
linker alone and called through ctypes: no Numba import. The file holds its key (the
sources' sizes and CRCs, not their times, which an install changes; the Numba and
llvmlite versions; the CPU) and is looked up in the package (built at install by
setup.py), then in the user's cache directory, and else built there (announced on
stderr); any change builds a new one; when the cache cannot be used, Numba's own (cached)
dispatchers run instead, and with NUMBA_DISABLE_JIT=1 the plain Python (the reference
for coverage).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# the ELF reader, the directory of machine code built at install, the compile notice
from pagewalk.hw.compiled import announce_compile, shipped_dir, undefined_symbols

# -- counters (replay.TraceReplayer reads them back by these indexes) ----------------------
C_ACCESSES = 0
C_LOADS = 1          # C_LOADS + kind: loads, stores, instruction fetches
C_STORES = 2
C_IFETCHES = 3
C_L1_HITS = 4
C_STLB_HITS = 5
C_WALKS = 6
C_WALK_REFS = 7
C_FAULTS = 8
NR_COUNTERS = 9

# -- stop reasons of the drivers -----------------------------------------------------------
DONE = 0
GROW_MAPPED = 1      # the mapped-page set is half full: Python doubles it and calls again
BAD_RESERVED = 2     # bits 57..61 of a record are not zero
BAD_KIND = 3         # kind 3 does not exist
NON_CANONICAL = 4    # the address is not canonical for the paging mode

# -- lackey_scan's verdicts ----------------------------------------------------------------
LACKEY_OK = 0
LACKEY_BAD_LINE = 1
LACKEY_NON_CANONICAL = 2

# -- same-page runs: tlb_stage's state between calls (int64[RUN_STATE_SIZE]) ----------------
# Four slots (0, 1: loads and stores, the dTLB; 2, 3: instruction fetches, the iTLB; the
# first of each class the more recent) of RUN_FIELDS each: the key of a page the class
# used (the record's bits from the page shift up, kind bits of a load or a fetch), the
# flat index of its L1 entry, that entry's tag (the slot is void once the entry holds
# another) and its TLB array.
RUN_KEY = 0
RUN_ENTRY = 1
RUN_TAG = 2
RUN_ARRAY = 3
RUN_FIELDS = 4
RUN_STATE_SIZE = 4 * RUN_FIELDS
NO_RUN = 1           # a key no record's masked bits equal (bit 0 is below every page)

VA_MASK = (1 << 57) - 1


def new_run_state() -> list[int]:
    """The run state before any access: every slot void."""
    return [NO_RUN, -1, -1, -1] * 4


# == loading the compiled drivers ==========================================================
# name -> (argument kinds, number of integer results). An argument kind is "i" (an
# integer) or an array: its dtype character (q int64, Q uint64, B uint8) and its ndim.
KERNEL_ARGS: dict[str, tuple[str, int]] = {
    "tlb_stage": ("q1 i i i i q1 q1 q1 q2 q3 q1 q1 Q1 q1 q2 q1 q1 q1", 3),
    "fault_stage": ("q1 i i q1 q1", 2),
    "walk_stage": ("q1 i i q2 q1 q1 Q1 q1 q2 q1", 0),
    "mapped_rehash": ("q1 q1", 0),
    "lackey_scan": ("B1 i Q1 i i", 4),
}
SYMBOL_PREFIX = "pagewalk_trace_"
CACHE_ENV = "PAGEWALK_CACHE_DIR"
CACHE_MAGIC = b"pagewalk trace kernels 1\n"
BUILD_SECONDS = 20   # a build of the drivers' machine code, measured here
_SOURCES = ("trace/kernels.py", "trace/fast.py", "hw/fasttlb.py")
_DTYPES = {"q": np.dtype(np.int64), "Q": np.dtype(np.uint64), "B": np.dtype(np.uint8)}
_lock = threading.Lock()
_loaded: Kernels | None = None


class Kernels:
    """The drivers as callables taking and returning what trace/fast.py's do, and where
    they came from: "native" (machine code loaded without Numba), "numba" (Numba's
    dispatchers: the cache could not be used) or "python" (NUMBA_DISABLE_JIT=1)."""

    def __init__(self, source: str, functions: dict[str, Callable[..., Any]],
                 keep: Any = None) -> None:
        self.source = source
        self._keep = keep            # the JIT engine owning the machine code
        self.tlb_stage = functions["tlb_stage"]
        self.fault_stage = functions["fault_stage"]
        self.walk_stage = functions["walk_stage"]
        self.mapped_rehash = functions["mapped_rehash"]
        self.lackey_scan = functions["lackey_scan"]


def compiled() -> Kernels:
    """The drivers, loaded once per process: from the cache of machine code (built first
    if missing or stale), else Numba's own dispatchers."""
    global _loaded
    with _lock:
        if _loaded is None:
            _loaded = _load()
        return _loaded


def _load() -> Kernels:
    if os.environ.get("NUMBA_DISABLE_JIT", "0") not in ("", "0"):
        return _from_module("python")
    try:
        return _native()
    except Exception as err:                   # noqa: BLE001 (any failure: Numba's path)
        if os.environ.get("PAGEWALK_DEBUG"):
            print(f"pagewalk: compiled trace kernels not cached ({err}); using Numba",
                  file=sys.stderr)
        return _from_module("numba")


def _from_module(source: str) -> Kernels:
    from pagewalk.trace import fast
    return Kernels(source, {name: getattr(fast, name) for name in KERNEL_ARGS})


def _native() -> Kernels:
    import llvmlite.binding as llvm  # type: ignore[import-untyped]
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    key = cache_key(llvm)
    path = cache_path(key)
    found = _find(key)
    code = None if found is None else found[1]
    if code is None:
        announce_compile("the trace replay's machine code", BUILD_SECONDS)
        code = build_object()
        try:
            _write_object(path, key, code)
        except OSError as err:             # no cache this time: the code is still good
            if os.environ.get("PAGEWALK_DEBUG"):
                print(f"pagewalk: cannot keep compiled trace kernels in {path}: {err}",
                      file=sys.stderr)
    target = llvm.Target.from_default_triple()
    engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""),
                                        target.create_target_machine(codemodel="jitdefault"))
    engine.add_object_file(llvm.ObjectFileRef.from_data(code))
    engine.finalize_object()
    functions = {}
    for name, (kinds, nr_results) in KERNEL_ARGS.items():
        address = engine.get_function_address(SYMBOL_PREFIX + name)
        if not address:
            raise RuntimeError(f"{SYMBOL_PREFIX + name} missing from {path}")
        functions[name] = _caller(name, kinds.split(), nr_results, address)
    return Kernels("native", functions, keep=engine)


def _caller(name: str, kinds: list[str], nr_results: int,
            address: int) -> Callable[..., Any]:
    """A Python function taking the driver's arguments: arrays become a pointer and their
    shape (their dtype and layout checked: the machine code trusts them), integers stay;
    results come back through a small array. ctypes releases the GIL during the call."""
    c_args: list[Any] = []
    for kind in kinds:
        c_args += [ctypes.c_int64] if kind == "i" else [ctypes.c_void_p] + [ctypes.c_int64] * int(
            kind[1])
    if nr_results:
        c_args.append(ctypes.c_void_p)
    function = ctypes.CFUNCTYPE(ctypes.c_int64, *c_args)(address)
    expected = [None if kind == "i" else (_DTYPES[kind[0]], int(kind[1])) for kind in kinds]

    def call(*args: Any) -> Any:
        flat: list[Any] = []
        for arg, want in zip(args, expected, strict=True):
            if want is None:
                flat.append(int(arg))
                continue
            if arg.dtype != want[0] or arg.ndim != want[1] or not arg.flags.c_contiguous:
                raise TypeError(f"{name}: {want[0]} array of {want[1]} dimension(s), "
                                f"C-contiguous, expected; got {arg.dtype} {arg.shape}")
            flat.append(arg.__array_interface__["data"][0])
            flat.extend(arg.shape)
        if not nr_results:
            function(*flat)
            return None
        out = np.zeros(nr_results, dtype=np.int64)
        function(*flat, out.__array_interface__["data"][0])
        return tuple(int(value) for value in out)

    call.__name__ = name
    return call


# -- the cache of machine code -------------------------------------------------------------
def cache_dir() -> Path:
    """$PAGEWALK_CACHE_DIR, else $XDG_CACHE_HOME/pagewalk, else ~/.cache/pagewalk."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pagewalk"


def cache_key(llvm: Any) -> str:
    """What the machine code depends on, as text: each source's size and CRC (not its
    time: installing changes it), the Numba and llvmlite versions, the CPU and Numba's
    CPU settings. (hashlib is not used: importing it costs a twentieth of the start-up.)"""
    package = Path(__file__).resolve().parents[1]
    numba_spec = importlib.util.find_spec("numba")    # finds it without importing it
    if numba_spec is None or numba_spec.origin is None:
        raise RuntimeError("Numba is not installed")
    files = [package / source for source in _SOURCES]
    files.append(Path(numba_spec.origin).parent / "_version.py")
    parts = []
    for file in files:
        data = file.read_bytes()
        parts.append(f"{file.name} {len(data)} {zlib.crc32(data):08x} "
                     f"{zlib.adler32(data):08x}")
    import llvmlite
    parts += [llvmlite.__version__, llvm.get_process_triple(), llvm.get_host_cpu_name(),
              llvm.get_host_cpu_features().flatten()]
    parts += [f"{name}={os.environ.get(name, '')}"
              for name in ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES", "NUMBA_OPT")]
    return "; ".join(parts)


def cache_path(key: str) -> Path:
    """The object file's path for ``key`` (its checksums name it; the file holds the key
    itself, compared in full when read)."""
    data = key.encode()
    return cache_dir() / f"trace-kernels-{zlib.crc32(data):08x}{zlib.adler32(data):08x}.o"


def find_object(key: str) -> Path | None:
    """The file holding whole machine code for ``key``: the copy built at install time
    (inside the package), else the user's cache; None when neither has it."""
    found = _find(key)
    return None if found is None else found[0]


def _find(key: str) -> tuple[Path, bytes] | None:
    cached = cache_path(key)
    for path in (shipped_dir() / cached.name, cached):
        code = _read_object(path, key)
        if code is not None:
            return path, code
    return None


def _read_object(path: Path, key: str) -> bytes | None:
    """The machine code in ``path`` if the file is there, made for ``key`` and whole."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    head = CACHE_MAGIC + key.encode() + b"\n"
    if not data.startswith(head) or len(data) < len(head) + 4:
        return None
    check, code = data[len(head):len(head) + 4], data[len(head) + 4:]
    return code if int.from_bytes(check, "little") == zlib.crc32(code) else None


def _write_object(path: Path, key: str, code: bytes) -> None:
    """Write atomically (other processes may be loading or writing the same file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(CACHE_MAGIC + key.encode() + b"\n" +
                          zlib.crc32(code).to_bytes(4, "little") + code)
    os.replace(temporary, path)


# -- building the object file (imports Numba) ----------------------------------------------
def build_object() -> bytes:
    """Compile each driver behind a C entry point ``pagewalk_trace_NAME`` taking pointers
    and shapes, link them into one module, and return its machine code; raises if that
    code would call anything outside itself (it must load without Numba's runtime)."""
    from llvmlite import ir
    from numba import njit, types
    from numba.core.compiler_lock import global_compiler_lock

    from pagewalk.trace import fast

    module = ir.Module("pagewalk_trace_kernels")
    libraries = []
    context: Any = None
    for name, (kinds, nr_results) in KERNEL_ARGS.items():
        signature, source = _wrapper_source(name, kinds.split(), nr_results)
        namespace: dict[str, Any] = {"kernel": getattr(fast, name), "as_array": fast.as_array}
        exec(compile(source, f"<pagewalk {name} entry>", "exec"), namespace)  # noqa: S102
        # no reference counting, no Python wrappers: nothing outside the machine code
        options: dict[str, Any] = {"_nrt": False, "error_model": "numpy",
                                   "no_cpython_wrapper": True, "no_cfunc_wrapper": True}
        wrapper = njit(**options)(namespace["wrapper"])
        pointer: Any = types.CPointer          # untyped
        numba_args = tuple(pointer(getattr(types, _NUMBA_DTYPE[arg])) if arg != "i"
                           else types.int64 for arg in signature)
        wrapper.compile(numba_args)
        result = wrapper.overloads[numba_args]
        context = result.target_context
        libraries.append(result.library)
        # the C entry point: call the Numba-ABI function, return its int64 (it cannot fail)
        abi = context.call_conv.get_function_type(result.signature.return_type,
                                                  result.signature.args)
        callee = ir.Function(module, abi, result.fndesc.llvm_func_name)
        entry = ir.Function(module, ir.FunctionType(ir.IntType(64), [
            context.get_value_type(arg) for arg in result.signature.args]),
            SYMBOL_PREFIX + name)
        builder = ir.IRBuilder(entry.append_basic_block())
        value = builder.alloca(context.get_value_type(result.signature.return_type))
        status = builder.alloca(abi.args[1].pointee)
        builder.call(callee, [value, status, *entry.args])
        builder.ret(builder.load(value))
    library = context.codegen().create_library("pagewalk_trace_kernels")
    library.add_ir_module(module)
    for linked in libraries:
        library.add_linking_library(linked)
    with global_compiler_lock:
        library.finalize()
        code: bytes = library._codegen._tm.emit_object(library._final_module)
    missing = undefined_symbols(code)
    if missing:
        raise RuntimeError(f"compiled trace kernels call outside themselves: {missing}")
    return code


_NUMBA_DTYPE = {"q": "int64", "Q": "uint64", "B": "uint8"}


def _wrapper_source(name: str, kinds: list[str], nr_results: int) -> tuple[list[str], str]:
    """The Python source of the entry's Numba function (arrays rebuilt from pointer and
    shape; the results stored through a pointer) and its flat argument kinds."""
    params, flat, call_args = [], [], []
    for index, kind in enumerate(kinds):
        if kind == "i":
            params.append(f"a{index}")
            flat.append("i")
            call_args.append(f"a{index}")
            continue
        dims = [f"a{index}_{d}" for d in range(int(kind[1]))]
        params += [f"a{index}", *dims]
        flat += [kind[0]] + ["i"] * len(dims)
        call_args.append(f"as_array(a{index}, ({', '.join(dims)},))")
    lines = []
    if nr_results:
        params.append("out")
        flat.append("q")
        lines.append(f"    result = kernel({', '.join(call_args)})")
        lines.append(f"    results = as_array(out, ({nr_results},))")
        lines += [f"    results[{k}] = result[{k}]" for k in range(nr_results)]
    else:
        lines.append(f"    kernel({', '.join(call_args)})")
    lines.append("    return 0")
    return flat, f"def wrapper({', '.join(params)}):\n" + "\n".join(lines) + "\n"
