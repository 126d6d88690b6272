// bf16, D[s] = acc of split s, float32, 128×128 cooperative tile.
// One CUTLASS kernel per translation unit, so the build compiles them in parallel (see gemm_sm90.cuh).
#include "gemm_sm90.cuh"

namespace ttf::engine::sm90 {
template struct Sm90Gemm<DType::kBF16, GemmEpilogue::kPartialF32, GemmTile::k128x128>;
}  // namespace ttf::engine::sm90
