"""Physical memory: 4 KiB frames, stored sparsely on the host.

A frame costs host memory only once something is stored in it: page-table frames
always (they are written as soon as they are allocated), data frames when a
`write` step stores bytes. Stored frames live in one NumPy pool of 512 x uint64
rows; ``slot_of[pfn]`` is the row of a stored frame or -1, and a frame without a
row reads as zeros (the allocator hands out zeroed pages, so an unstored frame
and a zeroed one are the same thing). A `touch` step's write stores one byte 0x01 (what
the kernel runner stores); a frame whose only stored byte that is keeps it in
``touched[pfn]`` (its offset + 1) instead of a row, so touching 8 GiB costs no pool. The arrays are plain NumPy so compiled
code (mm/fastfault.py) can read and write entries without crossing into Python: it
takes them as one :class:`PhysArrays` bundle, and the frame operations below
(``frame_store``, ``frame_drop``, ``frame_copy``) are compiled once and called by
both the Python methods and the compiled fault path.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from pagewalk.hw.compiled import bundle, compiled

FRAME_WORDS = 512
FRAME_SIZE = 4096


class PhysArrays(NamedTuple):
    """The arrays of one PhysicalMemory, as compiled code takes them (``pool`` is replaced
    when it grows: take a fresh bundle after ``reserve_slots``)."""

    slot_of: npt.NDArray[np.int32]       # pfn -> pool row, -1: not stored (reads as zeros)
    pool: npt.NDArray[np.uint64]         # [rows, 512] stored frames
    free_slots: npt.NDArray[np.int32]    # stack of unused rows: free_slots[:nr_free_slots[0]]
    nr_free_slots: npt.NDArray[np.int64]  # [1]
    touched: npt.NDArray[np.uint16]      # pfn -> offset + 1 of a lone 0x01 byte not in a row


bundle(PhysArrays, "i1 Q2 i1 q1 H1")

TOUCH_BYTE = 1   # what a `touch` write stores (the kernel runner's byte)


# -- frame operations (compiled; the caller has reserved the rows a store needs) ------------

@compiled(entry="PhysArrays i i", inline=True)
def _row_set_byte(phys: PhysArrays, slot: int, offset: int) -> None:
    """Byte ``offset`` of pool row ``slot`` becomes TOUCH_BYTE."""
    shift = np.uint64((offset & 7) * 8)
    word = phys.pool[slot, offset >> 3] & ~(np.uint64(0xFF) << shift)
    phys.pool[slot, offset >> 3] = word | (np.uint64(TOUCH_BYTE) << shift)


@compiled(entry="PhysArrays i", result="i", inline=True)
def frame_store(phys: PhysArrays, pfn: int) -> int:
    """The pool row of ``pfn``, given a zeroed row first if it has none (holding the
    frame's lone touched byte, if it had one)."""
    slot = phys.slot_of[pfn]
    if slot >= 0:
        return int(slot)
    top = phys.nr_free_slots[0] - 1
    slot = phys.free_slots[top]
    phys.nr_free_slots[0] = top
    for word in range(FRAME_WORDS):
        phys.pool[slot, word] = 0
    phys.slot_of[pfn] = slot
    if phys.touched[pfn]:
        _row_set_byte(phys, int(slot), int(phys.touched[pfn]) - 1)
        phys.touched[pfn] = 0
    return int(slot)


@compiled(entry="PhysArrays i", inline=True)
def frame_touch(phys: PhysArrays, paddr: int) -> None:
    """A `touch` write of TOUCH_BYTE at ``paddr``: kept as the frame's lone touched byte
    while it is the only one, in a row otherwise (the caller has reserved one row)."""
    pfn = paddr >> 12
    offset = paddr & 0xFFF
    slot = phys.slot_of[pfn]
    if slot < 0:
        mark = phys.touched[pfn]
        if mark == 0 or mark == offset + 1:
            phys.touched[pfn] = offset + 1
            return
        slot = frame_store(phys, pfn)
    _row_set_byte(phys, int(slot), offset)


@compiled(entry="PhysArrays i", inline=True)
def frame_drop(phys: PhysArrays, pfn: int) -> None:
    """Forget a frame's contents (freed, or zeroed by __GFP_ZERO): it reads as zeros."""
    phys.touched[pfn] = 0
    slot = phys.slot_of[pfn]
    if slot < 0:
        return
    phys.slot_of[pfn] = -1
    top = phys.nr_free_slots[0]
    phys.free_slots[top] = slot
    phys.nr_free_slots[0] = top + 1


@compiled(entry="PhysArrays i i", inline=True)
def frame_drop_range(phys: PhysArrays, pfn: int, nr_frames: int) -> None:
    """frame_drop() for every frame of [pfn, pfn + nr_frames)."""
    for frame in range(pfn, pfn + nr_frames):
        frame_drop(phys, frame)


@compiled(entry="PhysArrays i i")
def frame_copy(phys: PhysArrays, dst_pfn: int, src_pfn: int) -> None:
    """copy_page(): dst gets src's contents (an unstored src leaves dst unstored)."""
    src = phys.slot_of[src_pfn]
    if src < 0:
        frame_drop(phys, dst_pfn)
    else:
        dst = frame_store(phys, dst_pfn)
        for word in range(FRAME_WORDS):
            phys.pool[dst, word] = phys.pool[src, word]
    phys.touched[dst_pfn] = phys.touched[src_pfn]


class PhysicalMemory:
    """``nr_frames`` frames of 4 KiB; 64-bit little-endian words and bytes by physical address."""

    def __init__(self, size: int, initial_slots: int = 256) -> None:
        if size % FRAME_SIZE:
            raise ValueError("physical memory size must be a multiple of 4 KiB")
        self.size = size
        self.nr_frames = size // FRAME_SIZE
        self.slot_of: npt.NDArray[np.int32] = np.full(self.nr_frames, -1, dtype=np.int32)
        self.pool: npt.NDArray[np.uint64] = np.zeros((initial_slots, FRAME_WORDS), dtype=np.uint64)
        # Free rows form a stack: free_slots[:nr_free_slots] are unused rows.
        self.free_slots: npt.NDArray[np.int32] = np.arange(initial_slots - 1, -1, -1, dtype=np.int32)
        self.nr_free_slots = np.zeros(1, dtype=np.int64)
        self.nr_free_slots[0] = initial_slots
        # touched[pfn] = offset + 1: the frame's one non-zero byte, TOUCH_BYTE at offset,
        # stored by a `touch` step and kept here rather than in a row. Cleared with the
        # frame's contents, copied with them, moved into a row when the frame gets one.
        self.touched: npt.NDArray[np.uint16] = np.zeros(self.nr_frames, dtype=np.uint16)
        self._arrays: PhysArrays | None = None

    # -- pool management -------------------------------------------------------------------
    @property
    def arrays(self) -> PhysArrays:
        """The arrays as one bundle for compiled code (a new one once the pool grew)."""
        if self._arrays is None or self._arrays.pool is not self.pool \
                or self._arrays.free_slots is not self.free_slots:
            self._arrays = PhysArrays(self.slot_of, self.pool, self.free_slots,
                                      self.nr_free_slots, self.touched)
        return self._arrays

    @property
    def stored_frames(self) -> int:
        return int(self.pool.shape[0] - self.nr_free_slots[0])

    def reserve_slots(self, needed: int) -> None:
        """Grow the pool so that at least ``needed`` rows are free (before compiled code runs)."""
        free = int(self.nr_free_slots[0])
        if free >= needed:
            return
        old = self.pool.shape[0]
        new = max(old * 2, old + needed - free + 64)
        pool = np.zeros((new, FRAME_WORDS), dtype=np.uint64)
        pool[:old] = self.pool
        self.pool = pool
        added = np.arange(new - 1, old - 1, -1, dtype=np.int32)
        stack = np.empty(new, dtype=np.int32)
        stack[: added.size] = added
        stack[added.size: added.size + free] = self.free_slots[:free]
        self.free_slots = stack
        self.nr_free_slots[0] = free + added.size

    def _store(self, pfn: int) -> int:
        slot = int(self.slot_of[pfn])
        if slot >= 0:
            return slot
        self.reserve_slots(1)
        return frame_store(self.arrays, pfn)

    def drop(self, pfn: int) -> None:
        """Forget a frame's contents (it was freed or zeroed): it reads as zeros again."""
        frame_drop(self.arrays, pfn)

    def drop_range(self, pfn: int, nr_frames: int) -> None:
        """drop() for every frame of [pfn, pfn + nr_frames)."""
        frame_drop_range(self.arrays, pfn, nr_frames)

    def is_stored(self, pfn: int) -> bool:
        return bool(self.slot_of[pfn] >= 0)

    def note_touch(self, paddr: int) -> None:
        """A `touch` store of TOUCH_BYTE at ``paddr``."""
        self.reserve_slots(1)
        frame_touch(self.arrays, paddr)

    def is_zero(self, pfn: int) -> bool:
        """Every byte of the frame is zero (what pages_identical(page, ZERO_PAGE) asks)."""
        if self.touched[pfn]:
            return False
        slot = int(self.slot_of[pfn])
        return slot < 0 or not self.pool[slot].any()

    # -- words (page-table entries) -----------------------------------------------------------
    def read_u64(self, paddr: int) -> int:
        slot = int(self.slot_of[paddr >> 12])
        if slot < 0:
            return 0
        return int(self.pool[slot, (paddr & 0xFFF) >> 3])

    def write_u64(self, paddr: int, value: int) -> None:
        slot = self._store(paddr >> 12)
        self.pool[slot, (paddr & 0xFFF) >> 3] = value

    def frame_words(self, pfn: int) -> npt.NDArray[np.uint64]:
        """A read-only copy of a frame's 512 words (zeros for an unstored frame)."""
        slot = int(self.slot_of[pfn])
        if slot < 0:
            return np.zeros(FRAME_WORDS, dtype=np.uint64)
        words: npt.NDArray[np.uint64] = self.pool[slot].copy()
        return words

    # -- bytes (data) --------------------------------------------------------------------------
    def read_bytes(self, paddr: int, length: int) -> bytes:
        """Bytes within one frame."""
        pfn, offset = paddr >> 12, paddr & 0xFFF
        assert offset + length <= FRAME_SIZE
        slot = int(self.slot_of[pfn])
        if slot < 0:
            data = bytearray(length)
            lone = int(self.touched[pfn]) - 1
            if offset <= lone < offset + length:
                data[lone - offset] = TOUCH_BYTE
            return bytes(data)
        return bytes(self.pool[slot].view(np.uint8)[offset: offset + length])

    def write_bytes(self, paddr: int, data: bytes) -> None:
        """Bytes within one frame."""
        pfn, offset = paddr >> 12, paddr & 0xFFF
        assert offset + len(data) <= FRAME_SIZE
        slot = self._store(pfn)
        self.pool[slot].view(np.uint8)[offset: offset + len(data)] = np.frombuffer(data, np.uint8)

    def copy_frame(self, dst_pfn: int, src_pfn: int) -> None:
        """copy_page(): dst gets src's contents (an unstored src leaves dst unstored)."""
        self.reserve_slots(1)
        frame_copy(self.arrays, dst_pfn, src_pfn)

    def clear_frame(self, pfn: int) -> None:
        """clear_page()."""
        self.drop(pfn)

    @property
    def host_bytes(self) -> int:
        """Host memory the simulated RAM costs (arrays included)."""
        return int(self.pool.nbytes + self.slot_of.nbytes + self.free_slots.nbytes
                   + self.touched.nbytes)
