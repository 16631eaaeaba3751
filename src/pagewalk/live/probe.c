/*
 * probe.c - executes one pagewalk scenario's memory steps on the real kernel.
 *
 * pagewalk's live runner (src/pagewalk/live) builds this file with `gcc -O2 -static`
 * and drives it; it is the kernel oracle's probe (shared/oracle/probe.c, version 2 and 3
 * commands included) with two additions: the "notype" mmap flag, and a warm-up that
 * skips pages the scenario unmapped.  Keep the code small and unchanged otherwise: the
 * binary's layout is the spec's "process at scenario start", and the runner checks it.
 *
 * Driven by the controller through a line protocol: one command per line on
 * the command channel (stdin for the first process "main", a FIFO for forked
 * children), one reply line per command on the reply channel (stdout / FIFO).
 * The probe keeps no per-scenario state: the controller tracks mapping names
 * and sends absolute addresses.  Measuring is done by the controller reading
 * the files under /proc/PID, so measuring adds no faults to the measured process.
 *
 * Commands (numbers are decimal or 0x-hex):
 *   mmap LEN PROT FLAGS ADDR    PROT: none or letters rwx; FLAGS: comma list
 *                               (private shared fixed fixed_noreplace noreserve
 *                               populate hugetlb huge2m huge1g notype) or '-';
 *                               without shared: MAP_PRIVATE unless notype
 *                               -> "ok ADDR" | "err ENAME"
 *   munmap ADDR LEN / mprotect ADDR LEN PROT / madvise ADDR LEN ADVICE
 *   touch ADDR LEN STRIDE r|w [INFLIGHT [all]]  -> "ok N" | "sig SIGSEGV ADDR N" (N accesses
 *                               done); a write access stores the byte 0x01.  With
 *                               INFLIGHT (a disk's sysfs inflight file), after every
 *                               access that faulted, wait until the disk has no read in
 *                               flight, so readahead never races with the next access
 *                               (with "all": no write either, so swap-out writeback
 *                               completes before the next access; version 3)
 *   write ADDR HEX              -> "ok" | "sig ..."
 *   read ADDR LEN               -> "ok HEX" | "sig ..."
 *   fork CMDFIFO RESPFIFO       -> parent "ok CHILDPID"; the child opens the
 *                                  FIFOs and answers "ready PID" there
 * Version 2 (files are named by a path the probe opens O_RDWR for each step;
 * the controller passes /proc/CONTROLLER/fd/N so that unlinked files and
 * memfds stay reachable):
 *   mmap LEN PROT FLAGS ADDR PATH OFF   a file mapping (one fresh open per mmap,
 *                               so each mapping has its own readahead state)
 *   mremap ADDR OLDLEN NEWLEN FLAGS NEWADDR   FLAGS: MREMAP_* bits -> "ok ADDR"
 *   mlock ADDR LEN FLAGS (mlock2 bits) / munlock ADDR LEN
 *   mlockall FLAGS (MCL_* bits) / munlockall / msync ADDR LEN FLAGS (MS_* bits)
 *   brk DELTA                   raw brk(current + DELTA) -> "ok NEWBRK" | "err ENOMEM";
 *                               DELTA 0 only asks for the current break
 *   fcreate KIND SIZE PATH      KIND f: creat PATH, write SIZE zero bytes in
 *                               4 KiB write(2)s, fsync; KIND m: memfd_create +
 *                               ftruncate -> "ok FD" (the fd stays open)
 *   close FD / ftrunc PATH SIZE / fadv PATH (fsync + FADV_DONTNEED, whole file)
 *   unlink PATH
 *   warm                        -> re-touch the probe's own pages, "ok"
 *   ping                        -> "ok PID"
 *   exit                        -> _exit(0), no reply
 *
 * Noise control: no malloc, no stdio; all buffers static and pre-faulted; the
 * stack is pre-grown; after fork both sides re-write every page of the probe's
 * own writable mappings (COW-breaking them) and re-read its text, so later
 * steps cause no faults but the scenario's.  The controller re-bases fault
 * counters after that warm-up.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <unistd.h>

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif
#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
#ifndef MAP_HUGE_SHIFT
#define MAP_HUGE_SHIFT 26
#endif
#define MAP_HUGE_2MB_ (21 << MAP_HUGE_SHIFT)
/* raw system call numbers (x86_64), so no new libc wrappers change the probe's layout */
#define NR_brk 12
#define NR_mremap 25
#define NR_msync 26
#define NR_fsync 74
#define NR_ftruncate 77
#define NR_unlink 87
#define NR_mlock 149
#define NR_munlock 150
#define NR_mlockall 151
#define NR_munlockall 152
#define NR_fadvise64 221
#define NR_memfd_create 319
#define NR_mlock2 325
#define NR_nanosleep 35
#define NR_getrusage 98
#define MAP_HUGE_1GB_ (30 << MAP_HUGE_SHIFT)

