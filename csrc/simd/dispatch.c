/*
 * dispatch.c -- build the kernel tables once, from what the CPU and the OS
 * allow, and pick the level in use.
 *
 * CPUID says what the CPU implements; XGETBV says whether the OS saves the
 * YMM/ZMM registers across context switches, without which the wide
 * instructions fault.  Both must agree before a level is used.  The result
 * is computed once under pthread_once, so every accessor calls init first
 * and no caller has to remember to.
 *
 * The table of level L is built slot by slot: the kernel of the highest
 * level <= L whose raw table (internal.h) has one.  Raw tables that need a
 * feature beyond their level's baseline (AVX-512 VPOPCNTDQ) are laid over
 * their level only where the CPU has it.  The slot list below is the one
 * description of the table's layout that the builder, capabilities() and
 * the tests share; a slot is a run of bytes whose first member is a
 * function pointer, NULL when the raw table has no kernel there.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#if defined(__x86_64__)
#include <cpuid.h>
#endif

typedef struct {
    const char *name;
    size_t offset, size;
} slot_desc;

#define SLOT(member, name) {name, offsetof(isx_kernels, member), sizeof(((isx_kernels *)0)->member)}
static const slot_desc slots[] = {
    SLOT(dist[ISX_METRIC_L2], "l2sq_f32"),
    SLOT(dist[ISX_METRIC_IP], "ip_f32"),
    SLOT(dist[ISX_METRIC_COSINE], "cosine_f32"),
    SLOT(dist[ISX_METRIC_L1], "l1_f32"),
    SLOT(dist[ISX_METRIC_HAMMING], "hamming_u8"),
    SLOT(sqnorm, "sqnorm_f32"),
    SLOT(dot, "dot_f32"),
    SLOT(dist_f16[ISX_METRIC_L2], "l2sq_f16"),
    SLOT(dist_f16[ISX_METRIC_IP], "ip_f16"),
    SLOT(dist_f16[ISX_METRIC_COSINE], "cosine_f16"),
    SLOT(dist_f16[ISX_METRIC_L1], "l1_f16"),
    SLOT(dist_i8[ISX_METRIC_L2], "l2sq_i8"),
    SLOT(dist_i8[ISX_METRIC_IP], "ip_i8"),
    SLOT(dist_i8[ISX_METRIC_COSINE], "cosine_i8"),
    SLOT(dist_i8[ISX_METRIC_L1], "l1_i8"),
    SLOT(bounded[ISX_METRIC_L2], "l2sq_bounded_f32"),
    SLOT(bounded[ISX_METRIC_L1], "l1_bounded_f32"),
    SLOT(fused, "fused_dot_topk_f32"),
    SLOT(select, "select_topk_f32"),
    SLOT(kd_dists, "kdleaf_f32"),
    SLOT(kd_dists_ptrs, "kdleaf_ptrs_f32"),
    SLOT(f16_to_f32, "f16_to_f32"),
    SLOT(crc32c, "crc32c_u8"),
    SLOT(pq_lut_ip, "pq_lut_ip_f32"),
    SLOT(pq8_scan, "pq8_scan_f32"),
    SLOT(pq4_scan, "pq4_scan_u8"),
    SLOT(pq4_quantize, "pq4_quantize_f32"),
    SLOT(nearest_small, "nearest_small_f32"),
};
#define NSLOTS (sizeof(slots) / sizeof(slots[0]))

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static isx_cpu_features cpu;
static isx_isa supported_level = ISX_ISA_SERIAL;
static _Atomic int active_level = ISX_ISA_SERIAL;
static isx_kernels tables[ISX_ISA_COUNT];
static signed char origin[ISX_ISA_COUNT][NSLOTS];

static int slot_filled(const isx_kernels *t, size_t i)
{
    void (*fn)(void);
    memcpy(&fn, (const char *)t + slots[i].offset, sizeof(fn));
    return fn != NULL;
}

/* Lay the kernels `raw` has over table `level`. */
static void overlay(isx_isa level, const isx_kernels *raw, isx_isa from)
{
    for (size_t i = 0; i < NSLOTS; i++)
        if (slot_filled(raw, i)) {
            memcpy((char *)&tables[level] + slots[i].offset, (const char *)raw + slots[i].offset, slots[i].size);
            origin[level][i] = (signed char)from;
        }
}

#if defined(__x86_64__)
static uint64_t read_xcr0(void)
{
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

static void detect_cpu(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid_count(1, 0, &a, &b, &c, &d))
        return;
    cpu.fma = (int)((c >> 12) & 1);
    cpu.sse42 = (int)((c >> 20) & 1);
    cpu.popcnt = (int)((c >> 23) & 1);
    cpu.avx = (int)((c >> 28) & 1);
    cpu.f16c = (int)((c >> 29) & 1);
    if ((c >> 27) & 1) { /* OSXSAVE: only then is XGETBV itself legal */
        uint64_t xcr0 = read_xcr0();
        cpu.os_avx = (xcr0 & 0x6) == 0x6;     /* XMM + YMM state */
        cpu.os_avx512 = (xcr0 & 0xE6) == 0xE6; /* + opmask, ZMM0-15 hi, ZMM16-31 */
    }
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
        return;
    cpu.avx2 = (int)((b >> 5) & 1);
    cpu.avx512f = (int)((b >> 16) & 1);
    cpu.avx512dq = (int)((b >> 17) & 1);
    cpu.avx512bw = (int)((b >> 30) & 1);
    cpu.avx512vl = (int)((b >> 31) & 1);
    cpu.avx512vnni = (int)((c >> 11) & 1);
    cpu.avx512vpopcntdq = (int)((c >> 14) & 1);
    cpu.avx512fp16 = (int)((d >> 23) & 1);
}
#endif

