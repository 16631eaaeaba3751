"""The simulated kernel: tasks, knobs, system calls and the user-fault entry (STYLE layout).

``kernel.py`` follows arch/x86/mm/fault.c and kernel/fork.c, ``syscalls.py`` the argument
checks of mm/mmap.c and friends, ``knobs.py`` the /sys and /proc tunables.
"""
