/*
 * tlbsim: a straightforward C implementation of the reference trace model of
 * spec/trace-model.md (the baseline of benchmarks/bench_trace.py).
 *
 * Reads a .pwt trace (little-endian uint64 words: bits 0..56 the virtual address,
 * bits 62..63 the kind, 0 load / 1 store / 2 ifetch) and replays it through the
 * reference TLB hierarchy and page-walk caches with every page of one size, with
 * demand paging (first touch of a page = one fault), and prints the report counters
 * as one JSON object. Same replacement rule as pagewalk's lru_table.py: true LRU by
 * stamps from one clock, invalid ways have stamp 0, the smallest stamp is replaced,
 * the lowest way on a tie. Mapped pages: an open-addressing hash set.
 *
 *   gcc -O2 -o tlbsim tlbsim.c && ./tlbsim TRACE.pwt [4KiB|2MiB|1GiB]
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define VA_MASK ((1ULL << 57) - 1)

typedef struct {
    int sets, ways;
    int64_t *tags;      /* -1 = invalid */
    uint64_t *stamps;   /* 0 = invalid */
} table_t;

static uint64_t tlb_clock, pwc_clock;

static void table_init(table_t *t, int entries, int ways)
{
    t->ways = ways;
    t->sets = entries / ways;
    t->tags = malloc(sizeof(int64_t) * entries);
    t->stamps = calloc(entries, sizeof(uint64_t));
    for (int i = 0; i < entries; i++)
        t->tags[i] = -1;
}

static int table_lookup(table_t *t, uint64_t number, int64_t tag, uint64_t *clock)
{
    size_t base = (size_t)(number % (uint64_t)t->sets) * t->ways;
    for (int w = 0; w < t->ways; w++) {
        if (t->tags[base + w] == tag) {
            t->stamps[base + w] = ++*clock;
            return 1;
        }
    }
    return 0;
}

static void table_fill(table_t *t, uint64_t number, int64_t tag, uint64_t *clock)
{
    size_t base = (size_t)(number % (uint64_t)t->sets) * t->ways;
    size_t victim = base;
    for (int w = 0; w < t->ways; w++) {
        if (t->tags[base + w] == tag) {
            victim = base + w;
            break;
        }
        if (t->stamps[base + w] < t->stamps[victim])
            victim = base + w;
    }
    t->tags[victim] = tag;
    t->stamps[victim] = ++*clock;
}

/* ---- the set of mapped pages ---------------------------------------------------- */
static int64_t *mapped;
static uint64_t mapped_mask, mapped_count;

static uint64_t slot_of(int64_t key)
{
    int64_t h = ((key & 0x7FFFFFFF) * 0x5BD1E995LL) ^ ((key >> 31) * 0x1B873593LL);
    return (uint64_t)((h >> 24) ^ h) & mapped_mask;
}

static int mapped_insert(int64_t key)
{
    uint64_t s = slot_of(key);
    while (mapped[s] != -1) {
        if (mapped[s] == key)
            return 0;
        s = (s + 1) & mapped_mask;
    }
    mapped[s] = key;
    mapped_count++;
    return 1;
}

static void mapped_grow(void)
{
    int64_t *old = mapped;
    uint64_t old_size = mapped_mask + 1;
    mapped_mask = old_size * 2 - 1;
    mapped = malloc(sizeof(int64_t) * (mapped_mask + 1));
    memset(mapped, 0xff, sizeof(int64_t) * (mapped_mask + 1));
    mapped_count = 0;
    for (uint64_t i = 0; i < old_size; i++)
        if (old[i] != -1)
            mapped_insert(old[i]);
    free(old);
}

/* ---- the reference model ------------------------------------------------------------ */
enum { L1D_4K, L1D_2M, L1D_1G, L1I_4K, L1I_2M, STLB_4K2M, STLB_1G, NR_TABLES };
static table_t tlb[NR_TABLES];
static table_t pwc[3];                 /* PML4E, PDPTE, PDE */
static const int pwc_shift[3] = {39, 30, 21};
static uint64_t c_accesses, c_kind[3], c_l1, c_stlb, c_walks, c_refs, c_faults, c_pwc[3];

static int64_t pwc_key(uint64_t va, int level)
{
    return (int64_t)((va >> pwc_shift[level]) & ((1ULL << (48 - pwc_shift[level])) - 1));
}

