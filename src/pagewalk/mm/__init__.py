"""The simulated kernel's memory manager, one module per kernel file (STYLE layout)."""
