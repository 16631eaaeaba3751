"""The simulated x86_64 hardware: physical memory, paging-structure entries, the MMU, TLBs.

Nothing in this package knows about VMAs, tasks or /proc (STYLE rule 4).
"""