#define PAGE 4096UL
#define STACK_PREFAULT (256 * 1024)
#define LINE_MAX_ 16384
#define MAXR 64

static char inbuf[LINE_MAX_ * 2];
static size_t inlen;
static char line[LINE_MAX_];
static char out[LINE_MAX_ * 2 + 256];
static unsigned char databuf[LINE_MAX_];
static char mapsbuf[65536];
static int cmd_fd = 0, resp_fd = 1;

struct range { uintptr_t start, end; int writable; };
static struct range own[MAXR];
static int nown;

static sigjmp_buf jb;
static volatile sig_atomic_t in_access;
static volatile uintptr_t fault_addr;

static void on_signal(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	if (!in_access) {
		signal(sig, SIG_DFL);
		raise(sig);
		return;
	}
	fault_addr = (uintptr_t)si->si_addr;
	in_access = 0;
	siglongjmp(jb, sig);
}

/* ---------- tiny formatting helpers (no stdio) ---------- */
static size_t o;
static void put(const char *s) { while (*s) out[o++] = *s++; }
static void putu(unsigned long v)
{
	char t[32]; int n = 0;
	do { t[n++] = '0' + v % 10; v /= 10; } while (v);
	while (n) out[o++] = t[--n];
}
static void putx(unsigned long v)
{
	char t[32]; int n = 0;
	do { t[n++] = "0123456789abcdef"[v & 15]; v >>= 4; } while (v);
	out[o++] = '0'; out[o++] = 'x';
	while (n) out[o++] = t[--n];
}
static void flush_line(void)
{
	out[o++] = '\n';
	size_t off = 0;
	while (off < o) {
		ssize_t w = write(resp_fd, out + off, o - off);
		if (w < 0) { if (errno == EINTR) continue; _exit(3); }
		off += (size_t)w;
	}
	o = 0;
}

static const char *errname(int e)
{
	switch (e) {
	case EPERM: return "EPERM"; case ENOENT: return "ENOENT";
	case EINTR: return "EINTR"; case EIO: return "EIO";
	case EBADF: return "EBADF"; case EAGAIN: return "EAGAIN";
	case ENOMEM: return "ENOMEM"; case EACCES: return "EACCES";
	case EFAULT: return "EFAULT"; case EBUSY: return "EBUSY";
	case EEXIST: return "EEXIST"; case ENODEV: return "ENODEV";
	case EINVAL: return "EINVAL"; case ENFILE: return "ENFILE";
	case EMFILE: return "EMFILE"; case EFBIG: return "EFBIG";
	case ENOSPC: return "ENOSPC"; case EOVERFLOW: return "EOVERFLOW";
	case ENOSYS: return "ENOSYS"; case EOPNOTSUPP: return "EOPNOTSUPP";
	case EHWPOISON: return "EHWPOISON"; case ERANGE: return "ERANGE";
	default: return "EUNKNOWN";
	}
}

static void reply_err(int e) { put("err "); put(errname(e)); flush_line(); }
static void reply_ok(void) { put("ok"); flush_line(); }

