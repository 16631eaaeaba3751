"""The pictures of the guided tour (docs/tour.md, docs/tour.ja.md), one or more per concept.

Every figure is what pagewalk computes for the tour's built-in scenarios (`pagewalk
examples | grep tour-`): the reports of `pagewalk run`, the walks of `pagewalk translate`,
the page-table counts of `pagewalk pagetable-cost` and the replays of `pagewalk trace`,
taken through the Python API, and drawn with Matplotlib. Regenerate them all with

    python docs/tour/make_pictures.py            # into docs/tour/
    python docs/tour/make_pictures.py OUT_DIR    # elsewhere

(needs Matplotlib: `pip install '.[sweep]'`). tests/tour/test_tour.py runs it into a
temporary directory and checks that it writes exactly the pictures the tours show.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")   # files only, no display

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, Rectangle

import pagewalk
from pagewalk.api import load
from pagewalk.explain.cost import arithmetic_cost
from pagewalk.explain.state import find_process, fresh_run, run_to_label
from pagewalk.explain.translate import explain_translation
from pagewalk.scenario.examples import sample_trace

KIB, MIB, GIB, TIB, PIB = 1 << 10, 1 << 20, 1 << 30, 1 << 40, 1 << 50
DPI = 90
BLUE, ORANGE, GREEN, GREY, RED = "#3b6ea5", "#e08a2c", "#4a9a5b", "#b9b9b9", "#c0392b"


def _save(fig: Figure, out: Path, name: str) -> Path:
    path = out / name
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _measure(report: Any, label: str) -> Any:
    return next(m for m in report.measurements if m.label == label)


# -- 1. virtual and physical addresses --------------------------------------------------------

def virtual_to_physical(out: Path) -> Path:
    """The 16 pages of `buf` in main and child, after the fork (shared, copy-on-write) and
    after the child's write (its own frames), each virtual page joined to its frame."""
    scenario = load("tour-two-processes")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    for ax, label, title in ((axes[0], "after-fork", "after fork: shared, read-only"),
                             (axes[1], "after-child-write", "after the child's write")):
        state = run_to_label(scenario, label)
        start, length = state.maps["main"]["buf"]
        frames: dict[str, list[int]] = {}
        for name in ("main", "child"):
            task = find_process(state, name)
            frames[name] = [explain_translation(state.kernel, task, start + offset).paddr or 0
                            for offset in range(0, length, 4096)]
        physical = sorted(set(frames["main"]) | set(frames["child"]))
        low, high = physical[0], physical[-1] + 4096
        span = max(high - low, 16 * 4096)

        def height(paddr: int, low: int = low, span: int = span) -> float:
            return 15.5 - 16 * (paddr + 2048 - low) / span     # low addresses on top

        for i in range(16):
            ax.text(-0.05, 15 - i, f"{start + i * 4096:#x}", ha="right", va="center",
                    fontsize=6.5, color=BLUE)
            ax.text(2.05, 15 - i, f"{start + i * 4096:#x}", ha="left", va="center",
                    fontsize=6.5, color=ORANGE)
            ax.plot([0, 0.9], [15 - i, height(frames["main"][i])], color=BLUE, lw=0.8)
            shared = frames["child"][i] == frames["main"][i]
            ax.plot([2, 1.1], [15 - i, height(frames["child"][i])], color=ORANGE, lw=0.8,
                    ls="--" if shared else "-")
        ax.add_patch(Rectangle((0.9, -0.5), 0.2, 16, fill=False, ec="black", lw=0.5))
        for paddr in physical:
            ax.add_patch(Rectangle((0.9, height(paddr) - 8 / span * 4096), 0.2,
                                   16 * 4096 / span, color=GREY, ec="white", lw=0.2))
        for run in _runs(physical):
            for paddr, dy in ((run[0], 0.55), (run[-1], -0.95)):
                ax.text(1, height(paddr) + dy, f"{paddr:#x}", ha="center", fontsize=6,
                        bbox={"color": "white", "pad": 0.5})
        ax.set_xlim(-0.9, 2.9)
        ax.set_ylim(-1.6, 17.6)
        ax.text(-0.05, 17.1, "main: virtual", ha="right", color=BLUE, fontsize=8)
        ax.text(1, 17.1, f"physical ({len(physical)} frames)", ha="center", fontsize=8)
        ax.text(2.05, 17.1, "child: virtual", ha="left", color=ORANGE, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.suptitle("tour-two-processes: the same 16 virtual pages, one set of frames, then two",
                 fontsize=10)
    return _save(fig, out, "01-virtual-to-physical.png")


def _runs(frames: list[int]) -> list[list[int]]:
    """Sorted frame addresses cut into physically contiguous runs."""
    runs: list[list[int]] = []
    for paddr in frames:
        if runs and paddr == runs[-1][-1] + 4096:
            runs[-1].append(paddr)
        else:
            runs.append([paddr])
    return runs


# -- 2. the walk ---------------------------------------------------------------------------------

def page_walk(out: Path) -> Path:
    """The walk of `buf+0x3000` in main: CR3, one table per level, the index each 9-bit
    field of the address selects, and the page."""
    walk = pagewalk.translate("buf+0x3000", scenario="tour-two-processes").to_dict()
    vaddr = int(walk["vaddr"], 16)
    fig, ax = plt.subplots(figsize=(10, 4.2))
    fields = [(47, 39), (38, 30), (29, 21), (20, 12), (11, 0)]
    colors = [BLUE, GREEN, ORANGE, RED, GREY]
    for i, ((high, low), color) in enumerate(zip(fields, colors)):
        value = (vaddr >> low) & ((1 << (high - low + 1)) - 1)
        ax.add_patch(Rectangle((0.5 + i * 1.6, 4.3), 1.5, 0.6, color=color, alpha=0.35))
        ax.text(1.25 + i * 1.6, 4.6, f"[{high}:{low}]\n{value}" if i < 4 else
                f"[11:0]\noffset {value:#x}", ha="center", va="center", fontsize=8)
    ax.text(4.5, 5.15, f"virtual address {vaddr:#x} (main, tour-two-processes)", ha="center",
            fontsize=9)
    ax.add_patch(Rectangle((-1.3, 1.6), 1.2, 0.9, color=GREY, alpha=0.5))
    ax.text(-0.7, 2.05, f"CR3\n{walk['cr3']}", ha="center", va="center", fontsize=7.5)
    x = 0.5
    for i, (level, color) in enumerate(zip(walk["walk"], colors)):
        ax.add_patch(Rectangle((x, 0.6), 1.5, 2.9, fill=False, ec=color, lw=1.5))
        ax.add_patch(Rectangle((x, 1.85), 1.5, 0.4, color=color, alpha=0.35))
        ax.text(x + 0.75, 3.3, f"{level['level']} table", ha="center", fontsize=8)
        ax.text(x + 0.75, 0.8, f"at {level['table_paddr']}", ha="center", fontsize=6.5)
        ax.text(x + 0.75, 2.05, f"[{level['index']}] {level['entry'][-8:]}", ha="center",
                va="center", fontsize=7)
        ax.add_patch(FancyArrowPatch((1.25 + i * 1.6, 4.3), (x + 0.75, 2.3),
                                     arrowstyle="->", color=color, lw=0.8,
                                     mutation_scale=8))
        start = (-0.1, 2.05) if i == 0 else (x - 0.1, 2.05)
        ax.add_patch(FancyArrowPatch(start, (x, 2.05), arrowstyle="->", lw=1,
                                     mutation_scale=10))
        x += 1.6
    ax.add_patch(Rectangle((x, 1.3), 1.5, 1.5, color=GREY, alpha=0.5))
    ax.text(x + 0.75, 2.05, f"4 KiB page\n{walk['walk'][-1]['target_paddr']}", ha="center",
            va="center", fontsize=7.5)
    ax.add_patch(FancyArrowPatch((x - 0.1, 2.05), (x, 2.05), arrowstyle="->", lw=1,
                                 mutation_scale=10))
    ax.text(4.5, 0.05, f"{walk['refs']} entries read, each an 8-byte word in a 4 KiB "
            "frame the kernel allocated;\nan entry is the next frame's address | flags: "
            "0x67 = P RW US A D, the PTE's 0x65 lacks RW (copy-on-write since the fork)",
            ha="center", fontsize=7.5)
    ax.set_xlim(-1.5, x + 1.7)
    ax.set_ylim(-0.5, 5.4)
    ax.axis("off")
    return _save(fig, out, "02-page-walk.png")


# -- 3. the TLB, CR3 and PCIDs -------------------------------------------------------------------

def tlb_pcid(out: Path) -> Path:
    """Page walks and TLB hits of the four turns each process takes (64 reads), with and
    without PCIDs: the change from measure after-child-write to after-turns."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    bars = []
    for scenario, tag in (("tour-two-processes", "PCID"),
                          ("tour-two-processes-no-pcid", "no PCID")):
        report = pagewalk.run(scenario)
        before, after = _measure(report, "after-child-write"), _measure(report, "after-turns")
        for proc in ("main", "child"):
            walks = after.processes[proc]["tlb_walks"] - before.processes[proc]["tlb_walks"]
            hits = after.processes[proc]["tlb_l1_hits"] - before.processes[proc]["tlb_l1_hits"]
            bars.append((f"{proc}\n{tag}", walks, hits))
    xs = range(len(bars))
    ax.bar([x - 0.2 for x in xs], [b[1] for b in bars], 0.4, label="page walks", color=RED)
    ax.bar([x + 0.2 for x in xs], [b[2] for b in bars], 0.4, label="L1 TLB hits", color=GREEN)
    for x, (_, walks, hits) in zip(xs, bars):
        ax.text(x - 0.2, walks + 1, str(walks), ha="center", fontsize=8)
        ax.text(x + 0.2, hits + 1, str(hits), ha="center", fontsize=8)
    ax.set_xticks(list(xs), [b[0] for b in bars], fontsize=8)
    ax.set_ylabel("of 64 reads (4 turns x 16 pages)")
    ax.set_ylim(0, 75)
    ax.set_title("Two processes take turns: with PCIDs a CR3 load keeps the TLB", fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, out, "03-tlb-pcid.png")


# -- 4. protection and the error code -------------------------------------------------------------

ERROR_BITS = [(0, "P"), (1, "W"), (2, "U"), (3, "RSVD"), (4, "I"), (5, "PK"), (6, "SS")]


def error_codes(out: Path) -> Path:
    """The page-fault error code the MMU pushes for four accesses, bit by bit."""
    cases = [
        ("write to a read-only page\n(tour-protection, read-only)",
         pagewalk.translate("data", scenario="tour-protection", at="read-only", access="write")),
        ("read of a PROT_NONE page\n(tour-protection, prot-none)",
         pagewalk.translate("data", scenario="tour-protection", at="prot-none")),
        ("first read of an untouched page\n(tour-demand-paging, after-mmap)",
         pagewalk.translate("buf", scenario="tour-demand-paging", at="after-mmap")),
        ("user read of kernel text\n(fresh machine, no PTI)",
         pagewalk.translate(0xFFFFFFFF81000000)),
    ]
    fig, ax = plt.subplots(figsize=(9, 3.4))
    for row, (title, walk) in enumerate(cases):
        code = walk.to_dict()["error_code"]
        y = len(cases) - 1 - row
        ax.text(-0.2, y + 0.5, title, ha="right", va="center", fontsize=8)
        for col, (bit, name) in enumerate(reversed(ERROR_BITS)):
            on = bool(code >> bit & 1)
            ax.add_patch(Rectangle((col, y + 0.1), 0.9, 0.8, color=RED if on else GREY,
                                   alpha=0.85 if on else 0.3))
            ax.text(col + 0.45, y + 0.5, f"{name}\n{int(on)}", ha="center", va="center",
                    fontsize=7.5)
        ax.text(len(ERROR_BITS) + 0.2, y + 0.5, f"{code:#x}", va="center", fontsize=9)
    ax.set_xlim(-4.8, len(ERROR_BITS) + 1)
    ax.set_ylim(0, len(cases) + 0.3)
    ax.text(len(ERROR_BITS) / 2, len(cases) + 0.1, "page-fault error code (bit 6 ... bit 0)",
            ha="center", fontsize=9)
    ax.axis("off")
    return _save(fig, out, "04-error-codes.png")


# -- 5. demand paging -----------------------------------------------------------------------------

def demand_paging(out: Path) -> Path:
    """VmSize, VmRSS and faults of tour-demand-paging at its three measures."""
    report = pagewalk.run("tour-demand-paging")
    labels = [m.label for m in report.measurements]
    main = [m.processes["main"] for m in report.measurements]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    xs = range(len(labels))
    left.bar([x - 0.2 for x in xs], [p["VmSize"] / 1024 for p in main], 0.4, label="VmSize",
             color=GREY)
    left.bar([x + 0.2 for x in xs], [p["VmRSS"] / 1024 for p in main], 0.4, label="VmRSS",
             color=BLUE)
    left.set_xticks(list(xs), labels, fontsize=8)
    left.set_ylabel("MiB")
    left.legend(fontsize=8)
    left.set_title("16 MiB mapped: addresses first, memory at the first write", fontsize=9)
    right.plot(list(xs), [p["minflt"] for p in main], marker="o", color=RED)
    for x, p in zip(xs, main):
        right.annotate(f"{p['minflt']:,}", (x, p["minflt"]), textcoords="offset points",
                       xytext=(0, 6), ha="center", fontsize=8)
    right.set_xticks(list(xs), labels, fontsize=8)
    right.set_ylabel("minor faults")
    right.set_ylim(-500, 9500)
    right.set_title("one fault per page to read (zero page), one more to write", fontsize=9)
    return _save(fig, out, "05-demand-paging.png")


# -- 6. the two halves and PTI --------------------------------------------------------------------

def address_halves(out: Path) -> Path:
    """The 512 entries of main's top-level table(s): without PTI one PGD maps both halves
    (the kernel half supervisor-only); with PTI the user-mode PGD has an empty kernel half."""
    fresh = fresh_run()
    pti = run_to_label(load("tour-pti"), None)
    rows = [("PGD (no PTI)", fresh, 0), ("PTI: kernel PGD", pti, 0), ("PTI: user PGD", pti, 1)]
    fig, ax = plt.subplots(figsize=(10, 3.2))
    for r, (title, state, page) in enumerate(rows):
        mm = state.kernel.tasks["main"].mm
        words = state.kernel.physmem.frame_words(mm.pgd_pfn + page)
        y = len(rows) - 1 - r
        ax.add_patch(Rectangle((0, y + 0.15), 512, 0.55, fill=False, ec="black", lw=0.5))
        for index in range(512):
            entry = int(words[index])
            if not entry & 1:
                continue
            color = BLUE if entry & 4 else ORANGE      # _PAGE_USER
            ax.add_patch(Rectangle((index - 2.5, y + 0.15), 5, 0.55, color=color, lw=0))
            nx = " NX" if entry >> 63 else ""
            left = index % 256 < 128                  # labels point into the strip
            ax.text(index - 2.5 if left else index + 2.5, y + 0.75, f"{index}{nx}",
                    ha="left" if left else "right", fontsize=6.5)
        ax.text(-6, y + 0.42, title, ha="right", va="center", fontsize=8)
    ax.axvline(256, color="black", lw=0.8, ls=":")
    ax.text(128, 3.15, "user half: 0x0 - 0x00007fffffffffff (128 TiB), entries 0-255",
            ha="center", fontsize=7.5)
    ax.text(384, 3.15, "kernel half: 0xffff800000000000 - (128 TiB), entries 256-511",
            ha="center", fontsize=7.5)
    ax.add_patch(Rectangle((60, -0.55), 8, 0.3, color=BLUE))
    ax.text(70, -0.4, "present, user (US=1)", va="center", fontsize=7.5)
    ax.add_patch(Rectangle((200, -0.55), 8, 0.3, color=ORANGE))
    ax.text(210, -0.4, "present, supervisor only: 273 direct map, 511 kernel text",
            va="center", fontsize=7.5)
    ax.set_xlim(-75, 520)
    ax.set_ylim(-0.7, 3.4)
    ax.axis("off")
    return _save(fig, out, "06-address-halves.png")


# -- 7. what page tables cost --------------------------------------------------------------------

def pagetable_cost(out: Path) -> Path:
    """Flat against hierarchical for the 4- and 5-level address spaces, and the page tables
    tour-pagetables really allocates for dense and sparse memory."""
    four, five = arithmetic_cost(128 * TIB, 4096, 4), arithmetic_cost(64 * PIB, 4096, 5)
    report = pagewalk.run("tour-pagetables")
    dense, sparse = _measure(report, "dense-1g"), _measure(report, "sparse-1g")
    dense_tables = dense.processes["main"]["VmPTE"] * KIB
    sparse_tables = (sparse.processes["main"]["VmPTE"] - dense.processes["main"]["VmPTE"]) * KIB
    sparse_data = (sparse.processes["main"]["VmRSS"] - dense.processes["main"]["VmRSS"]) * KIB
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8),
                                      gridspec_kw={"width_ratios": [1.1, 1]})
    names = ["flat\n128 TiB", "4 levels,\nall mapped", "flat\n64 PiB", "5 levels,\nall mapped",
             "4 levels,\none page"]
    sizes = [four.flat_size, four.hierarchical_size, five.flat_size, five.hierarchical_size,
             4 * 4096]
    left.bar(range(5), sizes, color=[RED, BLUE, RED, BLUE, GREEN])
    left.set_yscale("log")
    left.set_xticks(range(5), names, fontsize=7.5)
    for x, size in enumerate(sizes):
        left.text(x, size * 1.4, _size(size), ha="center", fontsize=7.5)
    left.set_ylim(1e3, 1e16)
    left.set_ylabel("bytes of page tables")
    left.set_title("the arithmetic (pagetable-cost --address-space)", fontsize=9)
    groups = [("dense: 1 GiB written", 1 * GIB, dense_tables),
              ("sparse: 1 write per 2 MiB", sparse_data, sparse_tables)]
    xs = range(len(groups))
    right.bar([x - 0.2 for x in xs], [g[1] for g in groups], 0.4, label="data (VmRSS)",
              color=GREY)
    right.bar([x + 0.2 for x in xs], [g[2] for g in groups], 0.4, label="page tables (VmPTE)",
              color=BLUE)
    for x, (_, data, tables) in zip(xs, groups):
        right.text(x - 0.2, data * 1.3, _size(data), ha="center", fontsize=7.5)
        right.text(x + 0.2, tables * 1.3, _size(tables), ha="center", fontsize=7.5)
    right.set_yscale("log")
    right.set_ylim(1e5, 1e10)
    right.set_xticks(list(xs), [g[0] for g in groups], fontsize=8)
    right.legend(fontsize=8, loc="upper right")
    right.set_title("tour-pagetables: what the kernel allocates", fontsize=9)
    return _save(fig, out, "07-pagetable-cost.png")


def _size(size: int) -> str:
    for unit, name in ((PIB, "PiB"), (TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")):
        if size >= unit:
            return f"{size / unit:.4g} {name}"
    return f"{size} B"


# -- 8. kbpgtbl and PageTables as a program grows -------------------------------------------------

def _view_field(text: str, name: str) -> int:
    """``Name:  123 kB`` of /proc/meminfo, or the column ``name`` of a `sar -r ALL` row."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(name + ":"):
            return int(line.split()[1])
        columns = line.split()
        if name in columns and i + 1 < len(lines):
            return int(lines[i + 1].split()[columns.index(name)])
    raise KeyError(name)


def pagetables_grow(out: Path) -> Path:
    """sar's kbpgtbl, /proc/meminfo PageTables and VmPTE at each measure of tour-pagetables,
    against the memory written."""
    report = pagewalk.run("tour-pagetables", show=["sar", "/proc/meminfo"])
    rss = [m.processes["main"]["VmRSS"] / 1024 for m in report.measurements]
    kbpgtbl = [_view_field(m.views["sar"], "kbpgtbl") for m in report.measurements]
    pagetables = [_view_field(m.views["/proc/meminfo"], "PageTables")
                  for m in report.measurements]
    vmpte = [m.processes["main"]["VmPTE"] for m in report.measurements]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    xs = range(len(report.measurements))
    ax.plot(list(xs), kbpgtbl, marker="o", color=BLUE, label="sar -r ALL kbpgtbl")
    ax.plot(list(xs), pagetables, marker="x", ls="", color=ORANGE, ms=9,
            label="/proc/meminfo PageTables")
    ax.plot(list(xs), vmpte, marker="s", ls="--", color=GREEN, label="VmPTE of main (change)")
    for x, value in zip(xs, kbpgtbl):
        ax.annotate(f"{value:,} kB", (x, value), textcoords="offset points", xytext=(0, 8),
                    ha="center", fontsize=7.5)
    ax.set_xticks(list(xs), [f"{m.label}\nRSS {r:,.0f} MiB"
                             for m, r in zip(report.measurements, rss)], fontsize=7)
    ax.set_ylabel("kB of page tables")
    ax.set_ylim(-200, 4800)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("tour-pagetables: page tables grow with the memory touched, and more when "
                 "it is sparse", fontsize=9)
    return _save(fig, out, "08-pagetables-grow.png")


# -- 9. hugetlb ------------------------------------------------------------------------------------

def hugetlb_pool(out: Path) -> Path:
    """The 16-page pool of tour-hugetlb at each measure: in use, reserved, free."""
    report = pagewalk.run("tour-hugetlb")
    labels, used, reserved, free = [], [], [], []
    for m in report.measurements:
        total, free_now, rsvd = (m.system["HugePages_Total"], m.system["HugePages_Free"],
                                 m.system["HugePages_Rsvd"])
        labels.append(m.label)
        used.append(total - free_now)
        reserved.append(rsvd)
        free.append(free_now - rsvd)
    fig, ax = plt.subplots(figsize=(8, 3.4))
    xs = list(range(len(labels)))
    ax.bar(xs, used, color=BLUE, label="in use (Total - Free)")
    ax.bar(xs, reserved, bottom=used, color=ORANGE, label="reserved, not yet faulted (Rsvd)")
    ax.bar(xs, free, bottom=[u + r for u, r in zip(used, reserved)], color=GREY,
           label="free for anyone (Free - Rsvd)")
    for x, u, r in zip(xs, used, reserved):
        ax.text(x, 16.4, f"used {u}, rsvd {r}", ha="center", fontsize=7.5)
    ax.set_xticks(xs, labels, fontsize=8)
    ax.set_ylabel("2 MiB huge pages")
    ax.set_ylim(0, 19)
    ax.legend(fontsize=7.5, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set_title("tour-hugetlb: the pool of 16 x 2 MiB (HugePages_* of /proc/meminfo)",
                 fontsize=9)
    return _save(fig, out, "09-hugetlb-pool.png")


# -- 10. THP -------------------------------------------------------------------------------------

def thp_modes(out: Path) -> Path:
    """For each setting of enabled: page walks and STLB miss rate of the sample trace over
    the pages tour-thp got, and the memory it cost."""
    report = pagewalk.run("tour-thp")
    trace = sample_trace("mixed-200k.pwt")
    modes = ["never", "madvise", "always"]
    stats = [pagewalk.replay(str(trace), scenario="tour-thp", at=mode) for mode in modes]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    walks = [s.walks for s in stats]
    left.bar(modes, walks, color=[RED, ORANGE, GREEN])
    for x, s in enumerate(stats):
        left.text(x, s.walks * 1.04, f"{s.walks:,} walks\nSTLB miss "
                  f"{s.to_dict()['stlb_miss_rate']:.1%}", ha="center", fontsize=7.5)
    left.set_ylim(0, max(walks) * 1.3)
    left.set_ylabel("page walks, 200,000 accesses")
    left.set_title("mixed-200k.pwt replayed on tour-thp's pages", fontsize=9)
    rss = [_measure(report, mode).processes["main"]["VmRSS"] / 1024 for mode in modes]
    huge = [_measure(report, mode).processes["main"]["AnonHugePages"] / 1024 for mode in modes]
    xs = range(len(modes))
    right.bar([x - 0.2 for x in xs], rss, 0.4, color=BLUE, label="VmRSS")
    right.bar([x + 0.2 for x in xs], huge, 0.4, color=ORANGE, label="AnonHugePages")
    for x, value in zip(xs, rss):
        right.text(x - 0.2, value + 20, f"{value:,.0f}", ha="center", fontsize=7.5)
    right.set_xticks(list(xs), modes)
    right.set_ylabel("MiB")
    right.set_ylim(0, 1300)
    right.legend(fontsize=8, loc="upper left")
    right.set_title("what each setting costs in memory", fontsize=9)
    return _save(fig, out, "10-thp-modes.png")


PICTURES: list[Callable[[Path], Path]] = [
    virtual_to_physical, page_walk, tlb_pcid, error_codes, demand_paging, address_halves,
    pagetable_cost, pagetables_grow, hugetlb_pool, thp_modes,
]


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else Path(__file__).resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    for draw in PICTURES:
        path = draw(out)
        print(f"{path} ({path.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
