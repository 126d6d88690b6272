// Multi-head self-attention forward, FlashAttention-2 schedule on tensor cores (mma.sync m16n8k16, fp32 accumulate).
//
// Math, for image b and head h (H = heads, d = head_dim, N tokens), read in place from the packed projection:
//
//   Q, K, V = qkv[b, :, 0 | 1 | 2, h, :]        (N, d) each, token pitch 3·H·d elements; q already scaled by d^-0.5
//   S = Q Kᵀ,  P = softmax_rows(S),  O = P V    out[b, :, h, :] (N, d), token pitch H·d
//
// Online softmax per query row, in fp32 and in the log2 domain: over key tiles, m = running max of S, l = running
// Σ 2^{(s − m)·log2 e}, and O (and l) are rescaled by α = 2^{(m_old − m_new)·log2 e} when the max grows; O / l at
// the end. Every exponent is ≤ 0, so nothing overflows however large the logits are (fp32 e^x overflows at 88.7).
//
// Cost: 4·B·H·N²·d FLOPs (QKᵀ and PV), B·H·N² exp2; bytes ≥ 2·B·N·H·d·(3 + 1) for bf16/fp16 (read qkv once,
// write out once). S and P never leave the registers. K/V tiles are re-read from L2 by every query tile of a head.
//
// Schedule (one CTA = 4 warps = one query tile of one (b, h), grid axis x = (b·H + h)·q_tiles + tile):
//   prologue   cp.async Q tile and K/V stage 0 (64 keys each) into shared memory; ldmatrix Q into registers once.
//   loop j     while stage j is consumed, stage j+1 streams in (two shared-memory buffers for K, two for V);
//              S = Q K_jᵀ (ldmatrix), mask keys ≥ N to −inf, online softmax, P rounded to bf16/fp16 in registers
//              and fed straight back as the A operand of O += P V_j (ldmatrix.trans): the m16n8 accumulator layout
//              of S is the m16k16 A layout of P, so P never goes through shared memory.
//   epilogue   O / l, staged through the warp's own Q rows in shared memory, 16-byte coalesced stores of rows < N.
// Padding: rows ≥ N are zero-filled (cp.async src-size 0), never read. The stage that straddles N computes only the
// 16-key chunks holding a key < N, and a warp whose 16 query rows are all ≥ N skips the math, so the tensor-core
// work is ⌈N/16⌉² blocks of 16×16 (N = 197: 1.11× the useful FLOPs, against 1.69× for whole 64×64 tiles).
//
// Two tile shapes (same shared-memory layout, same 64-key stages):
//   wide  (4 row warps × 1): 64 queries per CTA, each warp owns 16 query rows and all 64 keys of a stage.
//   split (2 row warps × 2): 32 queries per CTA, the two warps of a row pair take 32 keys each of every stage and
//         merge (m, l, O) through shared memory at the end.
// A warp's work runs on one SM sub-partition, so a smaller CTA alone does not shorten the kernel: the time of a
// small-batch launch is one warp's chain over all keys. The split shape halves that chain and doubles the CTAs; it
// is chosen when the wide grid leaves SMs idle (B·H·⌈N/64⌉ < SM count), e.g. ViT-S ×2 branches at batch 1,
// N = 197: 48 wide CTAs on 132 SMs → 84 split CTAs with half the keys per warp.
#include "attention.h"

#include <atomic>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <type_traits>

