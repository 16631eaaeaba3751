"""Compiled array code: the ``compiled`` decorator, and where its machine code comes from.

The simulator's hot array code (the buddy allocator's lists, page-table walks and entry
writes, the fault path's primitives, the touch loop) is plain Python marked ``@compiled``
and compiled by Numba without its reference counting (STYLE rule 12). Importing Numba and
loading its cached functions takes most of a second, more than a whole `pagewalk run` of a
large touch should; so the functions Python calls (those given an ``entry`` signature) are
compiled once into one object file of machine code with a C entry point each (and a
shared library linked from it), named by a digest of the sources, Numba, llvmlite and the
CPU, and loaded later by ctypes or llvmlite's JIT linker alone: no Numba import. The build
runs when pagewalk is installed (setup.py ships it in the package's ``_machine_code``);
a copy whose digest does not match (another CPU, edited sources) is passed over for the
user's cache directory, and a compile there (about a minute) is announced on stderr.

How @compiled functions run is chosen once per process, at the first call of one:

* "native": the machine code (built first when missing: that imports Numba once);
* "numba": Numba's own dispatchers, when the object cannot be built or loaded (each
  @compiled name in pagewalk's modules is replaced by its dispatcher, so that compiled
  code calls compiled code directly);
* "python": NUMBA_DISABLE_JIT=1, the plain functions (for coverage).

Arguments are integers, NumPy arrays and bundles: NamedTuples of arrays, integers and
other bundles, described once with :func:`bundle`. An entry signature names one kind per
argument: an array by its dtype character and number of dimensions ("q1" int64[:],
"Q2" uint64[:, :], "H1", "b1", "i1", "B1"), "i" an int64, "u" a uint64, "?" a bool, or a
bundle by its class name. Results: "" none, "i", "u", "?", or "ii" (two int64).
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib
import importlib.util
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, TypeVar, cast, overload

import numpy as np
import numpy.typing as npt

_F = TypeVar("_F", bound=Callable[..., Any])
CACHE_ENV = "PAGEWALK_CACHE_DIR"
SYMBOL_PREFIX = "pagewalk_compiled_"
SHIPPED_NAME = "_machine_code"   # the package's directory of machine code built at install
BUILD_SECONDS = 90               # a build of the fault path's machine code, measured here
_DTYPES = {"b": np.int8, "B": np.uint8, "h": np.int16, "H": np.uint16, "i": np.int32,
           "I": np.uint32, "q": np.int64, "Q": np.uint64}
_NUMBA_NAMES = {"b": "int8", "B": "uint8", "h": "int16", "H": "uint16", "i": "int32",
                "I": "uint32", "q": "int64", "Q": "uint64"}
_SCALARS = ("i", "u", "?")
_RESULT_CODE = {"": "None", "i": "out[0]", "u": "out[0] & 0xFFFFFFFFFFFFFFFF",
                "?": "out[0] != 0", "ii": "(out[0], out[1])"}
LIBC = {"memset", "memcpy", "memmove"}     # LLVM's loop idioms: resolved in this process
_lock = threading.RLock()


class Kernel:
    """A @compiled function: call it like the function it wraps."""

    def __init__(self, py_func: Callable[..., Any], inline: bool, entry: str | None,
                 result: str, needs: tuple[str, ...]) -> None:
        self.py_func = py_func
        self.name: str = py_func.__name__
        self.module: str = py_func.__module__
        self.inline = inline
        self.entry = entry.split() if entry is not None else None
        self.result = result
        self.needs = needs
        self.dispatcher: Any = None
        self._call: Callable[..., Any] = self._first_call

    def __call__(self, *args: Any) -> Any:
        return self._call(*args)

    def _first_call(self, *args: Any) -> Any:
        _load()
        if self._call == self._first_call:       # loaded without this one (defined later)
            if _State.mode == "python":
                _inject_needs()
                self._call = self.py_func
            else:
                _use_numba()
        return self._call(*args)

    def __repr__(self) -> str:
        return f"<compiled {self.module}.{self.name}>"


class _State:
    kernels: ClassVar[dict[str, Kernel]] = {}     # "module.name" -> Kernel
    bundles: ClassVar[dict[str, tuple[type, list[str]]]] = {}
    mode: ClassVar[str | None] = None             # "native", "numba" or "python"
    engine: ClassVar[Any] = None                  # the JIT engine owning the machine code


@overload
def compiled(func: _F) -> _F: ...
@overload
def compiled(*, inline: bool = False, entry: str | None = None, result: str = "",
             needs: tuple[str, ...] = ()) -> Callable[[_F], _F]: ...


def compiled(func: _F | None = None, *, inline: bool = False, entry: str | None = None,
             result: str = "", needs: tuple[str, ...] = ()) -> _F | Callable[[_F], _F]:
    """Mark ``func`` as compiled code. ``inline``: inline it into compiled callers;
    ``entry``/``result``: Python calls it (argument and result kinds: module docstring);
    ``needs``: "module:name" compiled functions of other code it calls, imported only
    when Numba compiles it (so that importing this module does not import Numba)."""
    assert result in _RESULT_CODE, result

    def wrap(function: _F) -> _F:
        kernel = Kernel(function, inline, entry, result, needs)
        _State.kernels[f"{kernel.module}.{kernel.name}"] = kernel
        return kernel  # type: ignore[return-value]

    return wrap if func is None else wrap(func)


def bundle(cls: type[NamedTuple], kinds: str) -> None:
    """Describe a NamedTuple whose instances compiled entries take: one kind per field."""
    fields = kinds.split()
    assert len(fields) == len(cls._fields), (cls, kinds)
    _State.bundles[cls.__name__] = (cls, fields)


def mode() -> str:
    """How @compiled functions run in this process (loading them if not yet)."""
    _load()
    assert _State.mode is not None
    return _State.mode


# == loading ===============================================================================

def _load() -> None:
    with _lock:
        if _State.mode is not None:
            return
        if os.environ.get("NUMBA_DISABLE_JIT", "0") not in ("", "0"):
            _use_python()
            return
        try:
            _use_native()
        except Exception as err:                 # noqa: BLE001 (any failure: Numba's path)
            if os.environ.get("PAGEWALK_DEBUG"):
                print(f"pagewalk: compiled code not cached ({err!r}); using Numba",
                      file=sys.stderr)
            _use_numba()


def _inject_needs() -> None:
    for kernel in list(_State.kernels.values()):
        module = sys.modules[kernel.module]
        for need in kernel.needs:
            source, name = need.split(":")
            setattr(module, name, getattr(importlib.import_module(source), name))


def _use_python() -> None:
    _inject_needs()
    for kernel in _State.kernels.values():
        kernel._call = kernel.py_func
    _State.mode = "python"


def _use_numba(fresh: bool = False) -> None:
    """Numba dispatchers for every @compiled function not served yet (``fresh``: for all,
    compiled anew: Numba's cache knows a function's own file only, not the compiled code
    of other files it inlines); their names in pagewalk's modules become the dispatchers."""
    with _lock:
        from numba import njit
        _inject_needs()
        new = [k for k in _State.kernels.values() if fresh or k.dispatcher is None]
        previous = {k: k.dispatcher for k in new if k.dispatcher is not None}
        for kernel in new:
            options: dict[str, Any] = {"cache": not fresh, "_nrt": False}
            if kernel.inline:
                options["inline"] = "always"
            kernel.dispatcher = njit(**options)(kernel.py_func)
        replace = {id(k): k.dispatcher for k in _State.kernels.values()}
        stale = {id(old): k.dispatcher for k, old in previous.items()}
        for name, module in list(sys.modules.items()):
            if not name.startswith("pagewalk.") or module is None:
                continue
            for attr, value in list(vars(module).items()):
                if isinstance(value, Kernel) and id(value) in replace:
                    setattr(module, attr, replace[id(value)])
                elif id(value) in stale:
                    setattr(module, attr, stale[id(value)])
        for kernel in new:
            if kernel._call == kernel._first_call or kernel in previous:
                kernel._call = kernel.dispatcher
        if _State.mode is None:
            _State.mode = "numba"


