"""A real program recorded under valgrind and replayed through the simulated kernel: its
/proc figures at exit agree with the same program run natively (ASLR off) within 5%
(issue 16). Skipped where valgrind or a C compiler is missing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from pagewalk.cli import main
from pagewalk.record.recorder import record
from pagewalk.record.replay import replay_recording

pytestmark = pytest.mark.skipif(shutil.which("valgrind") is None or shutil.which("gcc") is None
                                or shutil.which("setarch") is None,
                                reason="needs valgrind, gcc and setarch")

#: an 8 MiB anonymous buffer touched page by page, then malloc/free of 256 KiB blocks
#: (above the mmap threshold: each is an mmap and a munmap) and a growing heap
PROGRAM = r"""
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
int main(void) {
    size_t size = 8 << 20;
    volatile char *buffer = mmap(0, size, PROT_READ | PROT_WRITE,
                                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (size_t offset = 0; offset < size; offset += 4096)
        buffer[offset] = 1;
    for (int round = 0; round < 4; round++) {
        volatile char *block = malloc(256 << 10);
        for (size_t offset = 0; offset < (256 << 10); offset += 4096)
            block[offset] = (char)round;
        free((void *)block);
    }
    volatile char *small[64];
    for (int i = 0; i < 64; i++) {
        small[i] = malloc(16 << 10);
        small[i][0] = 1;
    }
    return small[3][0] - 1;
}
"""
CLOSE = ("minflt", "RssAnon", "VmPTE")


def test_replayed_figures_are_within_5_percent_of_the_native_run(program: Path,
                                                                   tmp_path: Path) -> None:
    """minflt (counted from the exec), RssAnon and VmPTE at exit: simulated vs native."""
    result = record([str(program)], tmp_path / "touch.pwr", compare=True)
    native = result.native.figures
    simulated = replay_recording(tmp_path / "touch.pwr")
    assert result.end.exit_code == 0 and result.end.syscalls > 10
    assert not simulated.diverged
    assert native["RssAnon"] >= 8 << 10          # the buffer alone is 8 MiB
    for key in CLOSE:
        assert abs(simulated.figures[key] - native[key]) <= 0.05 * native[key], \
            (key, native, simulated.figures)
    # every access went through the MMU once, and once more after each fault (the
    # faulting instruction restarts)
    translated = simulated.accesses - simulated.untranslated
    assert simulated.tlb["tlb_accesses"] == translated + simulated.figures["minflt"]


def test_almost_every_recorded_access_lands_in_a_replayed_mapping(program: Path,
                                                                  tmp_path: Path) -> None:
    """Fewer than 2% of the recorded accesses fall outside every replayed mapping: the
    client stack valgrind puts near 0x1fff000000 is mapped back onto the native stack
    (here 0.3% fall outside: the pages of valgrind's preload library)."""
    record([str(program)], tmp_path / "touch.pwr", compare=False)
    simulated = replay_recording(tmp_path / "touch.pwr")
    assert simulated.untranslated < simulated.accesses // 50


def test_replay_command_prints_the_proc_fields_as_json(program: Path, tmp_path: Path) -> None:
    """``pagewalk replay REC --json`` and THP always vs never: the 8 MiB buffer is 2 MiB
    aligned in part, so THP always maps AnonHugePages with one fault per 2 MiB (VmPTE stays:
    each huge PMD keeps a deposited page table, counted in nr_ptes)."""
    record([str(program)], tmp_path / "touch.pwr", compare=False)
    runner = CliRunner()
    docs = {}
    for mode in ("never", "always"):
        out = runner.invoke(main, ["replay", str(tmp_path / "touch.pwr"), "--thp", mode,
                                   "--json"])
        assert out.exit_code == 0, out.output
        docs[mode] = json.loads(out.stdout)
    assert docs["never"]["AnonHugePages"] == 0
    assert docs["always"]["AnonHugePages"] >= 2048
    assert docs["always"]["minflt"] < docs["never"]["minflt"] - 500
    assert docs["always"]["VmPTE"] == docs["never"]["VmPTE"]
    assert set(docs["never"]) >= {"minflt", "RssAnon", "RssFile", "VmPTE", "AnonHugePages",
                                  "stlb_misses"}


def test_replay_of_a_missing_file_is_one_line_and_status_2(tmp_path: Path) -> None:
    out = CliRunner().invoke(main, ["replay", str(tmp_path / "nothing.pwr")])
    assert out.exit_code == 2
    assert "no such recording" in out.output and "Traceback" not in out.output
