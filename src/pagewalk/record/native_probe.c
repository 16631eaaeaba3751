/* pagewalk record --compare: run a program natively with ASLR off (personality
 * ADDR_NO_RANDOMIZE, as setarch -R does) under ptrace, and copy its /proc files at two
 * stops: right after execve (PTRACE_EVENT_EXEC: the initial layout, the pages present
 * then from /proc/PID/pagemap, /proc/PID/stat) and at exit (PTRACE_EVENT_EXIT, before
 * exit_mm(): /proc/PID/status, smaps_rollup, stat). With -x it kills the program at the
 * exec stop (layout only). Output: one record per line in OUT (see record/native.py).
 * Usage: native_probe [-x] OUT PROGRAM [ARGS]... */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/personality.h>
#include <sys/ptrace.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

static void copy_lines(FILE *out, pid_t pid, const char *name, const char *tag)
{
    char path[64], line[4096];
    snprintf(path, sizeof path, "/proc/%d/%s", (int)pid, name);
    FILE *in = fopen(path, "r");
    if (!in) { fprintf(out, "error %s %s\n", path, strerror(errno)); return; }
    while (fgets(line, sizeof line, in))
        fprintf(out, "%s %s", tag, line);
    fclose(in);
}

/* Every present page of every mapping: "present VADDR FILE" (FILE: pagemap bit 61,
 * a file page or shared anonymous). */
static void present_pages(FILE *out, pid_t pid)
{
    char path[64], line[4096];
    snprintf(path, sizeof path, "/proc/%d/maps", (int)pid);
    FILE *maps = fopen(path, "r");
    snprintf(path, sizeof path, "/proc/%d/pagemap", (int)pid);
    int pagemap = open(path, O_RDONLY);
    if (!maps || pagemap < 0) { fprintf(out, "error pagemap %s\n", strerror(errno)); return; }
    while (fgets(line, sizeof line, maps)) {
        uint64_t start, end, entry;
        if (sscanf(line, "%" SCNx64 "-%" SCNx64, &start, &end) != 2 || start >> 47)
            continue;                       /* [vsyscall] is not in the page tables */
        for (uint64_t va = start; va < end; va += 4096) {
            if (pread(pagemap, &entry, 8, (off_t)(va / 4096 * 8)) != 8)
                break;
            if (entry >> 63 & 1)
                fprintf(out, "present %" PRIx64 " %d\n", va, (int)(entry >> 61 & 1));
        }
    }
    fclose(maps);
    close(pagemap);
}

int main(int argc, char **argv)
{
    int layout_only = argc > 1 && strcmp(argv[1], "-x") == 0;
    if (argc < 3 + layout_only) { fprintf(stderr, "usage: native_probe [-x] OUT PROGRAM [ARGS]...\n"); return 2; }
    FILE *out = fopen(argv[1 + layout_only], "w");
    if (!out) { perror(argv[1 + layout_only]); return 2; }
    pid_t pid = fork();
    if (pid == 0) {
        personality(ADDR_NO_RANDOMIZE);
        ptrace(PTRACE_TRACEME, 0, 0, 0);
        execvp(argv[2 + layout_only], argv + 2 + layout_only);
        _exit(127);
    }
    int status;
    if (waitpid(pid, &status, 0) < 0 || !WIFSTOPPED(status)) {   /* the SIGTRAP after execve */
        fprintf(out, "exitcode %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : 128);
        return 1;
    }
    ptrace(PTRACE_SETOPTIONS, pid, 0, PTRACE_O_TRACEEXIT | PTRACE_O_EXITKILL);
    copy_lines(out, pid, "stat", "exec_stat");
    copy_lines(out, pid, "maps", "map");
    present_pages(out, pid);
    fflush(out);
    if (layout_only) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        fprintf(out, "exitcode 0\n");
        return 0;
    }
    ptrace(PTRACE_CONT, pid, 0, 0);
    for (;;) {
        if (waitpid(pid, &status, 0) < 0)
            break;
        if (WIFEXITED(status) || WIFSIGNALED(status))
            break;
        if (status >> 8 == (SIGTRAP | (PTRACE_EVENT_EXIT << 8))) {
            copy_lines(out, pid, "status", "exit_status");
            copy_lines(out, pid, "smaps_rollup", "exit_rollup");
            copy_lines(out, pid, "stat", "exit_stat");
            fflush(out);
            ptrace(PTRACE_CONT, pid, 0, 0);
            continue;
        }
        /* a signal for the program: deliver it */
        ptrace(PTRACE_CONT, pid, 0, WIFSTOPPED(status) ? WSTOPSIG(status) : 0);
    }
    fprintf(out, "exitcode %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
    fclose(out);
    return 0;
}
