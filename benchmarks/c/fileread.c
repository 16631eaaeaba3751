/* fileread.c PATH SIZE_MIB MODE -- the real kernel doing what bench_file.py simulates:
 * write a SIZE_MIB file in 4 KiB write(2)s and fsync it; MODE "uncached" then drops it
 * from the page cache (POSIX_FADV_DONTNEED); then mmap it shared, read-only, and read one
 * byte per 4 KiB page. Prints "SECONDS MINFLT MAJFLT" of the mmap-and-read part alone.
 * The file is removed at the end. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	if (argc != 4) { fprintf(stderr, "usage: fileread PATH SIZE_MIB cached|uncached\n"); return 2; }
	size_t len = strtoull(argv[2], NULL, 10) << 20;
	int fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0) { perror("open"); return 1; }
	static char page[4096];
	for (size_t off = 0; off < len; off += sizeof page)
		if (write(fd, page, sizeof page) != sizeof page) { perror("write"); return 1; }
	if (fsync(fd)) { perror("fsync"); return 1; }
	if (!strcmp(argv[3], "uncached") && posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)) {
		perror("fadvise"); return 1;
	}
	struct rusage a, b;
	getrusage(RUSAGE_SELF, &a);
	double start = now();
	volatile char *p = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED) { perror("mmap"); return 1; }
	char sum = 0;
	for (size_t off = 0; off < len; off += 4096) sum += p[off];
	double elapsed = now() - start;
	getrusage(RUSAGE_SELF, &b);
	printf("%.6f %ld %ld\n", elapsed, b.ru_minflt - a.ru_minflt, b.ru_majflt - a.ru_majflt);
	unlink(argv[1]);
	return sum;
}
