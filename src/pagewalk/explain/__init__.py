"""Explanations of the simulated state: one address translated step by step
(:mod:`pagewalk.explain.translate`) and what page tables cost (:mod:`pagewalk.explain.cost`).

Both read the machine and never change it: a walk runs on a copy-on-write view of
physical memory, the TLBs and page-walk caches are probed without touching their LRU
order, and the page tables are counted from their words in physical memory.
"""