static long sys4(long n, long a, long b, long c, long d)
{
	long r;
	register long r10 __asm__("r10") = d;
	__asm__ volatile ("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10)
			  : "rcx", "r11", "memory");
	return r;
}
static long sys5(long n, long a, long b, long c, long d, long e)
{
	long r;
	register long r10 __asm__("r10") = d;
	register long r8 __asm__("r8") = e;
	__asm__ volatile ("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8)
			  : "rcx", "r11", "memory");
	return r;
}
/* "ok" or "err ENAME" for a raw system call's result */
static void reply_sys(long r) { if (r < 0 && r > -4096) reply_err((int)-r); else reply_ok(); }

/* ---------- parsing ---------- */
static char *tok(char **p)
{
	char *s = *p;
	while (*s == ' ') s++;
	if (!*s) return 0;
	char *b = s;
	while (*s && *s != ' ') s++;
	if (*s) *s++ = 0;
	*p = s;
	return b;
}
static unsigned long num(const char *s)
{
	unsigned long v = 0;
	if (!s) return 0;
	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		s += 2;
		for (; *s; s++) {
			int c = *s;
			v = v * 16 + (c <= '9' ? c - '0' : (c | 32) - 'a' + 10);
		}
		return v;
	}
	for (; *s; s++) v = v * 10 + (unsigned long)(*s - '0');
	return v;
}
static int prot_of(const char *s)
{
	int p = 0;
	if (!s || !strcmp(s, "none")) return PROT_NONE;
	for (; *s; s++) {
		if (*s == 'r') p |= PROT_READ;
		else if (*s == 'w') p |= PROT_WRITE;
		else if (*s == 'x') p |= PROT_EXEC;
	}
	return p;
}
static int has_flag(const char *flags, const char *f)
{
	size_t n = strlen(f);
	const char *s = flags;
	while (s && *s) {
		const char *e = strchr(s, ',');
		size_t l = e ? (size_t)(e - s) : strlen(s);
		if (l == n && !memcmp(s, f, n)) return 1;
		s = e ? e + 1 : 0;
	}
	return 0;
}
static int advice_of(const char *s)
{
	if (!strcmp(s, "hugepage")) return MADV_HUGEPAGE;
	if (!strcmp(s, "nohugepage")) return MADV_NOHUGEPAGE;
	if (!strcmp(s, "dontneed")) return MADV_DONTNEED;
	if (!strcmp(s, "free")) return MADV_FREE;
	if (!strcmp(s, "collapse")) return MADV_COLLAPSE;
	if (!strcmp(s, "willneed")) return MADV_WILLNEED;
	if (!strcmp(s, "populate_read")) return 22;
	if (!strcmp(s, "populate_write")) return 23;
	if (!strcmp(s, "remove")) return MADV_REMOVE;
	if (!strcmp(s, "cold")) return 20;
	if (!strcmp(s, "pageout")) return 21;
	if (!strcmp(s, "random")) return MADV_RANDOM;
	if (!strcmp(s, "sequential")) return MADV_SEQUENTIAL;
	if (!strcmp(s, "normal")) return MADV_NORMAL;
	return -1;
}
static int hexval(int c) { return c <= '9' ? c - '0' : (c | 32) - 'a' + 10; }

/* ---------- own-pages bookkeeping ---------- */
static void record_own_ranges(void)
{
	int fd = open("/proc/self/maps", O_RDONLY);
	size_t n = 0;
	ssize_t r;
	if (fd < 0) _exit(4);
	while ((r = read(fd, mapsbuf + n, sizeof(mapsbuf) - 1 - n)) > 0) n += (size_t)r;
	close(fd);
	mapsbuf[n] = 0;
	char *s = mapsbuf;
	nown = 0;
	while (*s && nown < MAXR) {
		char *eol = strchr(s, '\n');
		if (eol) *eol = 0;
		uintptr_t a = 0, b = 0;
		char *p = s;
		while (*p && *p != '-') { a = a * 16 + (uintptr_t)hexval(*p); p++; }
		p++;
		while (*p && *p != ' ') { b = b * 16 + (uintptr_t)hexval(*p); p++; }
		p++;
		int readable = p[0] == 'r', writable = p[1] == 'w', priv = p[3] == 'p';
		if (readable && priv && !strstr(s, "[vvar") && !strstr(s, "[vsyscall]")) {
			own[nown].start = a; own[nown].end = b; own[nown].writable = writable;
			nown++;
		}
		if (!eol) break;
		s = eol + 1;
	}
}

