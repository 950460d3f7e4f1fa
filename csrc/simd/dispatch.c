/*
 * dispatch.c -- pick the kernel table once, from what the CPU and the OS allow.
 *
 * CPUID says what the CPU implements; XGETBV says whether the OS saves the
 * YMM/ZMM registers across context switches, without which the wide
 * instructions fault.  Both must agree before a level is used.  The result
 * is computed once under pthread_once, so every accessor calls init first
 * and no caller has to remember to.
 *
 * The AVX-512 table is copied into writable storage at init so that its
 * hamming slot can fall back to the AVX2 kernel on CPUs with AVX-512 but no
 * VPOPCNTDQ (Skylake-X, Cascade Lake): the kernel files stay free of
 * run-time checks.  Likewise the AVX2 table is copied so that its float16
 * kernels (which need F16C) fall back to the serial ones on a CPU without
 * F16C, and the AVX-512 table takes the float16 / int8 kernels of the AVX2
 * level, which has the only wide versions of them.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "simd.h"

#if defined(__x86_64__)
#include <cpuid.h>
#endif

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static isx_cpu_features cpu;
static isx_isa supported_level = ISX_ISA_SERIAL;
static isx_isa active_level = ISX_ISA_SERIAL;
#if defined(__x86_64__)
static isx_kernels avx2_table, avx512_table;
#endif

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
#if defined(__x86_64__)
    detect_cpu();
    if (cpu.avx2 && cpu.fma && cpu.popcnt && cpu.os_avx) {
        supported_level = ISX_ISA_AVX2;
        if (cpu.avx512f && cpu.avx512bw && cpu.avx512dq && cpu.avx512vl && cpu.os_avx512)
            supported_level = ISX_ISA_AVX512;
    }
    avx2_table = isx_kernels_avx2;
    if (!cpu.f16c)
        memcpy(avx2_table.dist_f16, isx_kernels_serial.dist_f16, sizeof(avx2_table.dist_f16));
    avx512_table = isx_kernels_avx512;
    memcpy(avx512_table.dist_f16, avx2_table.dist_f16, sizeof(avx512_table.dist_f16));
    memcpy(avx512_table.dist_i8, avx2_table.dist_i8, sizeof(avx512_table.dist_i8));
    if (!cpu.avx512vpopcntdq)
        avx512_table.dist[ISX_METRIC_HAMMING] = isx_kernels_avx2.dist[ISX_METRIC_HAMMING];
#endif
    active_level = supported_level;
    const char *env = getenv("IMGSEARCH_SIMD");
    if (env) {
        for (int i = 0; i < ISX_ISA_COUNT; i++)
            if (strcmp(env, isx_isa_name((isx_isa)i)) == 0 && (isx_isa)i < active_level)
                active_level = (isx_isa)i;
    }
}

void isx_simd_init(void)
{
    pthread_once(&init_once, init);
}

isx_isa isx_simd_level(void)
{
    isx_simd_init();
    return active_level;
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
    switch (isa) {
#if defined(__x86_64__)
    case ISX_ISA_AVX2:
        return &avx2_table;
    case ISX_ISA_AVX512:
        return &avx512_table;
#endif
    default:
        return &isx_kernels_serial;
    }
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
