/* fork.c SIZE_MIB -- the real kernel doing what benchmarks/fork_1g.yaml simulates: write
 * SIZE_MIB of private anonymous memory (4 KiB pages), fork, the child writes all of it
 * (one copy-on-write fault per page) and exits, the parent waits. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc != 2) { fprintf(stderr, "usage: fork SIZE_MIB\n"); return 2; }
	size_t len = strtoull(argv[1], NULL, 10) << 20;
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) { perror("mmap"); return 1; }
	madvise(p, len, MADV_NOHUGEPAGE);
	for (size_t off = 0; off < len; off += 4096) p[off] = 1;
	pid_t pid = fork();
	if (pid < 0) { perror("fork"); return 1; }
	if (pid == 0) {
		for (size_t off = 0; off < len; off += 4096) p[off] = 2;
		struct rusage ru; getrusage(RUSAGE_SELF, &ru);
		printf("%ld\n", ru.ru_minflt);
		fflush(stdout);
		_exit(0);
	}
	int status; waitpid(pid, &status, 0);
	return 0;
}
