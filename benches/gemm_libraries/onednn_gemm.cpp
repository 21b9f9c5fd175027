// Benchmarks oneDNN's matmul primitive on ModernBERT linear layers: y = x·Wᵀ, x m×k row-major
// activations, W n×k (PyTorch layout), in f32, bf16 (f32 out) and int8 (u8·s8 -> s32 out).
// Prints GFLOP/s = 2mkn / best-of-reps time (after one warm-up) plus a correctness check.
// "bf16 from f32" also times the f32 -> bf16 reorder of x, as an engine with f32 activations pays.
// Run: benches/gemm_libraries/run_onednn.sh [reps]   (builds, runs default ISA then AMX)
#include <oneapi/dnnl/dnnl.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <set>
#include <string>

struct Shape { long m, k, n; };
static const Shape kShapes[] = {
    // ModernBERT-base: Wqkv, Wo, mlp Wo (Wi has Wqkv's shape), then two small-m batches
    {4096, 768, 2304}, {4096, 768, 768}, {4096, 1152, 768}, {333, 768, 2304}, {100, 768, 768},
    // ModernBERT-large: Wqkv, Wo, Wi, mlp Wo
    {4096, 1024, 3072}, {4096, 1024, 1024}, {4096, 1024, 5248}, {4096, 2624, 1024},
};

using namespace dnnl;
using dt = memory::data_type;
using tag = memory::format_tag;

enum Prec { F32, BF16, BF16_FROM_F32, INT8, NPREC };
static const char *kPrecName[] = {"f32", "bf16", "bf16 from f32", "int8"};
struct Types { dt src, wei, dst; };
// bf16 writes f32 (what an inference engine wants); int8 is u8 activations x s8 weights -> s32.
static const Types kTypes[] = {{dt::f32, dt::f32, dt::f32},
                               {dt::bf16, dt::bf16, dt::f32},
                               {dt::bf16, dt::bf16, dt::f32},
                               {dt::u8, dt::s8, dt::s32}};

static uint16_t to_bf16(float f) {  // round-to-nearest-even, inputs are finite
    uint32_t u; std::memcpy(&u, &f, 4);
    return uint16_t((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}
static float from_bf16(uint16_t h) { uint32_t u = uint32_t(h) << 16; float f; std::memcpy(&f, &u, 4); return f; }

// Element i of a plain memory, as double; the reference reads exactly what oneDNN was fed.
static double get(const memory &mem, size_t i) {
    void *p = mem.get_data_handle();
    switch (mem.get_desc().data_type()) {
        case dt::f32: return ((float *)p)[i];
        case dt::bf16: return from_bf16(((uint16_t *)p)[i]);
        case dt::u8: return ((uint8_t *)p)[i];
        case dt::s8: return ((int8_t *)p)[i];
        case dt::s32: return ((int32_t *)p)[i];
        default: std::abort();
    }
}

static void fill(memory &mem, size_t count, std::mt19937 &rng) {
    std::uniform_real_distribution<float> real(-1.f, 1.f);
    // u8 kept < 128: pre-VNNI int8 kernels sum u8·s8 pairs in saturating int16.
    std::uniform_int_distribution<int> u8(0, 127), s8(-127, 127);
    void *p = mem.get_data_handle();
    dt t = mem.get_desc().data_type();
    for (size_t i = 0; i < count; i++) {
        if (t == dt::f32) ((float *)p)[i] = real(rng);
        else if (t == dt::bf16) ((uint16_t *)p)[i] = to_bf16(real(rng));
        else if (t == dt::u8) ((uint8_t *)p)[i] = uint8_t(u8(rng));
        else ((int8_t *)p)[i] = int8_t(s8(rng));
    }
}

struct Problem {
    matmul prim;
    memory src, w_plain, wei, dst;
    std::string impl;
    memory src_f32;  // BF16_FROM_F32: the f32 activations, reordered into src on every run
    void run(stream &s) {
        if (src_f32) reorder(src_f32, src).execute(s, src_f32, src);
        prim.execute(s, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, dst}});
        s.wait();
    }
};