/* Read every page of the probe's own mappings, write every writable one.  A page the
 * scenario unmapped or protected (a range that ran into [vdso], say) faults: it is
 * skipped, as the simulator's warm-up skips it. */
static volatile uintptr_t warm_a;

static void warm(void)
{
	for (int i = 0; i < nown; i++) {
		warm_a = own[i].start;
		if (sigsetjmp(jb, 1))
			warm_a += PAGE;         /* the page at warm_a faulted: skip it */
		in_access = 1;
		for (; warm_a < own[i].end; warm_a += PAGE) {
			volatile char *c = (volatile char *)warm_a;
			char v = *c;
			if (own[i].writable) *c = v;
		}
		in_access = 0;
	}
}

static void __attribute__((noinline)) grow_stack(void)
{
	volatile char big[STACK_PREFAULT];
	for (size_t i = 0; i < sizeof(big); i += PAGE) big[i] = 1;
	big[sizeof(big) - 1] = 1;
}

/* ---------- commands ---------- */
static void do_mmap(char *p)
{
	unsigned long len = num(tok(&p));
	int prot = prot_of(tok(&p));
	char *flags = tok(&p);
	unsigned long addr = num(tok(&p));
	char *path = tok(&p);
	unsigned long foff = num(tok(&p));
	int f = path ? 0 : MAP_ANONYMOUS, fd = -1;
	if (!flags) flags = "-";
	/* "notype": neither MAP_PRIVATE nor MAP_SHARED, which the kernel refuses (EINVAL) */
	if (has_flag(flags, "shared")) f |= MAP_SHARED;
	else if (!has_flag(flags, "notype")) f |= MAP_PRIVATE;
	if (has_flag(flags, "fixed")) f |= MAP_FIXED;
	if (has_flag(flags, "fixed_noreplace")) f |= MAP_FIXED_NOREPLACE;
	if (has_flag(flags, "noreserve")) f |= MAP_NORESERVE;
	if (has_flag(flags, "populate")) f |= MAP_POPULATE;
	if (has_flag(flags, "hugetlb")) f |= MAP_HUGETLB;
	if (has_flag(flags, "huge2m")) f |= MAP_HUGE_2MB_;
	if (has_flag(flags, "huge1g")) f |= MAP_HUGE_1GB_;
	if (path && (fd = open(path, O_RDWR)) < 0) { reply_err(errno); return; }
	void *r = mmap((void *)addr, len, prot, f, fd, (off_t)foff);
	int e = errno;
	if (fd >= 0) close(fd);
	if (r == MAP_FAILED) { reply_err(e); return; }
	put("ok "); putx((unsigned long)r); flush_line();
}

static void do_brk(char *p)
{
	char *d = tok(&p);
	long delta = (d && d[0] == '-') ? -(long)num(d + 1) : (long)num(d);
	unsigned long cur = (unsigned long)sys4(NR_brk, 0, 0, 0, 0);
	if (delta) {
		unsigned long want = cur + (unsigned long)delta;
		unsigned long got = (unsigned long)sys4(NR_brk, (long)want, 0, 0, 0);
		if (got != want) { reply_err(ENOMEM); return; }
		cur = got;
	}
	put("ok "); putx(cur); flush_line();
}