static void access_one(uint64_t va, int kind, int shift)
{
    int code = (shift - 12) / 9;
    uint64_t vpn = (va & VA_MASK) >> shift;
    int64_t tag = (int64_t)(vpn | ((uint64_t)code << 45));
    int l1 = kind == 2 ? (code == 0 ? L1I_4K : code == 1 ? L1I_2M : -1)
                       : (code == 0 ? L1D_4K : code == 1 ? L1D_2M : L1D_1G);
    int l2 = code == 2 ? STLB_1G : STLB_4K2M;

    c_accesses++;
    c_kind[kind]++;
    if (l1 >= 0 && table_lookup(&tlb[l1], vpn, tag, &tlb_clock)) {
        c_l1++;
        return;
    }
    if (table_lookup(&tlb[l2], vpn, tag, &tlb_clock)) {
        c_stlb++;
        if (l1 >= 0)
            table_fill(&tlb[l1], vpn, tag, &tlb_clock);
        return;
    }
    c_walks++;
    if ((mapped_count + 1) * 2 > mapped_mask + 1)
        mapped_grow();
    if (mapped_insert((int64_t)((vpn << 2) | (uint64_t)code)))
        c_faults++;
    /* page-walk caches: from the level above the leaf up to PML4E */
    int leaf = 3 - code;               /* 3 PTE, 2 PDE, 1 PDPTE (levels from PML4 = 0) */
    int first_read = 0;
    for (int level = leaf - 1; level >= 0; level--) {
        if (table_lookup(&pwc[level], 0, pwc_key(va, level), &pwc_clock)) {
            c_pwc[level]++;
            first_read = level + 1;
            break;
        }
    }
    for (int level = first_read; level < leaf; level++)
        table_fill(&pwc[level], 0, pwc_key(va, level), &pwc_clock);
    c_refs += (uint64_t)(leaf - first_read + 1);
    table_fill(&tlb[l2], vpn, tag, &tlb_clock);
    if (l1 >= 0)
        table_fill(&tlb[l1], vpn, tag, &tlb_clock);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s TRACE.pwt [4KiB|2MiB|1GiB]\n", argv[0]);
        return 2;
    }
    int shift = 12;
    if (argc > 2)
        shift = !strcmp(argv[2], "2MiB") ? 21 : !strcmp(argv[2], "1GiB") ? 30 : 12;
    table_init(&tlb[L1D_4K], 64, 4);
    table_init(&tlb[L1D_2M], 32, 4);
    table_init(&tlb[L1D_1G], 4, 4);
    table_init(&tlb[L1I_4K], 128, 8);
    table_init(&tlb[L1I_2M], 8, 8);
    table_init(&tlb[STLB_4K2M], 1536, 12);
    table_init(&tlb[STLB_1G], 16, 4);
    table_init(&pwc[0], 4, 4);
    table_init(&pwc[1], 4, 4);
    table_init(&pwc[2], 32, 32);
    mapped_mask = (1 << 16) - 1;
    mapped = malloc(sizeof(int64_t) << 16);
    memset(mapped, 0xff, sizeof(int64_t) << 16);

    FILE *f = fopen(argv[1], "rb");
    if (!f) {
        perror(argv[1]);
        return 2;
    }
    enum { CHUNK = 1 << 16 };
    static uint64_t buf[CHUNK];
    size_t n;
    while ((n = fread(buf, sizeof(uint64_t), CHUNK, f)) > 0) {
        for (size_t i = 0; i < n; i++) {
            uint64_t word = buf[i];
            access_one(word & VA_MASK, (int)(word >> 62), shift);
        }
    }
    fclose(f);
    printf("{\"accesses\": %llu, \"loads\": %llu, \"stores\": %llu, \"ifetches\": %llu, "
           "\"l1_hits\": %llu, \"stlb_hits\": %llu, \"walks\": %llu, \"walk_refs\": %llu, "
           "\"pwc_hits_pml4e\": %llu, \"pwc_hits_pdpte\": %llu, \"pwc_hits_pde\": %llu, "
           "\"faults\": %llu}\n",
           (unsigned long long)c_accesses, (unsigned long long)c_kind[0],
           (unsigned long long)c_kind[1], (unsigned long long)c_kind[2],
           (unsigned long long)c_l1, (unsigned long long)c_stlb,
           (unsigned long long)c_walks, (unsigned long long)c_refs,
           (unsigned long long)c_pwc[0], (unsigned long long)c_pwc[1],
           (unsigned long long)c_pwc[2], (unsigned long long)c_faults);
    return 0;
}
