"""Real programs end to end (issue 16): record a program's memory system calls and
accesses under valgrind (recorder.py, valgrind_log.py, recfile.py), replay them through
the simulated kernel and MMU (replay.py, address_map.py), and compare with the program
run natively (native.py, native_probe.c)."""