static void do_fcreate(char *p)
{
	char *kind = tok(&p);
	unsigned long size = num(tok(&p));
	char *path = tok(&p);
	int fd;
	if (!kind || !path) { reply_err(EINVAL); return; }
	if (kind[0] == 'm') {
		fd = (int)sys4(NR_memfd_create, (long)path, 0, 0, 0);
		if (fd < 0) { reply_err(-fd); return; }
		long r = sys4(NR_ftruncate, fd, (long)size, 0, 0);
		if (r < 0) { close(fd); reply_err((int)-r); return; }
	} else {
		fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
		if (fd < 0) { reply_err(errno); return; }
		/* mapsbuf is all zeros after start-up; one page per write(2) */
		for (unsigned long off = 0; off < size;) {
			size_t n = size - off < PAGE ? (size_t)(size - off) : PAGE;
			ssize_t w = write(fd, mapsbuf, n);
			if (w < 0) {
				if (errno == EINTR) continue;
				int e = errno; close(fd); reply_err(e); return;
			}
			off += (unsigned long)w;
		}
		long r = sys4(NR_fsync, fd, 0, 0, 0);
		if (r < 0) { close(fd); reply_err((int)-r); return; }
	}
	put("ok "); putu((unsigned long)fd); flush_line();
}

/* open PATH, run one system call on the fd, close */
static void do_fileop(int op, char *p)
{
	char *path = tok(&p);
	unsigned long arg = num(tok(&p));
	int fd = path ? open(path, O_RDWR) : -1;
	long r;
	if (fd < 0) { reply_err(path ? errno : EINVAL); return; }
	if (op == 't') r = sys4(NR_ftruncate, fd, (long)arg, 0, 0);
	else {
		r = sys4(NR_fsync, fd, 0, 0, 0);
		if (r >= 0) r = sys4(NR_fadvise64, fd, 0, 0, POSIX_FADV_DONTNEED);
	}
	close(fd);
	reply_sys(r);
}

static void reply_sig(int sig, unsigned long done)
{
	put("sig ");
	put(sig == SIGSEGV ? "SIGSEGV" : sig == SIGBUS ? "SIGBUS" : "SIGOTHER");
	put(" "); putx(fault_addr); put(" "); putu(done); flush_line();
}

static volatile unsigned long touched;
static long ru[18]; /* struct rusage: ru_minflt, ru_majflt are longs 8 and 9 */

static long faults_now(void)
{
	sys4(NR_getrusage, 0, (long)ru, 0, 0);
	return ru[8] + ru[9];
}

/* wait (at most ~2 s) until the disk's inflight file reads "0 ..." (with all:
 * "0 0", no write in flight either: swap-out writeback, version 3) */
static int settle_all;
static void settle(const char *inflight)
{
	static const long ts[2] = {0, 20000};
	for (int t = 0; t < 100000; t++) {
		int fd = open(inflight, O_RDONLY);
		ssize_t n = fd < 0 ? -1 : read(fd, databuf, 64);
		if (fd >= 0) close(fd);
		if (n <= 0) return;
		databuf[n] = 0;
		for (ssize_t k = 0; k < n; k++) if (databuf[k] == '\n') databuf[k] = ' ';
		char *q = (char *)databuf;
		if (!num(tok(&q)) && (!settle_all || !num(tok(&q)))) return;
		sys4(NR_nanosleep, (long)ts, 0, 0, 0);
	}
}

static void do_touch(char *p)
{
	unsigned long addr = num(tok(&p));
	unsigned long len = num(tok(&p));
	unsigned long stride = num(tok(&p));
	char *mode = tok(&p);
	char *inflight = tok(&p);
	char *all = tok(&p);
	settle_all = all && all[0] == 'a';
	int wr = mode && mode[0] == 'w';
	long f0 = inflight ? faults_now() : 0;
	if (!stride) stride = PAGE;
	touched = 0;
	int sig = sigsetjmp(jb, 1);
	if (sig) { reply_sig(sig, touched); return; }
	in_access = 1;
	unsigned long off = touched * stride;
	for (; off < len; off += stride) {
		volatile char *c = (volatile char *)(addr + off);
		if (wr) *c = 1; else (void)*c;
		touched++;
		if (inflight) {
			long f = faults_now();
			if (f != f0) { settle(inflight); f0 = f; }
		}
	}
	in_access = 0;
	put("ok "); putu(touched); flush_line();
}