def _use_native() -> None:
    """The machine code as a shared library (built with the C compiler's linker; loaded
    by ctypes: neither Numba nor llvmlite imported), else as an object file loaded by
    llvmlite's JIT linker: the copy built at install time (:func:`shipped_dir`) when its
    key matches, else the user's cache, else built now into the cache (announced)."""
    entries = sorted(k for k, kernel in _State.kernels.items() if kernel.entry is not None)
    name = machine_code_name(entries)
    for directory in (shipped_dir(), cache_dir()):
        address = _load_native(directory / name, entries)
        if address is not None:
            break
    else:
        base = cache_dir() / name
        announce_compile("the simulator's machine code", BUILD_SECONDS)
        code, pic = build_object(entries)
        _write_object(base.with_suffix(".o"), code)
        _link_shared(pic, base.with_suffix(".so"))
        address = _load_native(base, entries)
        if address is None:
            raise RuntimeError(f"{base} unreadable")
    for key in entries:
        if not address[key]:
            raise RuntimeError(f"{_symbol(key)} missing from {name}")
        _State.kernels[key]._call = _caller(_State.kernels[key], int(address[key] or 0))
    _State.mode = "native"


def _load_native(base: Path, entries: list[str]) -> dict[str, int | None] | None:
    """The entries' addresses in the machine code at ``base`` (".so" a shared library,
    else ".o" an object file), or None when neither is there and whole."""
    shared = base.with_suffix(".so")
    if shared.exists():
        try:
            library = ctypes.CDLL(str(shared))
        except OSError:                    # e.g. made on another system: try the next one
            library = None
        if library is not None:
            _State.engine = library
            return {key: ctypes.cast(getattr(library, _symbol(key)), ctypes.c_void_p).value
                    for key in entries}
    if _read_object(base.with_suffix(".o")) is None:
        return None
    return _load_object(base.with_suffix(".o"), entries)


