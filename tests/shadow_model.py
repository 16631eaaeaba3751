"""A shadow model of user memory, kept apart from the simulator, that says what Linux does.

The strict state machine (tests/test_strict_state_machine.py) asks this model, before
every system call or access, what the kernel answers: success, the exact errno, or the
exact signal at the exact address; and, for every byte read, its value. The model never
looks at the simulator's state. It keeps, per process and per 4 KiB page of the arena:
mapped or not, prot, kind (private anonymous, shared anonymous, hugetlb 2 MiB), the
shared object (shmem or hugetlbfs inode) and index, and the contents; for the hugetlb
pool the kernel's own counters (free_huge_pages, resv_huge_pages) and reservation maps;
for hugetlb VMAs their boundaries (mprotect's EINVAL depends on them).

The rules, with the kernel function each follows:

* mmap: ksys_mmap_pgoff (hugetlb length ALIGNed up), do_mmap (len 0 EINVAL,
  __get_unmapped_area: len > TASK_SIZE ENOMEM, MAP_FIXED unaligned EINVAL, hugetlb
  MAP_FIXED off a huge page EINVAL; MAP_FIXED_NOREPLACE EEXIST; then MAP_TYPE EINVAL),
  __mmap_region (splitting a hugetlb VMA off a huge page boundary EINVAL,
  hugetlb_reserve_pages -> gather_surplus_pages ENOMEM), MAP_POPULATE
  (populate_vma_page_range: write fault for private writable, read otherwise, nothing
  for PROT_NONE or execute-only; a hugetlb fault that fails stops that VMA).
* munmap: do_vmi_munmap (EINVAL: unaligned start, zero length, beyond TASK_SIZE) and
  hugetlb_vm_op_split (EINVAL: a cut inside a huge page); an unmapped range is fine.
  vms_gather_munmap_vmas and vma_modify split at the start before the end: when the end
  split fails, the split at the start stays (it decides later mprotect EINVALs).
* mprotect: do_mprotect_pkey VMA by VMA: EINVAL unaligned start; ENOMEM when the start
  is unmapped or at the first hole, after the VMAs before it changed; EINVAL at a hugetlb
  VMA that must be split off a huge page boundary (mprotect_fixup splits only when the
  flags change), after the VMAs before it changed.
* madvise: madvise_walk_vmas: holes make ENOMEM after the rest was done; an EINVAL from
  a VMA stops the walk there (madvise_dontneed_free_valid_vma: hugetlb start not huge
  page aligned for DONTNEED, hugetlb for FREE; madvise_free_single_vma: FREE needs
  vma_is_anonymous). DONTNEED on hugetlb zaps whole huge pages only (the end rounds down).
* accesses: do_user_addr_fault: no VMA or access_error -> SIGSEGV; PROT_WRITE implies
  read on x86; PROT_EXEC alone is execute-only (the execute-only protection key of this
  PKU CPU): a read is SIGSEGV. hugetlb_no_page / hugetlb_wp -> alloc_hugetlb_folio:
  without a reservation a page is taken only while free_huge_pages != resv_huge_pages
  (available_huge_pages), else SIGBUS (the pool is never overcommitted here).
* contents: private pages are copied on write after fork; shared mappings share the
  inode's pages; untouched memory reads 0; MADV_DONTNEED zero-fills private memory and
  leaves shared memory in its inode; MADV_FREE makes an exclusive private page's bytes
  unspecified until written; a `touch` write stores an unspecified byte.

Where the model would have to follow the kernel into a corner it does not model (the
reservation owner taking a huge page back from a child, unmap_ref_private), it raises
ModelLimit before changing anything for that access; the caller stops the step there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pagewalk.errors import Errno, Signal

PAGE = 4096
HPAGE = 2 << 20
TASK_SIZE = (1 << 47) - PAGE
PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4


class ModelLimit(Exception):
    """The kernel would take a path this model does not follow (see the docstring)."""


def page_align(n: int) -> int:
    return (n + PAGE - 1) & ~(PAGE - 1)


def readable(prot: int) -> bool:
    """access_error() for a read plus the execute-only pkey: PROT_WRITE implies read on
    x86, PROT_EXEC alone does not (arch_vma_access_permitted)."""
    return bool(prot & (PROT_READ | PROT_WRITE))


# --- contents ----------------------------------------------------------------------------------

class Frame:
    """The bytes of one page (4 KiB) or huge page (2 MiB), shared by the mappings that map
    it; ``refs`` counts them (what decides reuse or copy in hugetlb_wp)."""

    __slots__ = ("data", "refs", "restore", "unknown")

    def __init__(self, data: dict[int, int | None] | None = None, unknown: bool = False) -> None:
        self.data: dict[int, int | None] = dict(data or {})   # offset -> byte, None: unspecified
        self.unknown = unknown     # offsets not in data hold unspecified bytes (MADV_FREE)
        self.refs = 0
        self.restore = False       # hugetlb: HPageRestoreReserve

    def byte(self, offset: int) -> int | None:
        return self.data.get(offset, None if self.unknown else 0)

    def copy(self) -> Frame:
        return Frame(self.data, self.unknown)


@dataclass(eq=False)
class SharedObject:
    """The inode behind MAP_SHARED|MAP_ANONYMOUS (shmem, 4 KiB pages) or behind a
    MAP_HUGETLB mapping (hugetlbfs, 2 MiB pages). For hugetlb: ``reserve`` is False for
    MAP_NORESERVE; ``entries`` is the reservation map (region_add at mmap for the whole
    length, or at fault); a private mapping's map belongs to ``owner`` (HPAGE_RESV_OWNER)
    and holds the consumed indexes (the inverted meaning of private reservation maps)."""

    ident: int
    kind: str                       # "shm" or "huge"
    shared: bool
    reserve: bool = False
    owner: Proc | None = None       # the process, not its name: names are reused
    pages: dict[int, Frame] = field(default_factory=dict)   # page cache (shared only)
    entries: set[int] = field(default_factory=set)
    mapped: int = 0                 # 4 KiB pages of all processes that map it


@dataclass(eq=False)
class HugeSlot:
    """One process's PMD for one private huge page: the frame it maps, if any."""

    frame: Frame | None = None