static void do_write(char *p)
{
	unsigned long addr = num(tok(&p));
	char *hex = tok(&p);
	size_t n = 0;
	if (hex) for (; hex[0] && hex[1] && n < sizeof(databuf); hex += 2)
		databuf[n++] = (unsigned char)(hexval(hex[0]) * 16 + hexval(hex[1]));
	touched = 0;
	int sig = sigsetjmp(jb, 1);
	if (sig) { reply_sig(sig, touched); return; }
	in_access = 1;
	for (size_t i = touched; i < n; i++) { ((volatile char *)addr)[i] = (char)databuf[i]; touched++; }
	in_access = 0;
	reply_ok();
}

static void do_read(char *p)
{
	unsigned long addr = num(tok(&p));
	unsigned long len = num(tok(&p));
	if (len > sizeof(databuf)) len = sizeof(databuf);
	touched = 0;
	int sig = sigsetjmp(jb, 1);
	if (sig) { reply_sig(sig, touched); return; }
	in_access = 1;
	for (size_t i = touched; i < len; i++) { databuf[i] = ((volatile unsigned char *)addr)[i]; touched++; }
	in_access = 0;
	put("ok ");
	for (size_t i = 0; i < len; i++) {
		out[o++] = "0123456789abcdef"[databuf[i] >> 4];
		out[o++] = "0123456789abcdef"[databuf[i] & 15];
	}
	flush_line();
}

static void do_fork(char *p)
{
	char *cmdp = tok(&p), *respp = tok(&p);
	if (!cmdp || !respp) { reply_err(EINVAL); return; }
	pid_t pid = fork();
	if (pid < 0) { reply_err(errno); return; }
	if (pid == 0) {
		warm();
		int c = open(cmdp, O_RDONLY);
		int r = open(respp, O_WRONLY);
		if (c < 0 || r < 0) _exit(5);
		/* drop the parent's channels (stdin/stdout for main) so that the
		 * controller sees EOF when the parent exits */
		close(cmd_fd);
		close(resp_fd);
		cmd_fd = c; resp_fd = r;
		inlen = 0;
		put("ready "); putu((unsigned long)getpid()); flush_line();
		return;
	}
	warm();
	put("ok "); putu((unsigned long)pid); flush_line();
}

static int next_line(void)
{
	for (;;) {
		char *nl = memchr(inbuf, '\n', inlen);
		if (nl) {
			size_t l = (size_t)(nl - inbuf);
			if (l >= sizeof(line)) l = sizeof(line) - 1;
			memcpy(line, inbuf, l);
			line[l] = 0;
			size_t rest = inlen - (size_t)(nl - inbuf) - 1;
			memmove(inbuf, nl + 1, rest);
			inlen = rest;
			return 1;
		}
		if (inlen >= sizeof(inbuf)) inlen = 0;
		ssize_t r = read(cmd_fd, inbuf + inlen, sizeof(inbuf) - inlen);
		if (r < 0 && errno == EINTR) continue;
		if (r <= 0) return 0;
		inlen += (size_t)r;
	}
}