def _load_object(path: Path, entries: list[str]) -> dict[str, int | None]:
    """Load an object file with llvmlite's JIT linker: the entries' addresses."""
    import llvmlite.binding as llvm  # type: ignore[import-untyped]
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    code = _read_object(path)
    if code is None:
        raise RuntimeError(f"{path} unreadable")
    target = llvm.Target.from_default_triple()
    engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""),
                                        target.create_target_machine(codemodel="jitdefault"))
    engine.add_object_file(llvm.ObjectFileRef.from_data(code))
    engine.finalize_object()
    _State.engine = engine
    return {key: engine.get_function_address(_symbol(key)) for key in entries}


def _link_shared(pic: bytes, shared: Path) -> None:
    """Link position-independent object code into a shared library, if there is a C
    compiler to drive the linker (else the object file is loaded by llvmlite)."""
    import shutil
    import subprocess
    import tempfile
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return
    with tempfile.TemporaryDirectory(prefix="pagewalk-link-") as work:
        obj, out = Path(work) / "code.o", Path(work) / "code.so"
        obj.write_bytes(pic)
        done = subprocess.run([compiler, "-shared", "-o", str(out), str(obj)],
                              capture_output=True, timeout=120, check=False)
        if done.returncode != 0:
            return
        temporary = shared.with_name(f"{shared.name}.{os.getpid()}.tmp")
        shutil.copyfile(out, temporary)
        os.replace(temporary, shared)


def _symbol(key: str) -> str:
    return SYMBOL_PREFIX + key.replace(".", "_")


# -- calling machine code through ctypes ---------------------------------------------------

