/* Instruction-set variants of the kernels and their run-time selection.
 *
 * Every vector kernel is compiled with a function-level target attribute (QK_AVX2_FN,
 * QK_AVX512_FN), so one build holds every variant whatever -march it was given, and the
 * best variant this CPU supports is chosen when the extension is imported (CPUID through
 * __builtin_cpu_supports, which also checks that the OS saves the vector registers).
 * qpack/kernel_info.py forces a variant with QPACK_ISA=ref|avx2|avx512|neon and reports
 * the choice (qpack.kernel_info()).
 *
 * Levels (on x86-64 each a superset of the one before):
 *   QK_ISA_REF     portable C (what the compiler makes of it with the build's flags);
 *   QK_ISA_AVX2    AVX2 + FMA + BMI2 (Haswell, Zen 1 and later);
 *   QK_ISA_AVX512  AVX-512 F/BW/VL/DQ + VNNI + VBMI (Ice Lake, Zen 4 and later);
 *   QK_ISA_NEON    AArch64 Advanced SIMD (every AArch64 CPU); the int8 dot products use
 *                  sdot where the CPU has dotprod (HWCAP_ASIMDDP), checked at run time.
 * Skylake-X (AVX-512 without VNNI/VBMI) runs the AVX2 variant. x86 CPUs never support
 * QK_ISA_NEON and AArch64 CPUs never support the AVX levels.
 */
#ifndef QK_ISA_H
#define QK_ISA_H

#include <stdint.h>

enum { QK_ISA_REF = 0, QK_ISA_AVX2 = 1, QK_ISA_AVX512 = 2, QK_ISA_NEON = 3, QK_ISA_COUNT = 4 };

/* Every kernel function is static (one copy per extension module), and not every module
   calls every one. */
#define QK_FN static __attribute__((unused))

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define QK_X86 1
#include <immintrin.h>
/* A target attribute adds to the command line's ISA: on a -march=native build for an
   AVX-512 CPU the AVX2 variant may use EVEX encodings and ymm16-31 too. Taking them away
   ("no-avx512f") is not possible there: GCC then refuses to inline the intrinsics, which
   that build compiles for the native ISA. So the AVX2 variant is exactly AVX2 only in a
   portable build (QPACK_PORTABLE=1), which is where it is benchmarked. */
#define QK_AVX2_TARGET "avx2,fma,bmi,bmi2,popcnt"
#define QK_AVX512_TARGET \
    "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512vbmi,avx2,fma,bmi,bmi2,popcnt"
#define QK_AVX2_FN static __attribute__((unused, target(QK_AVX2_TARGET)))
#define QK_AVX2_INL static inline __attribute__((always_inline, target(QK_AVX2_TARGET)))
#define QK_AVX512_FN static __attribute__((unused, target(QK_AVX512_TARGET)))
#define QK_AVX512_INL static inline __attribute__((always_inline, target(QK_AVX512_TARGET)))
#else
#define QK_X86 0
#endif

#if defined(__aarch64__) && (defined(__GNUC__) || defined(__clang__))
#define QK_ARM64 1
#include <arm_neon.h>
/* Advanced SIMD is part of the AArch64 base ISA, so the NEON kernels need no target
   attribute; only the sdot kernels do (dotprod is optional before Armv8.4). */
#define QK_NEON_FN static __attribute__((unused))
#define QK_NEON_INL static inline __attribute__((always_inline))
#if defined(__clang__)
#define QK_NEON_DOT_TARGET "dotprod"
#else
/* GCC declares vdotq_s32 under arch=armv8.2-a+dotprod: a plain "+dotprod" on an armv8-a
   build does not cover it ("target specific option mismatch") */
#define QK_NEON_DOT_TARGET "arch=armv8.2-a+dotprod"
#endif
#define QK_NEON_DOT_FN static __attribute__((unused, target(QK_NEON_DOT_TARGET)))
#define QK_NEON_DOT_INL static inline __attribute__((always_inline, target(QK_NEON_DOT_TARGET)))
#if defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMD
#define HWCAP_ASIMD (1UL << 1)
#endif
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1UL << 20)
#endif
/* The kernel's view of the CPU (AT_HWCAP): whether the OS supports the registers too. */
QK_FN int qk_neon_supported(void) { return (getauxval(AT_HWCAP) & HWCAP_ASIMD) != 0; }
QK_FN int qk_neon_dotprod(void) { return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0; }
#else
/* Elsewhere (no getauxval): Advanced SIMD is architectural; dotprod is not assumed. */
QK_FN int qk_neon_supported(void) { return 1; }
QK_FN int qk_neon_dotprod(void) { return 0; }
#endif
#else
#define QK_ARM64 0
#endif

/* 1 if this CPU (and OS) can run variant isa. */
QK_FN int qk_isa_supported(int isa) {
    if (isa == QK_ISA_REF) return 1;
#if QK_X86
    __builtin_cpu_init();
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
               && __builtin_cpu_supports("bmi2");
    if (isa == QK_ISA_AVX2) return avx2;
    if (isa == QK_ISA_AVX512)
        return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
               && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")
               && __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vbmi");
#endif
#if QK_ARM64
    if (isa == QK_ISA_NEON) return qk_neon_supported();
#endif
    return 0;
}

/* The compiler flags the extension was built with (setup.py defines QK_BUILD_FLAGS). */
#ifndef QK_BUILD_FLAGS
#define QK_BUILD_FLAGS "unknown"
#endif
QK_FN const char *qk_build_flags(void) { return QK_BUILD_FLAGS; }

/* omp_get_max_threads() when the build has OpenMP (it follows OMP_NUM_THREADS and
   omp_set_num_threads, which is what threadpoolctl calls), else 1. */
#ifdef _OPENMP
#include <omp.h>
QK_FN int qk_omp_max_threads(void) { return omp_get_max_threads(); }
#else
QK_FN int qk_omp_max_threads(void) { return 1; }
#endif

QK_FN int qk_isa_best(void) {
    for (int isa = QK_ISA_COUNT - 1; isa > QK_ISA_REF; isa--)
        if (qk_isa_supported(isa)) return isa;
    return QK_ISA_REF;
}

#endif