int main(int argc, char **argv)
{
	struct sigaction sa;
	(void)argc;
	/* ASLR off for the probe (like setarch -R): the probe's own layout, and so
	 * whether a scenario mapping shares page tables with it, is the same every run. */
	int pers = personality(0xffffffff);
	if (pers != -1 && !(pers & ADDR_NO_RANDOMIZE)) {
		personality((unsigned long)pers | ADDR_NO_RANDOMIZE);
		execv("/proc/self/exe", argv);
	}
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_signal;
	sa.sa_flags = SA_SIGINFO | SA_NODEFER;
	sigaction(SIGSEGV, &sa, 0);
	sigaction(SIGBUS, &sa, 0);
	signal(SIGCHLD, SIG_IGN);          /* children are reaped by the kernel */
	signal(SIGPIPE, SIG_IGN);
	prctl(PR_SET_THP_DISABLE, 0, 0, 0, 0); /* the controller disables THP for itself */
	prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);

	grow_stack();
	memset(inbuf, 0, sizeof(inbuf));
	memset(line, 0, sizeof(line));
	memset(out, 0, sizeof(out));
	memset(databuf, 0, sizeof(databuf));
	record_own_ranges();
	memset(mapsbuf, 0, sizeof(mapsbuf)); /* from now on: the zero source for fcreate */
	warm();
	warm();

	put("ready "); putu((unsigned long)getpid()); flush_line();
	while (next_line()) {
		char *p = line;
		char *cmd = tok(&p);
		if (!cmd) continue;
		if (!strcmp(cmd, "mmap")) do_mmap(p);
		else if (!strcmp(cmd, "munmap")) {
			unsigned long a = num(tok(&p)), l = num(tok(&p));
			if (munmap((void *)a, l)) reply_err(errno); else reply_ok();
		} else if (!strcmp(cmd, "mprotect")) {
			unsigned long a = num(tok(&p)), l = num(tok(&p));
			int pr = prot_of(tok(&p));
			if (mprotect((void *)a, l, pr)) reply_err(errno); else reply_ok();
		} else if (!strcmp(cmd, "madvise")) {
			unsigned long a = num(tok(&p)), l = num(tok(&p));
			char *adv = tok(&p);
			int ad = adv ? advice_of(adv) : -1;
			if (ad < 0) reply_err(EINVAL);
			else if (madvise((void *)a, l, ad)) reply_err(errno);
			else reply_ok();
		} else if (!strcmp(cmd, "touch")) do_touch(p);
		else if (!strcmp(cmd, "write")) do_write(p);
		else if (!strcmp(cmd, "read")) do_read(p);
		else if (!strcmp(cmd, "fork")) do_fork(p);
		else if (!strcmp(cmd, "mremap")) {
			unsigned long a = num(tok(&p)), ol = num(tok(&p)), nl = num(tok(&p));
			unsigned long fl = num(tok(&p)), na = num(tok(&p));
			long r = sys5(NR_mremap, (long)a, (long)ol, (long)nl, (long)fl, (long)na);
			if (r < 0 && r > -4096) reply_err((int)-r);
			else { put("ok "); putx((unsigned long)r); flush_line(); }
		} else if (!strcmp(cmd, "mlock")) {
			unsigned long a = num(tok(&p)), l = num(tok(&p)), fl = num(tok(&p));
			reply_sys(fl ? sys4(NR_mlock2, (long)a, (long)l, (long)fl, 0)
				     : sys4(NR_mlock, (long)a, (long)l, 0, 0));
		} else if (!strcmp(cmd, "munlock")) {
			unsigned long a = num(tok(&p)), l = num(tok(&p));
			reply_sys(sys4(NR_munlock, (long)a, (long)l, 0, 0));
		} else if (!strcmp(cmd, "mlockall")) reply_sys(sys4(NR_mlockall, (long)num(tok(&p)), 0, 0, 0));
		else if (!strcmp(cmd, "munlockall")) reply_sys(sys4(NR_munlockall, 0, 0, 0, 0));
		else if (!strcmp(cmd, "msync")) {
			unsigned long a = num(tok(&p)), l = num(tok(&p)), fl = num(tok(&p));
			reply_sys(sys4(NR_msync, (long)a, (long)l, (long)fl, 0));
		} else if (!strcmp(cmd, "brk")) do_brk(p);
		else if (!strcmp(cmd, "fcreate")) do_fcreate(p);
		else if (!strcmp(cmd, "close")) { close((int)num(tok(&p))); reply_ok(); }
		else if (!strcmp(cmd, "ftrunc")) do_fileop('t', p);
		else if (!strcmp(cmd, "fadv")) do_fileop('f', p);
		else if (!strcmp(cmd, "unlink")) { char *path = tok(&p); reply_sys(path ? sys4(NR_unlink, (long)path, 0, 0, 0) : -EINVAL); }
		else if (!strcmp(cmd, "warm")) { warm(); reply_ok(); }
		else if (!strcmp(cmd, "ping")) { put("ok "); putu((unsigned long)getpid()); flush_line(); }
		else if (!strcmp(cmd, "exit")) _exit(0);
		else reply_err(ENOSYS);
	}
	_exit(0);
}