@dataclass(eq=False)
class Page:
    """One 4 KiB page of a process's address space."""

    kind: str                       # "anon", "shm" or "huge"
    prot: int
    obj: SharedObject | None = None
    index: int = 0                  # page (shm) or huge page (huge) index in obj
    frame: Frame | None = None      # private anonymous memory: its frame once written
    slot: HugeSlot | None = None    # private hugetlb: shared by the 512 pages of a huge page


@dataclass(eq=False)
class HugeVma:
    """A hugetlb VMA: its boundaries decide where mprotect has to split (and fails)."""

    start: int
    end: int
    obj: SharedObject
    madv: str = ""                  # "", "hugepage" or "nohugepage": VM_(NO)HUGEPAGE


@dataclass(eq=False)
class Proc:
    name: str
    pages: dict[int, Page] = field(default_factory=dict)
    hvmas: list[HugeVma] = field(default_factory=list)     # sorted by start


@dataclass(frozen=True)
class Fault:
    """An access the kernel answers with a signal."""

    signal: Signal
    vaddr: int

    def __str__(self) -> str:
        return f"{self.signal.name} at {self.vaddr:#x}"


Outcome = Errno | None


# --- the model -------------------------------------------------------------------------------

class ShadowModel:
    """Every process's pages and the 2 MiB hugetlb pool (nr_overcommit_hugepages 0)."""

    def __init__(self, pool: int) -> None:
        self.procs: dict[str, Proc] = {}
        self.free = pool            # free_huge_pages
        self.resv = 0               # resv_huge_pages
        self.nr = pool
        self._ident = 0

    # -- queries ---------------------------------------------------------------------------------
    def page(self, proc: str, vaddr: int) -> Page | None:
        return self.procs[proc].pages.get(vaddr & ~(PAGE - 1))

    def huge_at(self, proc: str, vaddr: int) -> bool:
        p = self.page(proc, vaddr)
        return p is not None and p.kind == "huge"

    def cuts_huge_page(self, proc: str, addr: int) -> bool:
        """hugetlb_vm_op_split(): a VMA boundary at ``addr`` inside a huge page."""
        return bool(addr % HPAGE) and self.huge_at(proc, addr)

    def start_split_stays(self, proc: str, start: int, end: int) -> bool:
        """Would munmap/mmap of [start, end) split a hugetlb VMA at ``start`` and then
        fail at ``end``, leaving that split (see _end_cut_fails)?"""
        v = self.hvma_at(proc, start)
        return v is not None and v.start < start and not start % HPAGE and \
            self.cuts_huge_page(proc, end)

    def _end_cut_fails(self, proc: str, start: int, end: int) -> Errno:
        """vms_gather_munmap_vmas(): the VMA at ``start`` is split first; when the split
        at ``end`` then fails (hugetlb_vm_op_split), the first split stays: EINVAL."""
        if not start % HPAGE and self.huge_at(proc, start):
            self._hvma_split(proc, start)
        return Errno.EINVAL

    def hvma_at(self, proc: str, vaddr: int) -> HugeVma | None:
        for v in self.procs[proc].hvmas:
            if v.start <= vaddr < v.end:
                return v
        return None

    def mapped_pages(self, proc: str, start: int, end: int) -> list[int]:
        pages = self.procs[proc].pages
        return [a for a in range(start, end, PAGE) if a in pages]

    def expected_bytes(self, proc: str, vaddr: int, length: int) -> list[int | None]:
        """What reading [vaddr, vaddr + length) (one page, readable) must return."""
        page = self.page(proc, vaddr)
        assert page is not None
        frame, offset = self.frame_of(page, vaddr)
        if frame is None:
            return [0] * length
        return [frame.byte(offset + i) for i in range(length)]

    def frame_of(self, page: Page, vaddr: int) -> tuple[Frame | None, int]:
        if page.kind == "anon":
            return page.frame, vaddr % PAGE
        assert page.obj is not None
        if page.kind == "shm":
            return page.obj.pages.get(page.index), vaddr % PAGE
        if page.obj.shared:
            return page.obj.pages.get(page.index), vaddr % HPAGE
        assert page.slot is not None
        return page.slot.frame, vaddr % HPAGE

    # -- processes ---------------------------------------------------------------------------------
    def spawn(self, name: str) -> None:
        self.procs[name] = Proc(name)

    def fork(self, parent: str, child: str) -> None:
        """dup_mmap(): the child maps what the parent maps; private pages are shared until
        written (copy_page_range, copy_hugetlb_page_range); a private hugetlb mapping's
        reservations stay with the parent (hugetlb_dup_vma_private)."""
        src = self.procs[parent]
        dst = Proc(child)
        slots: dict[int, HugeSlot] = {}
        for addr, page in src.pages.items():
            new = Page(page.kind, page.prot, page.obj, page.index)
            if page.frame is not None:
                new.frame = page.frame
                page.frame.refs += 1
            if page.slot is not None:
                haddr = addr & ~(HPAGE - 1)
                if haddr not in slots:
                    slots[haddr] = HugeSlot(page.slot.frame)
                    if page.slot.frame is not None:
                        page.slot.frame.refs += 1
                new.slot = slots[haddr]
            if page.obj is not None:
                page.obj.mapped += 1
            dst.pages[addr] = new
        dst.hvmas = [HugeVma(v.start, v.end, v.obj, v.madv) for v in src.hvmas]
        self.procs[child] = dst

    def exit(self, name: str) -> None:
        """exit_mmap(): everything unmapped."""
        proc = self.procs[name]
        if proc.pages:
            self._unmap(name, min(proc.pages), max(proc.pages) + PAGE)
        del self.procs[name]

    # -- mmap ---------------------------------------------------------------------------------
    def mmap_check(self, proc: str, addr: int, length: int, prot: int,
                   flags: frozenset[str]) -> tuple[Outcome, int]:
        """The errno of mmap(addr, length, prot, flags) (MAP_FIXED or MAP_FIXED_NOREPLACE,
        anonymous) and the length it maps."""
        hugetlb = "hugetlb" in flags
        if hugetlb:
            length = (length + HPAGE - 1) & ~(HPAGE - 1)         # ksys_mmap_pgoff
        if not length:
            return Errno.EINVAL, 0
        length = page_align(length)
        if length > TASK_SIZE:                                    # __get_unmapped_area
            return Errno.ENOMEM, 0
        if hugetlb and addr % HPAGE:                              # hugetlb_get_unmapped_area
            return Errno.EINVAL, 0
        if addr > TASK_SIZE - length:
            return Errno.ENOMEM, 0
        if addr % PAGE:
            return Errno.EINVAL, 0
        end = addr + length
        if "fixed_noreplace" in flags and self.mapped_pages(proc, addr, end):
            return Errno.EEXIST, 0
        if ("shared" in flags) == ("private" in flags):           # do_mmap: MAP_TYPE
            return Errno.EINVAL, 0
        if self.cuts_huge_page(proc, addr):                       # vms_gather_munmap_vmas
            return Errno.EINVAL, 0
        if self.cuts_huge_page(proc, end):
            return self._end_cut_fails(proc, addr, end), 0
        return None, length

    def mmap_apply(self, proc: str, addr: int, length: int, prot: int,
                   flags: frozenset[str]) -> Outcome:
        """__mmap_region() for [addr, addr + length) once mmap_check passed: what it
        covers is unmapped first (vms_clean_up_area), then hugetlbfs_file_mmap() reserves
        (ENOMEM, measured: the old mapping stays unmapped)."""
        end = addr + length
        self._unmap(proc, addr, end)
        shared, hugetlb = "shared" in flags, "hugetlb" in flags
        pages = self.procs[proc].pages
        self._ident += 1
        if hugetlb:
            reserve = "noreserve" not in flags
            # hugetlb_reserve_pages() -> gather_surplus_pages(): no surplus page is allowed
            if reserve and self.resv + length // HPAGE > self.free:
                return Errno.ENOMEM
            obj = SharedObject(self._ident, "huge", shared, reserve,
                               owner=self.procs[proc] if reserve and not shared else None)
            if reserve:
                self.resv += length // HPAGE
                if shared:
                    obj.entries = set(range(length // HPAGE))
            for haddr in range(addr, end, HPAGE):
                slot = None if shared else HugeSlot()
                for a in range(haddr, haddr + HPAGE, PAGE):
                    pages[a] = Page("huge", prot, obj, (haddr - addr) // HPAGE, slot=slot)
            obj.mapped = length // PAGE
            self._hvma_insert(proc, HugeVma(addr, end, obj))
        elif shared:
            obj = SharedObject(self._ident, "shm", True)
            for a in range(addr, end, PAGE):
                pages[a] = Page("shm", prot, obj, (a - addr) // PAGE)
            obj.mapped = length // PAGE
        else:
            for a in range(addr, end, PAGE):
                pages[a] = Page("anon", prot)
        if "populate" in flags and hugetlb:
            self._populate_hugetlb(proc, addr, end, prot, shared)
        return None

    def _populate_hugetlb(self, proc: str, start: int, end: int, prot: int,
                          shared: bool) -> None:
        """__mm_populate() -> populate_vma_page_range(): nothing for PROT_NONE, -EFAULT
        for an execute-only pkey (check_vma_flags), else a fault per huge page, write for
        a private writable mapping; the first failure ends the VMA."""
        if prot in (0, PROT_EXEC):
            return
        for haddr in range(start, end, HPAGE):
            write = bool(prot & PROT_WRITE) and not shared
            if self._huge_fault(proc, haddr, write) is not None:
                return

    # -- munmap -------------------------------------------------------------------------------
    def munmap_check(self, proc: str, addr: int, length: int) -> Outcome:
        if addr % PAGE or addr > TASK_SIZE or length > TASK_SIZE - addr:
            return Errno.EINVAL
        end = addr + page_align(length)
        if end == addr:
            return Errno.EINVAL
        if self.cuts_huge_page(proc, addr):
            return Errno.EINVAL
        if self.cuts_huge_page(proc, end):
            return self._end_cut_fails(proc, addr, end)
        return None

    def munmap_apply(self, proc: str, addr: int, length: int) -> None:
        self._unmap(proc, addr, addr + page_align(length))

    def _unmap(self, proc: str, start: int, end: int) -> None:
        """unmap_region() then remove_vma(): zap every page (hugetlb: restore the owner's
        reservation, __unmap_hugepage_range), then close the VMAs (hugetlb_vm_op_close
        gives back the unconsumed reservations of the range), then let go of inodes
        nobody maps (hugetlb: remove_inode_hugepages, hugetlb_unreserve_pages)."""
        p = self.procs[proc]
        addrs = self.mapped_pages(proc, start, end)
        if not addrs:
            return
        done_huge: set[int] = set()
        dropped: list[SharedObject] = []
        for a in addrs:
            page = p.pages[a]
            if page.kind == "huge":
                haddr = a & ~(HPAGE - 1)
                if haddr not in done_huge:
                    done_huge.add(haddr)
                    self._zap_huge(proc, page)
                    obj = page.obj
                    assert obj is not None
                    if obj.owner is self.procs[proc] and page.index not in obj.entries:
                        self.resv -= 1                          # hugetlb_vm_op_close
            elif page.frame is not None:
                page.frame.refs -= 1
            if page.obj is not None:
                page.obj.mapped -= 1
                if page.obj.mapped == 0:
                    dropped.append(page.obj)
            del p.pages[a]
        for obj in dropped:
            self._release_object(obj)
        self._hvma_cut(proc, start, end)

    def _zap_huge(self, proc: str, page: Page) -> None:
        """__unmap_hugepage_range() for one huge page of ``proc``."""
        obj = page.obj
        assert obj is not None
        if obj.shared:
            return                   # the page stays in the inode's page cache
        assert page.slot is not None
        frame = page.slot.frame
        if frame is None:
            return
        if obj.owner is self.procs[proc]:        # __vma_private_lock(): the reservation comes back
            frame.restore = True
            obj.entries.discard(page.index)
        page.slot.frame = None
        self._put_huge(frame)

    def _put_huge(self, frame: Frame) -> None:
        """free_huge_folio() once nobody maps the frame."""
        frame.refs -= 1
        if frame.refs:
            return
        if frame.restore:
            self.resv += 1
        self.free += 1

    def _release_object(self, obj: SharedObject) -> None:
        if obj.kind != "huge" or not obj.shared:
            return
        freed = len(obj.pages)
        self.free += freed
        self.resv -= len(obj.entries) - freed           # hugetlb_unreserve_pages()
        obj.pages.clear()
        obj.entries.clear()

    # -- hugetlb VMAs -------------------------------------------------------------------------
    def _hvma_insert(self, proc: str, vma: HugeVma) -> None:
        hv = self.procs[proc].hvmas
        hv.append(vma)
        hv.sort(key=lambda v: v.start)

    def _hvma_split(self, proc: str, addr: int) -> None:
        hv = self.procs[proc].hvmas
        for i, v in enumerate(hv):
            if v.start < addr < v.end:
                hv.insert(i + 1, HugeVma(addr, v.end, v.obj, v.madv))
                v.end = addr
                return

    def _hvma_cut(self, proc: str, start: int, end: int) -> None:
        self._hvma_split(proc, start)
        self._hvma_split(proc, end)
        p = self.procs[proc]
        p.hvmas = [v for v in p.hvmas if v.end <= start or v.start >= end]

    def _hvma_same(self, proc: str, a: HugeVma, b: HugeVma) -> bool:
        """is_mergeable_vma(): same inode (contiguous offsets), same flags."""
        pa, pb = self.page(proc, a.start), self.page(proc, b.start)
        assert pa is not None and pb is not None
        return a.obj is b.obj and a.end == b.start and pa.prot == pb.prot and a.madv == b.madv

    def _hvma_modify(self, proc: str, vma: HugeVma, start: int, end: int,
                     madv: str) -> HugeVma:
        """vma_modify() of [start, end) inside ``vma`` to new flags (the prot the pages
        already carry, VM_(NO)HUGEPAGE ``madv``): a hugetlb VMA has a close hook, so a
        merge may extend a neighbour but never remove a VMA (can_merge_remove_vma)."""
        hv = self.procs[proc].hvmas
        i = hv.index(vma)
        if start == vma.start and end == vma.end:
            return vma
        probe = HugeVma(start, end, vma.obj, madv)
        if start == vma.start and i > 0:
            prev = hv[i - 1]
            if self._hvma_same(proc, prev, probe):
                prev.end = end
                vma.start = end
                return prev
        if end == vma.end and i + 1 < len(hv):
            nxt = hv[i + 1]
            if self._hvma_same(proc, probe, nxt):
                nxt.start = start
                vma.end = start
                return nxt
        self._hvma_split(proc, start)
        self._hvma_split(proc, end)
        return next(v for v in hv if v.start == start)

    # -- mprotect -----------------------------------------------------------------------------
    def _segments(self, proc: str, start: int, end: int) -> list[tuple[int, int, HugeVma | None]]:
        """[start, end) as the kernel's VMA walk meets it: runs of mapped pages (each
        hugetlb VMA its own run), holes as (a, b, None) with a == -1."""
        segs: list[tuple[int, int, HugeVma | None]] = []
        a = start
        pages = self.procs[proc].pages
        while a < end:
            page = pages.get(a)
            if page is None:
                b = a
                while b < end and b not in pages:
                    b += PAGE
                segs.append((-1, b, None))
                a = b
                continue
            if page.kind == "huge":
                v = self.hvma_at(proc, a)
                assert v is not None
                b = min(v.end, end)
                segs.append((a, b, v))
            else:
                b = a
                while b < end and b in pages and pages[b].kind != "huge":
                    b += PAGE
                segs.append((a, b, None))
            a = b
        return segs

    def mprotect_plan(self, proc: str, addr: int, length: int,
                      prot: int) -> tuple[Outcome, list[tuple[int, int, HugeVma | None]]]:
        """do_mprotect_pkey(): the errno and the runs changed before it."""
        if addr % PAGE:
            return Errno.EINVAL, []
        if not length:
            return None, []
        end = addr + page_align(length)
        if end <= addr:
            return Errno.ENOMEM, []
        if self.page(proc, addr) is None:
            return Errno.ENOMEM, []
        done: list[tuple[int, int, HugeVma | None]] = []
        for a, b, v in self._segments(proc, addr, end):
            if a < 0:
                return Errno.ENOMEM, done
            if v is not None:
                cur = self.page(proc, a)
                assert cur is not None
                changes = cur.prot != prot
                if changes and (a % HPAGE or b % HPAGE):   # vma_modify -> hugetlb_vm_op_split
                    if not a % HPAGE and a > v.start:
                        done.append((a, a, v))             # the split at the start stays
                    return Errno.EINVAL, done
            done.append((a, b, v))
        return None, done

    def mprotect_apply(self, proc: str, prot: int,
                       done: list[tuple[int, int, HugeVma | None]]) -> None:
        """Change the runs mprotect_plan returned; an empty run (a, a) is a split that
        stayed when the call failed."""
        pages = self.procs[proc].pages
        for a, b, v in done:
            if a == b:
                self._hvma_split(proc, a)
                continue
            cur = pages[a].prot
            for x in range(a, b, PAGE):
                pages[x].prot = prot
            if v is not None and cur != prot:
                self._hvma_modify(proc, v, a, b, v.madv)

    # -- madvise ------------------------------------------------------------------------------
    def madvise_plan(self, proc: str, addr: int, length: int,
                     advice: str) -> tuple[Outcome, list[tuple[int, int, HugeVma | None]]]:
        """madvise_walk_vmas(): the errno and the runs advised."""
        if addr % PAGE:
            return Errno.EINVAL, []
        end = addr + page_align(length)
        if length and end == addr:
            return Errno.EINVAL, []
        if end < addr:
            return Errno.EINVAL, []
        if end == addr:
            return None, []
        hole = False
        done: list[tuple[int, int, HugeVma | None]] = []
        for a, b, v in self._segments(proc, addr, end):
            if a < 0:
                hole = True
                continue
            pages = self.procs[proc].pages
            if advice in ("dontneed", "free"):
                # walk the run VMA by VMA: the first refusing one stops the walk there
                x = a
                while x < b:
                    page = pages[x]
                    if page.kind == "huge" and (advice == "free" or x % HPAGE):
                        if x > a:
                            done.append((a, x, v))
                        return Errno.EINVAL, done
                    if page.kind == "shm" and advice == "free":
                        if x > a:
                            done.append((a, x, v))
                        return Errno.EINVAL, done
                    x = b if page.kind == "huge" else x + PAGE
            elif v is not None and advice in ("hugepage", "nohugepage") and \
                    v.madv != advice and (a % HPAGE or b % HPAGE):
                if not a % HPAGE and a > v.start:          # madvise_update_vma -> vma_modify
                    done.append((a, a, v))                 # the split at the start stays
                return Errno.EINVAL, done
            done.append((a, b, v))
        return (Errno.ENOMEM if hole else None), done

    def madvise_apply(self, proc: str, advice: str,
                      done: list[tuple[int, int, HugeVma | None]]) -> None:
        pages = self.procs[proc].pages
        for a, b, v in done:
            if a == b:
                self._hvma_split(proc, a)
                continue
            if advice == "dontneed":
                if v is not None:
                    for haddr in range(a, b & ~(HPAGE - 1), HPAGE):
                        self._zap_huge(proc, pages[haddr])
                    continue
                for x in range(a, b, PAGE):
                    page = pages[x]
                    if page.frame is not None:       # zap: private memory reads 0 again
                        page.frame.refs -= 1
                        page.frame = None
            elif advice == "free":
                for x in range(a, b, PAGE):
                    frame = pages[x].frame
                    if frame is not None and frame.refs == 1:   # madvise_free_pte_range
                        frame.data, frame.unknown = {}, True
            elif advice in ("hugepage", "nohugepage") and v is not None and v.madv != advice:
                self._hvma_modify(proc, v, a, b, advice).madv = advice

    # -- accesses -----------------------------------------------------------------------------
    def access(self, proc: str, vaddr: int, write: bool) -> Fault | None:
        """One user access: the signal, or None after the model made the page what the
        kernel leaves behind (a private frame of its own after a write)."""
        page = self.page(proc, vaddr)
        if page is None:
            return Fault(Signal.SIGSEGV, vaddr)                  # bad_area: no VMA
        if write and not page.prot & PROT_WRITE or not write and not readable(page.prot):
            return Fault(Signal.SIGSEGV, vaddr)                  # access_error / pkey
        if page.kind == "huge":
            if self._huge_fault(proc, vaddr, write) is not None:
                return Fault(Signal.SIGBUS, vaddr)
            return None
        if write and page.kind == "anon":
            frame = page.frame
            if frame is None:
                page.frame = Frame()
                page.frame.refs = 1
            elif frame.refs > 1:                                  # wp_page_copy
                frame.refs -= 1
                page.frame = frame.copy()
                page.frame.refs = 1
        if write and page.kind == "shm":
            assert page.obj is not None
            page.obj.pages.setdefault(page.index, Frame())
        return None

    def store(self, proc: str, vaddr: int, data: bytes | list[int | None]) -> None:
        """Bytes a successful write access put at vaddr (within one page)."""
        page = self.page(proc, vaddr)
        assert page is not None
        frame, offset = self.frame_of(page, vaddr)
        assert frame is not None, f"{proc}: store at {vaddr:#x} without a frame"
        for i, byte in enumerate(data):
            frame.data[offset + i] = byte

    def _huge_fault(self, proc: str, vaddr: int, write: bool) -> str | None:
        """hugetlb_fault(): None, or why the kernel answers VM_FAULT_SIGBUS."""
        page = self.page(proc, vaddr)
        assert page is not None and page.obj is not None
        obj = page.obj
        if obj.shared:
            if page.index in obj.pages:
                return None
            has_reserve = obj.reserve and page.index in obj.entries
            if not self._alloc_huge(has_reserve):
                return "no free huge page"
            obj.pages[page.index] = Frame()
            obj.entries.add(page.index)               # vma_commit_reservation
            return None
        slot = page.slot
        assert slot is not None
        if slot.frame is None:                        # hugetlb_no_page
            has_reserve = obj.owner is self.procs[proc] and page.index not in obj.entries
            if not self._alloc_huge(has_reserve):
                return "no free huge page"
            slot.frame = Frame()
            slot.frame.refs = 1
            if obj.owner is self.procs[proc]:
                obj.entries.add(page.index)
            return None
        if not write or slot.frame.refs == 1:         # read, or hugetlb_wp reuse
            return None
        # hugetlb_wp(): a copy; the reservation owner allocates outside its reserve and,
        # when the pool has nothing to spare, takes the page from the children instead
        if self.free - self.resv == 0 or not self.free:
            if obj.owner is self.procs[proc]:
                raise ModelLimit(f"{proc}: COW at {vaddr:#x} would unmap_ref_private()")
            return "no free huge page for the copy"
        self.free -= 1
        old = slot.frame
        old.refs -= 1
        slot.frame = old.copy()
        slot.frame.refs = 1
        return None

    def _alloc_huge(self, has_reserve: bool) -> bool:
        """alloc_hugetlb_folio() -> dequeue_hugetlb_folio_vma(): without a reservation
        only while available_huge_pages(); a surplus page never (overcommit 0)."""
        if not has_reserve and self.free - self.resv == 0:
            return False
        if not self.free:
            return False
        self.free -= 1
        if has_reserve:
            self.resv -= 1
        return True
