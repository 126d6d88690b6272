// fp16, D = acc + bias[n], 64×128 pingpong tile.
// One CUTLASS kernel per translation unit, so the build compiles them in parallel (see gemm_sm90.cuh).
#include "gemm_sm90.cuh"

namespace ttf::engine::sm90 {
template struct Sm90Gemm<DType::kFP16, GemmEpilogue::kBias, GemmTile::k64x128>;
}  // namespace ttf::engine::sm90