class _Descriptors:
    """Flat int64 descriptions of array and bundle arguments (address and shape per array,
    value per integer field), one per argument position of one entry: the last object
    passed there, kept (so its id cannot be reused) until another object takes its place.
    A position is described once per call, so replacing its entry never frees a
    description the call still uses; and at most one argument per position stays alive
    after the simulation that passed it is gone (a cache keyed by object kept hundreds of
    finished machines' arrays)."""

    def __init__(self, nr_args: int) -> None:
        self.slots: list[tuple[Any, npt.NDArray[np.int64], int] | None] = [None] * nr_args

    def address(self, position: int, value: Any, kind: str) -> int:
        found = self.slots[position]
        if found is not None and found[0] is value:
            return found[2]
        words: list[int] = []
        _flatten(value, kind, words)
        desc = np.array(words, dtype=np.int64)
        address = int(desc.__array_interface__["data"][0])
        self.slots[position] = (value, desc, address)
        return address


def _flatten(value: Any, kind: str, words: list[int]) -> None:
    if kind in _State.bundles:
        cls, fields = _State.bundles[kind]
        if not isinstance(value, cls):
            raise TypeError(f"{cls.__name__} expected, got {type(value).__name__}")
        values = cast(tuple[Any, ...], value)
        for field, field_kind in zip(values, fields, strict=True):
            _flatten(field, field_kind, words)
    elif kind in ("i", "?"):
        words.append(int(value))
    elif kind == "u":
        words.append(int(np.uint64(value).view(np.int64)))
    else:
        dtype, ndim = _DTYPES[kind[0]], int(kind[1])
        if value.dtype != dtype or value.ndim != ndim or not value.flags.c_contiguous:
            raise TypeError(f"{np.dtype(dtype)} array of {ndim} dimension(s), C-contiguous, "
                            f"expected; got {value.dtype} {value.shape}")
        words.append(int(value.__array_interface__["data"][0]))
        words.extend(int(n) for n in value.shape)


def _caller(kernel: Kernel, address: int) -> Callable[..., Any]:
    """A Python function taking the entry's arguments (generated, so that a call costs
    little more than the ctypes call): arrays and bundles become descriptor addresses."""
    kinds = kernel.entry
    assert kinds is not None
    c_args = [ctypes.c_uint64 if kind == "u" else ctypes.c_int64 if kind in _SCALARS
              else ctypes.c_void_p for kind in kinds]
    descriptors = _Descriptors(len(kinds))
    out = (ctypes.c_int64 * 2)()
    namespace: dict[str, Any] = {
        # PYFUNCTYPE keeps the GIL: calls do not overlap (``out``, the simulator's arrays)
        "function": ctypes.PYFUNCTYPE(ctypes.c_int64, *c_args, ctypes.c_void_p)(address),
        "out": out, "out_address": ctypes.addressof(out), "slots": descriptors.slots,
        "describe": descriptors.address}
    params = [f"a{i}" for i in range(len(kinds))]
    lines = [f"def {kernel.name}({', '.join(params)}):"]
    flat = []
    for position, (name, kind) in enumerate(zip(params, kinds, strict=True)):
        if kind in _SCALARS:
            flat.append(f"int({name})")
            continue
        lines += [f"    d = slots[{position}]",
                  (f"    p{name} = d[2] if d is not None and d[0] is {name} "
                   f"else describe({position}, {name}, {kind!r})")]
        flat.append(f"p{name}")
    lines += [f"    function({', '.join([*flat, 'out_address'])})",
              f"    return {_RESULT_CODE[kernel.result]}"]
    exec("\n".join(lines) + "\n", namespace)  # noqa: S102 (generated from the entry kinds)
    call: Callable[..., Any] = namespace[kernel.name]
    return call


# -- the cache of machine code -------------------------------------------------------------

def cache_dir() -> Path:
    """$PAGEWALK_CACHE_DIR, else $XDG_CACHE_HOME/pagewalk, else ~/.cache/pagewalk."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pagewalk"


def shipped_dir() -> Path:
    """Machine code built when pagewalk was installed (setup.py's build step runs the
    same build into it), inside the package: looked up before the user's cache."""
    return Path(__file__).resolve().parents[1] / SHIPPED_NAME