static void init(void)
{
    isx_crc32c_init();
#if defined(__x86_64__)
    detect_cpu();
    if (cpu.avx2 && cpu.fma && cpu.f16c && cpu.popcnt && cpu.sse42 && cpu.os_avx) {
        supported_level = ISX_ISA_AVX2;
        if (cpu.avx512f && cpu.avx512bw && cpu.avx512dq && cpu.avx512vl && cpu.os_avx512)
            supported_level = ISX_ISA_AVX512;
    }
#endif
    memset(origin, -1, sizeof(origin));
    for (int level = 0; level <= (int)supported_level; level++) {
        if (level > 0) {
            tables[level] = tables[level - 1];
            memcpy(origin[level], origin[level - 1], sizeof(origin[level]));
        }
        switch (level) {
        case ISX_ISA_SERIAL:
            overlay(ISX_ISA_SERIAL, &isx_raw_serial, ISX_ISA_SERIAL);
            break;
#if defined(__x86_64__)
        case ISX_ISA_AVX2:
            overlay(ISX_ISA_AVX2, &isx_raw_avx2, ISX_ISA_AVX2);
            break;
        case ISX_ISA_AVX512:
            overlay(ISX_ISA_AVX512, &isx_raw_avx512, ISX_ISA_AVX512);
            if (cpu.avx512vpopcntdq)
                overlay(ISX_ISA_AVX512, &isx_raw_avx512_vpopcntdq, ISX_ISA_AVX512);
            break;
#endif
        default:
            break;
        }
    }
    int level = (int)supported_level;
    const char *env = getenv("IMGSEARCH_SIMD");
    if (env) {
        for (int i = 0; i < ISX_ISA_COUNT; i++)
            if (strcmp(env, isx_isa_name((isx_isa)i)) == 0 && i < level)
                level = i;
    }
    atomic_store(&active_level, level);
}

void isx_simd_init(void)
{
    pthread_once(&init_once, init);
}

isx_isa isx_simd_level(void)
{
    isx_simd_init();
    return (isx_isa)atomic_load_explicit(&active_level, memory_order_relaxed);
}

int isx_simd_set_level(isx_isa level)
{
    isx_simd_init();
    if ((unsigned)level > (unsigned)supported_level)
        return isx_error(ISX_EINVAL, "this CPU supports SIMD levels up to %s, found %s",
                         isx_isa_name(supported_level), isx_isa_name(level));
    atomic_store(&active_level, (int)level);
    return ISX_OK;
}

isx_isa isx_simd_supported(void)
{
    isx_simd_init();
    return supported_level;
}

const char *isx_isa_name(isx_isa isa)
{
    switch (isa) {
    case ISX_ISA_SERIAL:
        return "serial";
    case ISX_ISA_AVX2:
        return "avx2";
    case ISX_ISA_AVX512:
        return "avx512";
    default:
        return "unknown";
    }
}

const isx_kernels *isx_kernels_for(isx_isa isa)
{
    isx_simd_init();
    if ((unsigned)isa > (unsigned)supported_level) /* also rejects negatives */
        return NULL;
    return &tables[isa];
}

size_t isx_kernel_slot_count(void)
{
    return NSLOTS;
}

const char *isx_kernel_slot_name(size_t i)
{
    return i < NSLOTS ? slots[i].name : NULL;
}

int isx_kernel_origin(isx_isa level, size_t i)
{
    isx_simd_init();
    if ((unsigned)level > (unsigned)supported_level || i >= NSLOTS)
        return -1;
    return origin[level][i];
}

const isx_kernels *isx_kernels_active(void)
{
    return isx_kernels_for(isx_simd_level());
}

const isx_cpu_features *isx_cpu(void)
{
    isx_simd_init();
    return &cpu;
}

size_t isx_fused_packed_size(size_t m, size_t d, size_t panel)
{
    size_t panels = (m + panel - 1) / panel;
    return panels * d * panel;
}

void isx_fused_pack(const float *Q, size_t m, size_t d, float alpha, size_t panel, float *packed)
{
    memset(packed, 0, isx_fused_packed_size(m, d, panel) * sizeof(float));
    for (size_t q = 0; q < m; q++) {
        float *p = packed + (q / panel) * d * panel;
        size_t lane = q % panel;
        for (size_t j = 0; j < d; j++)
            p[j * panel + lane] = alpha * Q[q * d + j];
    }
}
