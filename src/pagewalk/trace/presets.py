"""Named translation models (``--tlb NAME``) and model files (``--tlb FILE.yaml``).

A model file gives the TLB arrays (hw/tlb.py ``TlbArray``: level, which accesses they
serve, page sizes, entries, ways), the page-walk-cache sizes (hw/pwc.py) and the paging
depth. Presets live in ``presets/*.yaml`` beside this module: ``reference`` (the fixed
model of docs/trace-model.md), and real processors with the figures their vendors
publish, cited in each file: ``skylake``, ``haswell`` (Intel Optimization Reference
Manual) and ``zen`` (AMD Software Optimization Guide for Family 17h). Every error names
the file and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pagewalk.errors import ConfigError, Location
from pagewalk.hw.pwc import PwcGeometry
from pagewalk.hw.tlb import SERVES, TlbArray, TlbGeometry
from pagewalk.trace.replay import REFERENCE_MODEL, TraceModel
from pagewalk.units import parse_size

PRESET_DIR = Path(__file__).with_name("presets")
_SHIFT_OF_SIZE = {4096: 12, 2 << 20: 21, 1 << 30: 30}
_TOP_KEYS = {"name", "description", "source", "paging_levels", "tlb", "pwc"}
_ARRAY_KEYS = {"name", "level", "serves", "pages", "entries", "ways"}
_PWC_KEYS = {"pml5e", "pml4e", "pdpte", "pde"}


def preset_names() -> list[str]:
    """The shipped presets, ``reference`` first."""
    names = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
    return sorted(names, key=lambda name: name != "reference")


def load_model(spec: str) -> TraceModel:
    """A preset by name, or a model file by path. ``reference`` is REFERENCE_MODEL, the
    model presets/reference.yaml describes (tests check they agree), without reading YAML
    (a tenth of `pagewalk trace`'s start-up)."""
    if spec == "reference":
        return REFERENCE_MODEL
    import yaml
    path = Path(spec)
    if not path.suffix and (PRESET_DIR / f"{spec}.yaml").is_file():
        path = PRESET_DIR / f"{spec}.yaml"
    if not path.is_file():
        raise ConfigError(f"no such TLB model {spec!r} (presets: {', '.join(preset_names())}; "
                          "or a YAML file)", Location(field="tlb"))
    try:
        data = yaml.safe_load(_model_text(path))
    except yaml.YAMLError as err:
        raise ConfigError(f"not valid YAML: {err}".replace("\n", " "),
                          Location(file=str(path))) from None
    return parse_model(data, str(path))


def _model_text(path: Path) -> str:
    """A model file's text; ConfigError naming it if it cannot be read or is not text
    (a binary file: a NUL byte, or bytes that are not UTF-8)."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read the TLB model: {err.strerror}",
                          Location(file=str(path))) from None
    try:
        if b"\0" not in data:
            return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    raise ConfigError("not a TLB model file: binary data, not YAML text",
                      Location(file=str(path)))


def parse_model(data: Any, file: str = "<model>") -> TraceModel:
    """Validate a model mapping (the YAML document) into a TraceModel."""
    where = _Where(file)
    if not isinstance(data, dict):
        raise where.error("a model file is a mapping with keys " + ", ".join(sorted(_TOP_KEYS)))
    where.no_unknown(data, _TOP_KEYS, "")
    levels = data.get("paging_levels", 4)
    if levels not in (4, 5):
        raise where.error("must be 4 or 5", "paging_levels")
    arrays_data = data.get("tlb")
    if not isinstance(arrays_data, list) or not arrays_data:
        raise where.error("a list of TLB arrays is required", "tlb")
    arrays = tuple(_parse_array(item, where, f"tlb[{i}]") for i, item in enumerate(arrays_data))
    name = str(data.get("name", Path(file).stem))
    geometry = TlbGeometry(name, arrays)
    try:
        geometry.check()
    except ValueError as err:
        raise where.error(str(err), "tlb") from None
    return TraceModel(name=name, tlb=geometry, pwc=_parse_pwc(data.get("pwc", {}), where),
                      paging_levels=levels, description=str(data.get("description", "")))


def _parse_array(item: Any, where: _Where, field: str) -> TlbArray:
    if not isinstance(item, dict):
        raise where.error("each TLB array is a mapping", field)
    where.no_unknown(item, _ARRAY_KEYS, field)
    for key in ("level", "serves", "pages", "entries", "ways"):
        if key not in item:
            raise where.error("is required", f"{field}.{key}")
    pages = item["pages"] if isinstance(item["pages"], list) else [item["pages"]]
    shifts = []
    for size in pages:
        try:
            shifts.append(_SHIFT_OF_SIZE[parse_size(size)])
        except (ValueError, KeyError):
            raise where.error(f"page sizes are 4KiB, 2MiB or 1GiB, got {size!r}",
                              f"{field}.pages") from None
    for key in ("level", "entries", "ways"):
        if not isinstance(item[key], int) or isinstance(item[key], bool):
            raise where.error(f"must be an integer, got {item[key]!r}", f"{field}.{key}")
    if item["serves"] not in SERVES:
        raise where.error(f"must be one of {', '.join(sorted(SERVES))}", f"{field}.serves")
    array = TlbArray(str(item.get("name", field)), item["level"], item["serves"], tuple(shifts),
                     item["entries"], item["ways"])
    try:
        array.check()
    except ValueError as err:
        raise where.error(str(err), field) from None
    return array


def _parse_pwc(data: Any, where: _Where) -> PwcGeometry:
    if not isinstance(data, dict):
        raise where.error("a mapping of pml5e/pml4e/pdpte/pde entries", "pwc")
    where.no_unknown(data, _PWC_KEYS, "pwc")
    counts = {}
    for key, default in (("pml5e", 0), ("pml4e", 4), ("pdpte", 4), ("pde", 32)):
        value = data.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise where.error(f"must be a number of entries >= 0, got {value!r}", f"pwc.{key}")
        counts[key] = value
    return PwcGeometry(counts["pml5e"], counts["pml4e"], counts["pdpte"], counts["pde"])


class _Where:
    """Builds ConfigErrors located in one model file."""

    def __init__(self, file: str) -> None:
        self.file = file

    def error(self, message: str, field: str | None = None) -> ConfigError:
        return ConfigError(message, Location(file=self.file, field=field or None))

    def no_unknown(self, mapping: dict[str, Any], known: set[str], field: str) -> None:
        unknown = sorted(set(map(str, mapping)) - known)
        if unknown:
            prefix = f"{field}." if field else ""
            raise self.error(f"unknown key (known: {', '.join(sorted(known))})",
                             prefix + unknown[0])