def announce_compile(what: str, seconds: int) -> None:
    """Say on stderr that a compile of about ``seconds`` starts (it happens once)."""
    print(f"pagewalk: compiling {what} (once, ~{seconds} s)...", file=sys.stderr, flush=True)


def _source_files(entries: list[str]) -> list[Path]:
    """The files whose text the machine code of ``entries`` depends on: the modules
    holding them and those they need, and the pagewalk modules those import names from
    (not every module registered in this process: a set's name must not depend on what
    else was imported, e.g. `replay`'s loop beside every command's set)."""
    kernels = [_State.kernels[key] for key in entries]
    modules = {k.module for k in kernels} | {__name__}
    modules |= {need.split(":")[0] for k in kernels for need in k.needs}
    found = set(modules)
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            continue
        for line in Path(spec.origin).read_text().splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] == "from" and words[1].startswith("pagewalk"):
                found.add(words[1])
    paths = []
    for name in sorted(found):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin is not None:
            paths.append(Path(spec.origin))
    return paths


def _cpu_identity() -> str:
    """What the machine code depends on in this CPU: /proc/cpuinfo's model and flags on
    Linux (cheap), else llvmlite's view of the host; and Numba's CPU settings."""
    settings = "|".join(os.environ.get(name, "") for name in (
        "NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES", "NUMBA_OPT"))
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    wanted = [line for line in lines if line.split(":")[0].strip() in ("model name", "flags")]
    if len(wanted) >= 2:
        return "|".join(sorted(set(wanted))) + settings
    import llvmlite.binding as llvm
    llvm.initialize_native_target()
    return "|".join((llvm.get_process_triple(), llvm.get_host_cpu_name(),
                     llvm.get_host_cpu_features().flatten())) + settings


def machine_code_name(entries: list[str]) -> str:
    """The file name (without a suffix: ".so" a shared library, ".o" an object file) of
    the machine code for these entries, in the package or the user's cache: a digest
    of their signatures, the sources' contents (not their times, which an install
    changes), the Numba and llvmlite versions and the CPU."""
    digest = hashlib.sha256()
    for key in entries:
        kernel = _State.kernels[key]
        digest.update(f"{key}({' '.join(kernel.entry or [])})->{kernel.result}\0".encode())
    for path in _source_files(entries):
        digest.update(path.read_bytes())
    numba_spec = importlib.util.find_spec("numba")    # finds it without importing it
    if numba_spec is None or numba_spec.origin is None:
        raise RuntimeError("Numba is not installed")
    digest.update((Path(numba_spec.origin).parent / "_version.py").read_bytes())
    llvmlite_spec = importlib.util.find_spec("llvmlite")
    if llvmlite_spec is None or llvmlite_spec.origin is None:
        raise RuntimeError("llvmlite is not installed")
    digest.update((Path(llvmlite_spec.origin).parent / "_version.py").read_bytes())
    digest.update(f"{sys.platform}|{_cpu_identity()}".encode())
    return f"compiled-{digest.hexdigest()[:24]}"