namespace ttf::engine {
namespace {

constexpr int kThreads = 128;        // 4 warps in both tile shapes
constexpr int kStageKeys = 64;       // keys per shared-memory stage
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kNegInf = -__builtin_huge_valf();

template <int kRowWarps_, int kKeySplit_>
struct TileShape {
  static constexpr int kRowWarps = kRowWarps_;                  // warps along queries (16 rows each)
  static constexpr int kKeySplit = kKeySplit_;                  // warps sharing those rows, splitting each stage's keys
  static constexpr int kRows = 16 * kRowWarps;                  // queries per CTA
  static constexpr int kWarpKeys = kStageKeys / kKeySplit;      // keys per warp per stage
  static_assert(kRowWarps * kKeySplit * 32 == kThreads, "4 warps per CTA");
  static_assert(kWarpKeys % 16 == 0, "a warp's key slice is whole k-steps of the PV mma");
};
using WideTile = TileShape<4, 1>;
using SplitTile = TileShape<2, 2>;

// Shared memory: Q [kRows][D + 8], K [2][64][D + 8], V [2][64][D + 8] (elements of 2 bytes). The 8-element pad makes
// the row pitch an odd number of 16-byte units, so the 8 row addresses of every ldmatrix 8×8 matrix (and the 8 rows
// of the epilogue's 4-byte stores) fall on 8 different 16-byte bank groups: conflict-free without a swizzle.
template <int D, typename Tile>
struct SmemLayout {
  static constexpr int kPitch = D + 8;                                   // elements
  static constexpr int kPitchBytes = kPitch * 2;
  static constexpr int kQBytes = Tile::kRows * kPitchBytes;
  static constexpr int kStageBytes = kStageKeys * kPitchBytes;           // one K or one V stage
  static constexpr int kKOffset = kQBytes;
  static constexpr int kVOffset = kQBytes + 2 * kStageBytes;
  static constexpr int kBytes = kQBytes + 4 * kStageBytes;
  // Exchange of the split shape (reuses the K/V stages after the loop): per row warp and per extra key warp,
  // m[2], l[2] and the O accumulators, each as 32 lanes of floats.
  static constexpr int kExchangeFloats = 4 + D / 2;
  static constexpr int kExchangeBytes = Tile::kRowWarps * (Tile::kKeySplit - 1) * kExchangeFloats * 32 * 4;
  static_assert((kPitch / 8) % 2 == 1, "odd number of 16-byte units per row: conflict-free ldmatrix");
  static_assert(kExchangeBytes <= 4 * kStageBytes, "exchange fits in the K/V stages");
  static_assert(kBytes <= 227 * 1024, "fits an sm_90 SM's shared memory");
};

// ---------------------------------------------------------------------------------------------------------------
// PTX wrappers. Shared-memory ones are volatile with a memory clobber: they must stay between the barriers that
// order them against cp.async, and two loads of the same address in different stages are not the same value.
// ---------------------------------------------------------------------------------------------------------------
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global → shared copy; src_bytes = 0 reads nothing and fills the 16 bytes with zeros.
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, uint32_t src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(kPending) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

// d += a·b, 16×8×16, fp32 accumulators. Fragments (PTX ISA, mma.m16n8k16 .bf16/.f16), g = lane / 4, t = lane % 4:
//   a[0] = A[g][2t..2t+1]   a[1] = A[g+8][2t..2t+1]   a[2] = A[g][2t+8..2t+9]   a[3] = A[g+8][2t+8..2t+9]
//   b0   = B[2t..2t+1][g]   b1   = B[2t+8..2t+9][g]
//   d[0..1] = D[g][2t..2t+1]                          d[2..3] = D[g+8][2t..2t+1]
// Each 32-bit register holds the lower column (or row, for B) index in its low 16 bits.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Two floats → one register of two bf16/fp16 (round to nearest even), `lo` in the low half. cvt puts its first
// source in the upper half.
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  uint32_t r;
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  } else {
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  }
  return r;
}

