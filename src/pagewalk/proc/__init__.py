"""Read-only views over the kernel's state, in the layout Linux prints (STYLE rule 4)."""