static Problem make(engine &eng, stream &s, Prec p, const Shape &sh, std::mt19937 &rng) {
    const Types &t = kTypes[p];
    memory::desc src_md({sh.m, sh.k}, t.src, tag::ab), dst_md({sh.m, sh.n}, t.dst, tag::ab);
    // oneDNN's weights are k×n; W (n×k row-major) is exactly that in "ba" order.
    memory::desc w_plain_md({sh.k, sh.n}, t.wei, tag::ba), w_any_md({sh.k, sh.n}, t.wei, tag::any);
    matmul::primitive_desc pd(matmul::desc(src_md, w_any_md, dst_md), eng);
    Problem pr{matmul(pd), memory(src_md, eng), memory(w_plain_md, eng),
               memory(pd.weights_desc(), eng), memory(dst_md, eng), pd.impl_info_str()};
    fill(pr.src, sh.m * sh.k, rng);
    if (p == BF16_FROM_F32) {
        pr.src_f32 = memory({{sh.m, sh.k}, dt::f32, tag::ab}, eng);
        fill(pr.src_f32, sh.m * sh.k, rng);
    }
    fill(pr.w_plain, sh.n * sh.k, rng);
    // Prepack once, as an engine does at load time; not timed.
    reorder(pr.w_plain, pr.wei).execute(s, pr.w_plain, pr.wei);
    s.wait();
    return pr;
}

// Max |y - ref| / max |ref| against a double-precision naive loop.
static double check(engine &eng, stream &s, Prec p, std::mt19937 &rng) {
    const Shape sh{64, 96, 80};
    Problem pr = make(eng, s, p, sh, rng);
    pr.run(s);
    double max_err = 0, max_ref = 0;
    for (long i = 0; i < sh.m; i++)
        for (long j = 0; j < sh.n; j++) {
            double ref = 0;
            for (long l = 0; l < sh.k; l++) ref += get(pr.src, i * sh.k + l) * get(pr.w_plain, j * sh.k + l);
            max_err = std::fmax(max_err, std::fabs(get(pr.dst, i * sh.n + j) - ref));
            max_ref = std::fmax(max_ref, std::fabs(ref));
        }
    return max_err / max_ref;
}

static const char *isa_name(cpu_isa isa) {
    switch (isa) {
        case cpu_isa::avx2: return "avx2";
        case cpu_isa::avx2_vnni: return "avx2_vnni";
        case cpu_isa::avx512_core: return "avx512_core";
        case cpu_isa::avx512_core_vnni: return "avx512_core_vnni";
        case cpu_isa::avx512_core_bf16: return "avx512_core_bf16";
        case cpu_isa::avx512_core_amx: return "avx512_core_amx";
        default: return "other";
    }
}

int main(int argc, char **argv) {
    int reps = argc > 1 ? std::atoi(argv[1]) : 5;
    const dnnl_version_t *v = dnnl_version();
    const char *omp = std::getenv("OMP_NUM_THREADS");
    std::printf("oneDNN %d.%d.%d (%s), effective ISA: %s, OMP_NUM_THREADS=%s, reps=%d\n", v->major, v->minor,
                v->patch, v->hash, isa_name(get_effective_cpu_isa()), omp ? omp : "unset", reps);
    engine eng(engine::kind::cpu, 0);
    stream s(eng);
    std::mt19937 rng(42);

    const double tol[] = {1e-4, 1e-3, 1e-3, 0.0};
    std::printf("correctness 64x96x80 (rel. err vs double):");
    for (int p = 0; p < NPREC; p++) {
        double e = check(eng, s, Prec(p), rng);
        std::printf(" %s %s (%.1e)", kPrecName[p], e <= tol[p] ? "PASS" : "FAIL", e);
    }
    std::printf("\n\nGFLOP/s; bf16 = bf16 x bf16 -> f32 dst; int8 = u8 x s8 -> s32 dst\n\n");
    std::printf("| m x k x n | f32 | bf16 | bf16 from f32 | int8 |\n|---|---|---|---|---|\n");
    std::set<std::string> impls[NPREC];
    for (const Shape &sh : kShapes) {
        std::printf("| %ldx%ldx%ld |", sh.m, sh.k, sh.n);
        for (int p = 0; p < NPREC; p++) {
            Problem pr = make(eng, s, Prec(p), sh, rng);
            impls[p].insert(pr.impl);
            pr.run(s);  // warm-up
            double best = 1e30;
            for (int r = 0; r < reps; r++) {
                auto t0 = std::chrono::steady_clock::now();
                pr.run(s);
                best = std::fmin(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
            }
            std::printf(" %.1f |", 2.0 * sh.m * sh.k * sh.n / best / 1e9);
            std::fflush(stdout);
        }
        std::printf("\n");
    }
    std::printf("\n");
    for (int p = 0; p < NPREC; p++) {
        std::printf("%s impl:", kPrecName[p]);
        for (const auto &i : impls[p]) std::printf(" %s", i.c_str());
        std::printf("\n");
    }
}