// 2^x on the MUFU unit (relative error ~2^-22); ex2(−inf) = +0, which the masked keys and the first rescale rely on.
__device__ __forceinline__ float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Rows [row0, row0 + kCount) of one (N, D) operand with token pitch `pitch` elements → shared memory at `dst` with
// the padded pitch. Rows ≥ N are zero-filled, not skipped: a zero V row times P = 0 is 0, while stale shared memory
// could hold a NaN pattern (0·NaN = NaN in the PV mma); a zero Q row keeps the unused query rows finite.
template <int D, int kCount, typename T>
__device__ __forceinline__ void load_rows(uint32_t dst, const T* __restrict__ src, int row0, int N, int64_t pitch) {
  constexpr int kChunks = D / 8;                   // 16-byte chunks per row
  constexpr int kTotal = kCount * kChunks;
  constexpr int kPitchBytes = (D + 8) * 2;
#pragma unroll
  for (int it = 0; it < (kTotal + kThreads - 1) / kThreads; ++it) {
    const int i = int(threadIdx.x) + it * kThreads;
    if (kTotal % kThreads == 0 || i < kTotal) {
      const int r = i / kChunks, c = i % kChunks;
      const int n = row0 + r;
      const bool valid = n < N;
      const T* p = src + (valid ? int64_t(n) * pitch : int64_t(0)) + c * 8;  // row 0 is always in bounds
      cp_async_16(dst + r * kPitchBytes + c * 16, p, valid ? 16u : 0u);
    }
  }
}

// One warp, one key slice of kWarpKeys keys starting at key0: s = Q Kᵀ for the warp's 16 rows, then the online
// softmax update of (row_max, row_sum, o_acc), leaving p = 2^{(s − m)·log2 e} in s.
// kTail (the slice straddles N): keys ≥ N are set to −inf before the max, and 16-key chunks that lie wholly beyond
// N skip their ldmatrix and mma (at N = 197 the last 64-key stage holds 5 keys: 16 are computed, not 64).
template <typename T, int D, int kWarpKeys, bool kTail>
__device__ __forceinline__ void scores_softmax(float (&s)[kWarpKeys / 8][4], const uint32_t (&q_frag)[D / 16][4],
                                               uint32_t k_base, int key0, int N, int t, float (&row_max)[2],
                                               float (&row_sum)[2], float (&o_acc)[D / 8][4]) {
  constexpr int kKeyTiles = kWarpKeys / 8;
  constexpr int kPitchBytes = (D + 8) * 2;
#pragma unroll
  for (int nt = 0; nt < kKeyTiles; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
    for (int np = 0; np < kKeyTiles / 2; ++np) {
      if (kTail && key0 + np * 16 >= N) continue;            // warp-uniform
      uint32_t kf[4];
      ldmatrix_x4(kf, k_base + np * 16 * kPitchBytes + kk * 32);
      mma_16816<T>(s[2 * np], q_frag[kk], kf[0], kf[1]);
      mma_16816<T>(s[2 * np + 1], q_frag[kk], kf[2], kf[3]);
    }
  }
  if constexpr (kTail) {
    // Keys ≥ N (zero-filled rows, or chunks not computed) → −inf before the max.
#pragma unroll
    for (int nt = 0; nt < kKeyTiles; ++nt) {
      const int key = key0 + nt * 8 + 2 * t;
      if (key >= N) s[nt][0] = s[nt][2] = kNegInf;
      if (key + 1 >= N) s[nt][1] = s[nt][3] = kNegInf;
    }
  }
  // The slice holds >= 1 valid key, so the new max is finite; the guard only keeps a fully masked row (impossible
  // here) from computing −inf − (−inf) = NaN.
  float new_max[2] = {row_max[0], row_max[1]};
#pragma unroll
  for (int nt = 0; nt < kKeyTiles; ++nt) {
    new_max[0] = fmaxf(new_max[0], fmaxf(s[nt][0], s[nt][1]));
    new_max[1] = fmaxf(new_max[1], fmaxf(s[nt][2], s[nt][3]));
  }
  float alpha[2], shift[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    new_max[r] = fmaxf(new_max[r], __shfl_xor_sync(0xffffffffu, new_max[r], 1));   // the quad shares a row
    new_max[r] = fmaxf(new_max[r], __shfl_xor_sync(0xffffffffu, new_max[r], 2));
    shift[r] = new_max[r] == kNegInf ? 0.f : new_max[r] * kLog2e;
    alpha[r] = exp2_approx(row_max[r] * kLog2e - shift[r]);  // 0 on the first slice (row_max = −inf)
    row_max[r] = new_max[r];
    row_sum[r] *= alpha[r];
  }
#pragma unroll
  for (int dt = 0; dt < D / 8; ++dt) {
    o_acc[dt][0] *= alpha[0]; o_acc[dt][1] *= alpha[0];
    o_acc[dt][2] *= alpha[1]; o_acc[dt][3] *= alpha[1];
  }
  // p = 2^{s·log2 e − m·log2 e} <= 1 (one FFMA + one MUFU.EX2 per score); l sums the fp32 p, the PV mma gets p
  // rounded to the input type, as in FlashAttention.
#pragma unroll
  for (int nt = 0; nt < kKeyTiles; ++nt) {
    s[nt][0] = exp2_approx(fmaf(s[nt][0], kLog2e, -shift[0]));
    s[nt][1] = exp2_approx(fmaf(s[nt][1], kLog2e, -shift[0]));
    s[nt][2] = exp2_approx(fmaf(s[nt][2], kLog2e, -shift[1]));
    s[nt][3] = exp2_approx(fmaf(s[nt][3], kLog2e, -shift[1]));
    row_sum[0] += s[nt][0] + s[nt][1];
    row_sum[1] += s[nt][2] + s[nt][3];
  }
}

