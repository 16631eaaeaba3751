/* touch.c SIZE_MIB MODE -- the real kernel doing what benchmarks/touch_*.yaml simulate:
 * mmap SIZE_MIB of private anonymous memory and write one byte per 4 KiB page.
 * MODE "4k": MADV_NOHUGEPAGE (4 KiB faults); "thp": MADV_HUGEPAGE (2 MiB THP faults,
 * with transparent_hugepage/enabled = madvise or always). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>

int main(int argc, char **argv)
{
	if (argc != 3) { fprintf(stderr, "usage: touch SIZE_MIB 4k|thp\n"); return 2; }
	size_t len = strtoull(argv[1], NULL, 10) << 20;
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) { perror("mmap"); return 1; }
	if (madvise(p, len, strcmp(argv[2], "thp") ? MADV_NOHUGEPAGE : MADV_HUGEPAGE)) {
		perror("madvise"); return 1;
	}
	for (size_t off = 0; off < len; off += 4096) p[off] = 1;
	struct rusage ru; getrusage(RUSAGE_SELF, &ru);
	printf("%ld\n", ru.ru_minflt);
	return 0;
}