def _read_object(path: Path) -> bytes | None:
    """The object code in ``path`` if it is there and whole (a SHA-256 of it leads)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    check, code = data[:32], data[32:]
    return code if hashlib.sha256(code).digest() == check else None


def _write_object(path: Path, code: bytes) -> None:
    """Write atomically (other processes may be loading or writing the same file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(hashlib.sha256(code).digest() + code)
    os.replace(temporary, path)


# -- building the object file (imports Numba) ----------------------------------------------

def build_object(entries: list[str]) -> tuple[bytes, bytes]:
    """Compile each entry behind a C function ``pagewalk_compiled_MODULE_NAME`` taking
    descriptor addresses and integers, link them into one module and return its machine
    code, for llvmlite's JIT linker and position-independent (for a shared library);
    raises if that code calls anything outside itself and libc's memset/memcpy."""
    from llvmlite import ir
    from numba import njit, types
    from numba.core.compiler_lock import global_compiler_lock

    _use_numba(fresh=True)        # the digest covers what Numba's cache does not
    module = ir.Module("pagewalk_compiled")
    libraries = []
    context: Any = None
    for key in entries:
        kernel = _State.kernels[key]
        assert kernel.entry is not None
        source, namespace = _wrapper_source(kernel)
        exec(compile(source, f"<pagewalk {key} entry>", "exec"), namespace)  # noqa: S102
        options: dict[str, Any] = {"_nrt": False, "error_model": "numpy",
                                   "no_cpython_wrapper": True, "no_cfunc_wrapper": True}
        wrapper = njit(**options)(namespace["wrapper"])
        pointer: Any = types.CPointer(types.int64)    # type: ignore[no-untyped-call]
        numba_args = tuple(types.uint64 if kind == "u" else types.int64
                           if kind in _SCALARS else pointer for kind in kernel.entry) + (pointer,)
        wrapper.compile(numba_args)
        result = wrapper.overloads[numba_args]
        context = result.target_context
        libraries.append(result.library)
        # the C entry point: call the Numba-ABI function, return its int64 (it cannot fail)
        abi = context.call_conv.get_function_type(result.signature.return_type,
                                                  result.signature.args)
        callee = ir.Function(module, abi, result.fndesc.llvm_func_name)
        entry = ir.Function(module, ir.FunctionType(ir.IntType(64), [
            context.get_value_type(arg) for arg in result.signature.args]), _symbol(key))
        builder = ir.IRBuilder(entry.append_basic_block())
        value = builder.alloca(context.get_value_type(result.signature.return_type))
        status = builder.alloca(abi.args[1].pointee)
        builder.call(callee, [value, status, *entry.args])
        builder.ret(builder.load(value))
    library = context.codegen().create_library("pagewalk_compiled")
    library.add_ir_module(module)
    for linked in libraries:
        library.add_linking_library(linked)
    with global_compiler_lock:
        library.finalize()
        codegen: Any = library._codegen
        code: bytes = codegen._tm.emit_object(library._final_module)
        import llvmlite.binding as llvm
        machine = llvm.Target.from_default_triple().create_target_machine(
            cpu=codegen._get_host_cpu_name(), features=codegen._get_host_cpu_features(),
            opt=3, reloc="pic", codemodel="default")
        pic: bytes = machine.emit_object(library._final_module)
    missing = set(undefined_symbols(code)) - LIBC
    if missing:
        raise RuntimeError(f"compiled code calls outside itself: {sorted(missing)}")
    return code, pic


def _wrapper_source(kernel: Kernel) -> tuple[str, dict[str, Any]]:
    """The Python source of an entry's Numba function: arguments rebuilt from their
    descriptors, the result stored through ``out``."""
    namespace: dict[str, Any] = {"kernel": kernel.dispatcher, "np": np,
                                 "descriptor": _array_intrinsic("q", 1, from_pointer=True)}
    lines: list[str] = []
    params: list[str] = []
    call_args: list[str] = []
    assert kernel.entry is not None
    for index, kind in enumerate(kernel.entry):
        name = f"a{index}"
        params.append(name)
        if kind == "?":
            call_args.append(f"{name} != 0")
        elif kind in _SCALARS:
            call_args.append(name)
        else:
            lines.append(f"    d{index} = descriptor({name}, (1 << 30,))")
            expression, _ = _rebuild(kind, f"d{index}", 0, namespace)
            call_args.append(expression)
    lines += [f"    result = kernel({', '.join(call_args)})",
              "    results = descriptor(out, (2,))"]
    if kernel.result in ("i", "?"):
        lines.append("    results[0] = np.int64(result)")
    elif kernel.result == "u":
        lines.append("    results[0] = np.int64(np.uint64(result))")
    elif kernel.result == "ii":
        lines += ["    results[0] = np.int64(result[0])", "    results[1] = np.int64(result[1])"]
    source = f"def wrapper({', '.join([*params, 'out'])}):\n" + "\n".join(lines) \
        + "\n    return 0\n"
    return source, namespace


def _rebuild(kind: str, desc: str, at: int, namespace: dict[str, Any]) -> tuple[str, int]:
    """A Numba expression rebuilding the argument of ``kind`` from ``desc[at:]``, and the
    index after it."""
    if kind in _State.bundles:
        cls, fields = _State.bundles[kind]
        namespace[cls.__name__] = cls
        parts = []
        for field_kind in fields:
            part, at = _rebuild(field_kind, desc, at, namespace)
            parts.append(part)
        return f"{cls.__name__}({', '.join(parts)})", at
    if kind == "i":
        return f"{desc}[{at}]", at + 1
    if kind == "u":
        return f"np.uint64({desc}[{at}])", at + 1
    if kind == "?":
        return f"({desc}[{at}] != 0)", at + 1
    ndim = int(kind[1])
    helper = f"array_at_{_NUMBA_NAMES[kind[0]]}_{ndim}"
    namespace[helper] = _array_intrinsic(kind[0], ndim, from_pointer=False)
    shape = ", ".join(f"{desc}[{at + 1 + d}]" for d in range(ndim))
    return f"{helper}({desc}[{at}], ({shape},))", at + 1 + ndim


_INTRINSICS: dict[tuple[str, int, bool], Any] = {}


def _array_intrinsic(char: str, ndim: int, from_pointer: bool) -> Any:
    """An intrinsic: the C-contiguous array of ``shape`` at an address (an int64, or a
    pointer ``from_pointer``), owned by no one (Numba's carray needs its reference-counting
    runtime, which machine code loaded without Numba does not have)."""
    key = (char, ndim, from_pointer)
    if key in _INTRINSICS:
        return _INTRINSICS[key]
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic
    dtype = getattr(types, _NUMBA_NAMES[char])
    array_type = types.Array(dtype, ndim, "C")

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        where, shape = args
        data_type = context.get_data_type(dtype)
        if from_pointer:
            data = builder.bitcast(where, data_type.as_pointer())
        else:
            data = builder.inttoptr(where, data_type.as_pointer())
        helpers: Any = cgutils                   # untyped
        dims = helpers.unpack_tuple(builder, shape)
        itemsize = context.get_abi_sizeof(data_type)
        strides: list[Any] = []
        stride = context.get_constant(types.intp, itemsize)
        for dim in reversed(dims):               # C order: the last index varies fastest
            strides.insert(0, stride)
            stride = builder.mul(stride, dim)
        array = context.make_array(array_type)(context, builder)
        context.populate_array(array, data=data, shape=helpers.pack_array(builder, dims),
                               strides=helpers.pack_array(builder, strides),
                               itemsize=context.get_constant(types.intp, itemsize),
                               meminfo=None)
        return array._getvalue()

    def typer(typingctx: Any, where: Any, shape: Any) -> Any:
        return array_type(where, shape), codegen

    typer.__name__ = f"array_at_{_NUMBA_NAMES[char]}_{ndim}_{int(from_pointer)}"
    _INTRINSICS[key] = intrinsic(typer)
    return _INTRINSICS[key]


def undefined_symbols(code: bytes) -> list[str]:
    """Names an ELF64 object file uses but does not define (its symbol table's entries
    in section 0, SHN_UNDEF)."""
    import struct
    if code[:4] != b"\x7fELF" or code[4] != 2:
        raise RuntimeError("not an ELF64 object file")
    section_offset, = struct.unpack_from("<Q", code, 0x28)
    entry_size, count = struct.unpack_from("<HH", code, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", code, section_offset + i * entry_size)
                for i in range(count)]
    names = []
    for _, kind, _, _, offset, size, link, _, _, symbol_size in sections:
        if kind != 2:                                       # SHT_SYMTAB
            continue
        strings = sections[link][4]
        for k in range(size // symbol_size):
            name_at, _, _, section, _, _ = struct.unpack_from("<IBBHQQ", code,
                                                             offset + k * symbol_size)
            if section == 0 and name_at:
                end = code.index(b"\0", strings + name_at)
                names.append(code[strings + name_at:end].decode())
    return names