// o_acc += P V over the warp's key slice. The accumulators of key n-tiles 2·ks and 2·ks + 1 are exactly the A
// fragment of key k-step ks: a[0] = P[g][2t..], a[1] = P[g+8][2t..] (tile 2·ks), a[2], a[3] the same rows 8 keys on
// (tile 2·ks + 1). kTail: 16-key chunks wholly beyond N (p = 0 there) are skipped.
template <typename T, int D, int kWarpKeys, bool kTail>
__device__ __forceinline__ void accumulate_pv(float (&o_acc)[D / 8][4], const float (&p)[kWarpKeys / 8][4],
                                              uint32_t v_base, int key0, int N) {
  constexpr int kPitchBytes = (D + 8) * 2;
#pragma unroll
  for (int ks = 0; ks < kWarpKeys / 16; ++ks) {
    if (kTail && key0 + ks * 16 >= N) continue;              // warp-uniform
    uint32_t pa[4];
    pa[0] = pack2<T>(p[2 * ks][0], p[2 * ks][1]);
    pa[1] = pack2<T>(p[2 * ks][2], p[2 * ks][3]);
    pa[2] = pack2<T>(p[2 * ks + 1][0], p[2 * ks + 1][1]);
    pa[3] = pack2<T>(p[2 * ks + 1][2], p[2 * ks + 1][3]);
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
      uint32_t vf[4];
      ldmatrix_x4_trans(vf, v_base + ks * 16 * kPitchBytes + dp * 32);
      mma_16816<T>(o_acc[2 * dp], pa, vf[0], vf[1]);
      mma_16816<T>(o_acc[2 * dp + 1], pa, vf[2], vf[3]);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Kernel
// ---------------------------------------------------------------------------------------------------------------
template <typename T, int D, typename Tile>
__global__ void __launch_bounds__(kThreads)
attention_kernel(const void* __restrict__ qkv_,     // (B, N, 3, heads, D)
                 void* __restrict__ out_,           // (B, N, heads, D)
                 int N, int heads,
                 int q_tiles,                       // ⌈N / Tile::kRows⌉
                 const void* prefetch, size_t prefetch_bytes) {
  static_assert(D % 16 == 0 && D >= 32 && D <= 128, "head_dim: whole k-steps of 16");
  using Smem = SmemLayout<D, Tile>;
  constexpr int kRows = Tile::kRows;
  constexpr int kWarpKeys = Tile::kWarpKeys;
  constexpr int kPitchBytes = Smem::kPitchBytes;
  constexpr int kDSteps = D / 16;          // k-steps of QKᵀ (along d); also pairs of 8-wide n-tiles of PV
  constexpr int kDTiles = D / 8;           // n-tiles of PV (along d)
  constexpr int kKeyTiles = kWarpKeys / 8; // n-tiles of QKᵀ (along keys)
  constexpr int kChunks = D / 8;

  const T* __restrict__ qkv = static_cast<const T*>(qkv_);
  T* __restrict__ out = static_cast<T*>(out_);

  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t q_smem = smem_addr(smem);
  const uint32_t k_smem = q_smem + Smem::kKOffset;
  const uint32_t v_smem = q_smem + Smem::kVOffset;

  const int lane = int(threadIdx.x) & 31, warp = int(threadIdx.x) >> 5;
  const int row_warp = warp % Tile::kRowWarps;   // which 16 query rows
  const int key_warp = warp / Tile::kRowWarps;   // which slice of each stage's keys
  const int g = lane >> 2, t = lane & 3;         // mma fragment coordinates

  const int tile = int(blockIdx.x % unsigned(q_tiles));
  const int bh = int(blockIdx.x / unsigned(q_tiles));
  const int b = bh / heads, h = bh % heads;
  const int q0 = tile * kRows;
  const bool rows_valid = q0 + row_warp * 16 < N;                  // warp-uniform: the warp owns a query < N
  const int64_t pitch = int64_t(3) * heads * D;                       // qkv token pitch, elements
  const T* q_g = qkv + int64_t(b) * N * pitch + int64_t(h) * D;
  const T* k_g = q_g + int64_t(heads) * D;
  const T* v_g = k_g + int64_t(heads) * D;

  // PDL: only the next GEMM's weights may be touched before the wait (common.cuh); qkv is the previous kernel's output.
  prefetch_l2_share(prefetch, prefetch_bytes);
  grid_dependency_wait();

  const int n_stages = (N + kStageKeys - 1) / kStageKeys;
  load_rows<D, kRows>(q_smem, q_g, q0, N, pitch);
  load_rows<D, kStageKeys>(k_smem, k_g, 0, N, pitch);
  cp_async_commit();                                         // group: Q, K_0
  load_rows<D, kStageKeys>(v_smem, v_g, 0, N, pitch);
  cp_async_commit();                                         // group: V_0

  // Q fragments for the whole loop. x4 matrices: rows 0-7 / 8-15 of the warp's 16 × cols 0-7 / 8-15 of the k-step,
  // lanes 0-15 address rows 0-15 at col 0, lanes 16-31 the same rows at col 8 → a[0..3] in mma order.
  uint32_t q_frag[kDSteps][4];
  cp_async_wait<1>();
  __syncthreads();
  {
    const uint32_t base = q_smem + (row_warp * 16 + (lane & 15)) * kPitchBytes + (lane >> 4) * 16;
#pragma unroll
    for (int kk = 0; kk < kDSteps; ++kk) ldmatrix_x4(q_frag[kk], base + kk * 32);
  }

  // K as the col-major B of QKᵀ: B[k = dim][n = key] = K[key][dim], i.e. K's rows as stored. One x4 covers keys
  // 16·np + 0-7 (dims 0-7, 8-15 of the k-step: b0, b1 of n-tile 2·np) and keys 16·np + 8-15 (b0, b1 of 2·np + 1).
  const uint32_t k_lane = (key_warp * kWarpKeys + (lane & 7) + ((lane >> 4) << 3)) * kPitchBytes +
                          ((lane >> 3) & 1) * 16;
  // V as the B of PV: B[k = key][n = dim] = V[key][dim], 2 consecutive keys per register, so .trans. One x4 covers
  // keys 0-7 / 8-15 of the k-step (b0 / b1) for dims 16·dp + 0-7 (n-tile 2·dp) and 16·dp + 8-15 (2·dp + 1).
  const uint32_t v_lane = (key_warp * kWarpKeys + (lane & 7) + ((lane >> 3) & 1) * 8) * kPitchBytes +
                          (lane >> 4) * 16;

  float o_acc[kDTiles][4];
#pragma unroll
  for (int dt = 0; dt < kDTiles; ++dt) o_acc[dt][0] = o_acc[dt][1] = o_acc[dt][2] = o_acc[dt][3] = 0.f;
  float row_max[2] = {kNegInf, kNegInf};   // rows g and g + 8 of the warp's 16, identical across a quad
  float row_sum[2] = {0.f, 0.f};           // this thread's columns only; summed over the quad at the end

  for (int j = 0; j < n_stages; ++j) {
    const uint32_t stage_offset = (j & 1) * Smem::kStageBytes;
    // K_j has landed for every thread, and every warp is done with stage j − 1, whose buffers are refilled below.
    cp_async_wait<1>();
    __syncthreads();
    if (j + 1 < n_stages)
      load_rows<D, kStageKeys>(k_smem + (Smem::kStageBytes - stage_offset), k_g, (j + 1) * kStageKeys, N, pitch);
    cp_async_commit();                                       // group: K_{j+1} (empty on the last stage)
    if (j + 1 < n_stages)
      load_rows<D, kStageKeys>(v_smem + (Smem::kStageBytes - stage_offset), v_g, (j + 1) * kStageKeys, N, pitch);
    cp_async_commit();                                       // group: V_{j+1}

    const int key0 = j * kStageKeys + key_warp * kWarpKeys;  // first key of this warp's slice
    // Warp-uniform. A slice with no key (split shape, last stage, N ≤ 64·j + 32) is skipped: its rows stay at
    // m = −inf, l = 0, O = 0, which the merge weighs by 0. So is a warp whose 16 query rows are all ≥ N.
    const bool active = key0 < N && rows_valid;
    const bool tail = key0 + kWarpKeys > N;                  // the slice straddles N
    float s[kKeyTiles][4];
    if (active) {
      const uint32_t k_base = k_smem + stage_offset + k_lane;
      if (tail)
        scores_softmax<T, D, kWarpKeys, true>(s, q_frag, k_base, key0, N, t, row_max, row_sum, o_acc);
      else
        scores_softmax<T, D, kWarpKeys, false>(s, q_frag, k_base, key0, N, t, row_max, row_sum, o_acc);
    }

    cp_async_wait<2>();                                      // V_j landed (K_{j+1}, V_{j+1} may still fly)
    __syncthreads();

    if (active) {
      const uint32_t v_base = v_smem + stage_offset + v_lane;
      if (tail)
        accumulate_pv<T, D, kWarpKeys, true>(o_acc, s, v_base, key0, N);
      else
        accumulate_pv<T, D, kWarpKeys, false>(o_acc, s, v_base, key0, N);
    }
  }

  // The next kernel (the out-projection GEMM) may start its prologue; it still waits for this grid to complete.
  grid_dependents_launch();

  if constexpr (Tile::kKeySplit > 1) {
    // Merge the key slices of a row pair: the warps hold the same rows in the same fragment layout, so the merge is
    // element-wise per lane: m = max m_i, O = Σ 2^{(m_i − m)·log2 e} O_i, l likewise. Slice 0 always holds key 0,
    // so m is finite; an empty slice (m_i = −inf) weighs 0.
    constexpr int kF = Smem::kExchangeFloats;
    float* exchange = reinterpret_cast<float*>(smem + Smem::kKOffset);
    __syncthreads();                                         // every warp is done reading the last K/V stage
    if (key_warp > 0 && rows_valid) {
      float* x = exchange + ((row_warp * (Tile::kKeySplit - 1) + key_warp - 1) * kF) * 32 + lane;
      x[0 * 32] = row_max[0];
      x[1 * 32] = row_max[1];
      x[2 * 32] = row_sum[0];
      x[3 * 32] = row_sum[1];
#pragma unroll
      for (int dt = 0; dt < kDTiles; ++dt)
#pragma unroll
        for (int e = 0; e < 4; ++e) x[(4 + dt * 4 + e) * 32] = o_acc[dt][e];
    }
    __syncthreads();
    if (key_warp == 0 && rows_valid) {
#pragma unroll
      for (int other = 1; other < Tile::kKeySplit; ++other) {
        const float* x = exchange + ((row_warp * (Tile::kKeySplit - 1) + other - 1) * kF) * 32 + lane;
        float self_scale[2], other_scale[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const float m_other = x[r * 32];
          const float m = fmaxf(row_max[r], m_other);        // finite: row_max[r] is
          self_scale[r] = exp2_approx((row_max[r] - m) * kLog2e);
          other_scale[r] = exp2_approx((m_other - m) * kLog2e);
          row_max[r] = m;
          row_sum[r] = row_sum[r] * self_scale[r] + x[(2 + r) * 32] * other_scale[r];
        }
#pragma unroll
        for (int dt = 0; dt < kDTiles; ++dt)
#pragma unroll
          for (int e = 0; e < 4; ++e)
            o_acc[dt][e] = o_acc[dt][e] * self_scale[e >> 1] + x[(4 + dt * 4 + e) * 32] * other_scale[e >> 1];
      }
    }
  }

  if (key_warp == 0 && rows_valid) {
    float inv[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float l = row_sum[r];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      inv[r] = 1.f / l;                                      // l ≥ 1: the row max contributes 2^0
    }
    // Stage O through this warp's own 16 Q rows (no other warp reads them any more: the split shape's barriers
    // above order its partner's Q reads), then write whole rows with 16-byte stores.
    unsigned char* rows = smem + row_warp * 16 * kPitchBytes;
#pragma unroll
    for (int dt = 0; dt < kDTiles; ++dt) {
      *reinterpret_cast<uint32_t*>(rows + g * kPitchBytes + dt * 16 + t * 4) =
          pack2<T>(o_acc[dt][0] * inv[0], o_acc[dt][1] * inv[0]);
      *reinterpret_cast<uint32_t*>(rows + (g + 8) * kPitchBytes + dt * 16 + t * 4) =
          pack2<T>(o_acc[dt][2] * inv[1], o_acc[dt][3] * inv[1]);
    }
    __syncwarp();
    const int64_t out_pitch = int64_t(heads) * D;
    T* o_g = out + int64_t(b) * N * out_pitch + int64_t(h) * D;
#pragma unroll
    for (int i = lane; i < 16 * kChunks; i += 32) {
      const int r = i / kChunks, c = i % kChunks;
      const int n = q0 + row_warp * 16 + r;
      if (n < N)
        *reinterpret_cast<uint4*>(o_g + int64_t(n) * out_pitch + c * 8) =
            *reinterpret_cast<const uint4*>(rows + r * kPitchBytes + c * 16);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------------------------------
constexpr int kMaxTokens = 1 << 30;          // keeps every key/query index and 64·stage in 32 bits
constexpr int kCachedDevices = 64;

// Multiprocessor count of `device`, queried once per device (no allocation, no synchronization: capture-safe).
cudaError_t sm_count(int device, int* count) {
  static std::atomic<int> cache[kCachedDevices];
  if (device >= 0 && device < kCachedDevices) {
    const int cached = cache[device].load(std::memory_order_relaxed);
    if (cached > 0) { *count = cached; return cudaSuccess; }
  }
  const cudaError_t err = cudaDeviceGetAttribute(count, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return err;
  if (device >= 0 && device < kCachedDevices) cache[device].store(*count, std::memory_order_relaxed);
  return cudaSuccess;
}

// TTF_ATTENTION_ROWS=64 or 32 forces the wide or split tile (for tests and A/B timing of both shapes on one size);
// unset or anything else: the SM-count rule. Read once.
int forced_rows() {
  static const int rows = [] {
    const char* v = std::getenv("TTF_ATTENTION_ROWS");
    if (v != nullptr && std::strcmp(v, "64") == 0) return 64;
    if (v != nullptr && std::strcmp(v, "32") == 0) return 32;
    return 0;
  }();
  return rows;
}

template <typename T, int D, typename Tile>
cudaError_t launch(const AttentionParams& p, int device) {
  constexpr size_t kSmem = SmemLayout<D, Tile>::kBytes;
  auto* kernel = attention_kernel<T, D, Tile>;
  if constexpr (kSmem > 48 * 1024) {
    // Per device (a function's attributes live in each device's context); once per instantiation and device.
    static std::atomic<uint64_t> raised{0};
    const uint64_t bit = device < kCachedDevices ? uint64_t(1) << device : 0;
    if (bit == 0 || (raised.load(std::memory_order_acquire) & bit) == 0) {
      const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kSmem));
      if (err != cudaSuccess) return err;
      raised.fetch_or(bit, std::memory_order_release);
    }
  }
  const int q_tiles = (p.N + Tile::kRows - 1) / Tile::kRows;
  const dim3 grid(unsigned(int64_t(p.B) * p.heads * q_tiles));
  return launch_kernel(kernel, grid, dim3(kThreads), kSmem, p.stream, p.pdl, p.qkv, p.out, p.N, p.heads, q_tiles,
                       p.prefetch, p.prefetch_bytes);
}

template <typename T, int D>
cudaError_t launch_shape(const AttentionParams& p, bool split, int device) {
  return split ? launch<T, D, SplitTile>(p, device) : launch<T, D, WideTile>(p, device);
}

template <typename T>
cudaError_t launch_dtype(const AttentionParams& p, bool split, int device) {
  switch (p.head_dim) {
    case 32: return launch_shape<T, 32>(p, split, device);
    case 64: return launch_shape<T, 64>(p, split, device);
    case 80: return launch_shape<T, 80>(p, split, device);
    case 96: return launch_shape<T, 96>(p, split, device);
    case 128: return launch_shape<T, 128>(p, split, device);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

const char* attention_check(const AttentionParams& p) {
  if (p.dtype != DType::kBF16 && p.dtype != DType::kFP16) return "attention: dtype must be bfloat16 or float16";
  if (p.head_dim != 32 && p.head_dim != 64 && p.head_dim != 80 && p.head_dim != 96 && p.head_dim != 128)
    return "attention: head_dim must be 32, 64, 80, 96 or 128";
  if (p.B < 1 || p.N < 1 || p.heads < 1) return "attention: B, N and heads must be >= 1";
  if (p.qkv == nullptr || p.out == nullptr) return "attention: qkv and out must not be null";
  if (!aligned16(p.qkv) || !aligned16(p.out)) return "attention: qkv and out must be 16-byte aligned";
  if (p.prefetch != nullptr && !aligned16(p.prefetch)) return "attention: prefetch must be 16-byte aligned";
  if (p.N > kMaxTokens) return "attention: N must be <= 2^30";
  // Grid axis x holds B·heads·⌈N/32⌉ CTAs (the split shape, the larger grid) and must stay <= 2^31 − 1. This also
  // bounds B·N·heads below 2^36, so every 64-bit element offset in the kernel (< 2^45) is exact.
  const int64_t bh = int64_t(p.B) * p.heads;
  if (bh > INT_MAX || bh * ((int64_t(p.N) + SplitTile::kRows - 1) / SplitTile::kRows) > INT_MAX)
    return "attention: B * heads * ceil(N / 32) must be < 2^31 (grid size)";
  // qkv is read while out is written by other CTAs: the two must not overlap.
  const uint64_t out_bytes = uint64_t(bh) * uint64_t(p.N) * uint64_t(p.head_dim) * 2;
  const uintptr_t q = reinterpret_cast<uintptr_t>(p.qkv), o = reinterpret_cast<uintptr_t>(p.out);
  if (q < o + out_bytes && o < q + 3 * out_bytes) return "attention: out must not overlap qkv";
  return nullptr;
}

cudaError_t attention(const AttentionParams& p) {
  if (attention_check(p) != nullptr) return cudaErrorInvalidValue;
  int device = 0, sms = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  err = sm_count(device, &sms);
  if (err != cudaSuccess) return err;
  // Wide 64-query tiles unless their grid leaves SMs idle (see the file comment); then the split shape.
  const int64_t wide_ctas = int64_t(p.B) * p.heads * ((p.N + WideTile::kRows - 1) / WideTile::kRows);
  const int forced = forced_rows();
  const bool split = forced != 0 ? forced == SplitTile::kRows : wide_ctas < sms;
  return p.dtype == DType::kBF16 ? launch_dtype<__nv_bfloat16>(p, split, device)
                                 : launch_dtype<__half>(p, split, device);
}

}  // namespace ttf::engine
