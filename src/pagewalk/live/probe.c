/*
 * probe.c - executes one pagewalk scenario's memory steps on the real kernel.
 *
 * pagewalk's live runner (src/pagewalk/live) builds this file with `gcc -O2 -static`
 * and drives it; it is the kernel oracle's probe (shared/oracle/probe.c) with one
 * addition, the "notype" mmap flag.  Keep the code small and unchanged otherwise: the
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
 *   touch ADDR LEN STRIDE r|w   -> "ok N" | "sig SIGSEGV ADDR N" (N accesses done);
 *                               a write access stores the byte 0x01
 *   write ADDR HEX              -> "ok" | "sig ..."
 *   read ADDR LEN               -> "ok HEX" | "sig ..."
 *   fork CMDFIFO RESPFIFO       -> parent "ok CHILDPID"; the child opens the
 *                                  FIFOs and answers "ready PID" there
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
static volatile int warm_i;
static volatile uintptr_t warm_a;

static void warm(void)
{
	warm_i = 0;
	warm_a = nown ? own[0].start : 0;
	if (sigsetjmp(jb, 1))
		warm_a += PAGE;                 /* the page at warm_a faulted: skip it */
	in_access = 1;
	for (; warm_i < nown; warm_i++, warm_a = warm_i < nown ? own[warm_i].start : 0) {
		for (; warm_a < own[warm_i].end; warm_a += PAGE) {
			volatile char *c = (volatile char *)warm_a;
			char v = *c;
			if (own[warm_i].writable) *c = v;
		}
	}
	in_access = 0;
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
	int f = MAP_ANONYMOUS;
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
	void *r = mmap((void *)addr, len, prot, f, -1, 0);
	if (r == MAP_FAILED) { reply_err(errno); return; }
	put("ok "); putx((unsigned long)r); flush_line();
}

static void reply_sig(int sig, unsigned long done)
{
	put("sig ");
	put(sig == SIGSEGV ? "SIGSEGV" : sig == SIGBUS ? "SIGBUS" : "SIGOTHER");
	put(" "); putx(fault_addr); put(" "); putu(done); flush_line();
}

static volatile unsigned long touched;

static void do_touch(char *p)
{
	unsigned long addr = num(tok(&p));
	unsigned long len = num(tok(&p));
	unsigned long stride = num(tok(&p));
	char *mode = tok(&p);
	int wr = mode && mode[0] == 'w';
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
		else if (!strcmp(cmd, "warm")) { warm(); reply_ok(); }
		else if (!strcmp(cmd, "ping")) { put("ok "); putu((unsigned long)getpid()); flush_line(); }
		else if (!strcmp(cmd, "exit")) _exit(0);
		else reply_err(ENOSYS);
	}
	_exit(0);
}
