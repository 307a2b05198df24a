// CUDA kernels for sample_logits and filter_logits.
//
// UNVERIFIED: this file compiles but has never run on a GPU (see GPU_VERIFIED in
// pyprobtf/ops/_backends.py). It follows the Triton kernels (kernels/sampling.py)
// step for step, which are tested against the reference under Triton's
// interpreter:
//   stats (rows x chunks)  chunk maxima, first argmax, NaN / +inf flags
//   setup (rows)           row maximum, parameters, status, uniform, greedy tokens
//   top-k, then top-p: per radix level, histogram (rows x chunks) + narrow (rows)
//   mass (rows x chunks)   kept mass per chunk     | filter_logits: write
//   draw (rows x chunks)   the chunk holding the draw scans its columns
// Every block handles one chunk of kChunk columns of one row, so small batches
// with long rows keep the whole GPU busy. All reductions are fixed trees or
// in-order loops (no float atomics): results do not depend on the batch.
#include <cstdint>

#include "pyprobtf/cuda_common.cuh"
#include "pyprobtf/sampling.h"

namespace ptf {
namespace {

using sampling::order_key;

constexpr int kThreadsPerBlock = 256;
constexpr int kItemsPerThread = 16;
constexpr int64_t kChunk = int64_t{kThreadsPerBlock} * kItemsPerThread;  // 4096 columns
constexpr int kRadixBits = 4;
constexpr int kBins = 1 << kRadixBits;
constexpr int kWarps = kThreadsPerBlock / 32;

template <typename C> struct KeyOf { using type = uint32_t; };
template <> struct KeyOf<double> { using type = uint64_t; };

// Per-row state shared by the passes.
struct RowState {
  double m, t, u, top_p, min_p;  // m and t hold values of the compute type
  double k_target, p_target;
  uint64_t k_prefix, p_prefix, tk, thr;
  int64_t argmax;
  int32_t mode;  // 1 sample, 2 greedy, 0 bad
  int32_t k_active, p_active, p_keepall;
};

struct Workspace {
  double* stat_max;     // rows x chunks
  int64_t* stat_arg;    // rows x chunks
  int32_t* stat_bad;    // rows x chunks
  RowState* state;      // rows
  int32_t* part_n;      // rows x chunks x kBins
  double* part_w;       // rows x chunks x kBins
  double* chunk_mass;   // rows x chunks
};

int64_t align(int64_t n) { return (n + 255) / 256 * 256; }

Workspace carve(void* base, int64_t rows, int64_t chunks) {
  char* p = static_cast<char*>(base);
  Workspace w;
  auto take = [&](int64_t bytes) {
    char* q = p;
    p += align(bytes);
    return q;
  };
  w.stat_max = reinterpret_cast<double*>(take(rows * chunks * 8));
  w.stat_arg = reinterpret_cast<int64_t*>(take(rows * chunks * 8));
  w.stat_bad = reinterpret_cast<int32_t*>(take(rows * chunks * 4));
  w.state = reinterpret_cast<RowState*>(take(rows * static_cast<int64_t>(sizeof(RowState))));
  w.part_n = reinterpret_cast<int32_t*>(take(rows * chunks * kBins * 4));
  w.part_w = reinterpret_cast<double*>(take(rows * chunks * kBins * 8));
  w.chunk_mass = reinterpret_cast<double*>(take(rows * chunks * 8));
  return w;
}

int64_t workspace_size(int64_t rows, int64_t chunks) {
  return align(rows * chunks * 8) * 2 + align(rows * chunks * 4) + align(rows * int64_t(sizeof(RowState))) +
         align(rows * chunks * kBins * 4) + align(rows * chunks * kBins * 8) + align(rows * chunks * 8);
}

template <typename T>
__device__ __forceinline__ typename compute_type<T>::type load_x(const SampleLogitsArgs& a, int64_t r, int64_t c) {
  const T* row = static_cast<const T*>(a.logits.data) + r * a.logits.row_stride;
  return cuda::load(row[c * a.logits.col_stride]);
}

template <typename C> __device__ __forceinline__ C mass_of(C x, C m, C t) {
  return cuda::Math::exp((x - m) / t);  // IEEE division and accurate exp (no fast math)
}

template <typename C> __device__ __forceinline__ C neg_inf() { return -C(INFINITY); }

// ----------------------------------------------------------------------------- block reductions (fixed order)

__device__ __forceinline__ double warp_sum(double v) {
  for (int d = 16; d > 0; d /= 2) v += __shfl_down_sync(0xFFFFFFFFu, v, d);
  return v;
}
__device__ __forceinline__ int warp_sum(int v) {
  for (int d = 16; d > 0; d /= 2) v += __shfl_down_sync(0xFFFFFFFFu, v, d);
  return v;
}

// Sum over the block; the result is valid in thread 0.
template <typename V> __device__ V block_sum(V v, V* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  V total = V(0);
  if (threadIdx.x == 0) {
    for (int w = 0; w < kWarps; ++w) total += scratch[w];
  }
  __syncthreads();
  return total;
}

// ----------------------------------------------------------------------------- kernels

template <typename T>
__global__ void __launch_bounds__(kThreadsPerBlock) stats_kernel(SampleLogitsArgs a, int64_t chunks, Workspace w) {
  using C = typename compute_type<T>::type;
  const int64_t r = blockIdx.x, chunk = blockIdx.y;
  C best = neg_inf<C>();
  int64_t best_col = INT64_MAX;
  int bad = 0;
  for (int i = 0; i < kItemsPerThread; ++i) {
    const int64_t c = chunk * kChunk + i * kThreadsPerBlock + threadIdx.x;
    if (c >= a.cols) break;
    const C x = load_x<T>(a, r, c);
    if (x != x) {
      bad |= 1;
      continue;
    }
    if (x == C(INFINITY)) bad |= 2;
    if (x > best || (x == best && c < best_col)) {
      best = x;
      best_col = c;
    }
  }
  // (max, first column) reduction: a fixed tree over the warp, then over warps in order.
  for (int d = 16; d > 0; d /= 2) {
    const C ov = __shfl_down_sync(0xFFFFFFFFu, best, d);
    const int64_t oc = __shfl_down_sync(0xFFFFFFFFu, best_col, d);
    const int ob = __shfl_down_sync(0xFFFFFFFFu, bad, d);
    if (ov > best || (ov == best && oc < best_col)) {
      best = ov;
      best_col = oc;
    }
    bad |= ob;
  }
  __shared__ C s_best[kWarps];
  __shared__ int64_t s_col[kWarps];
  __shared__ int s_bad[kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) {
    s_best[warp] = best;
    s_col[warp] = best_col;
    s_bad[warp] = bad;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int k = 1; k < kWarps; ++k) {
      if (s_best[k] > best || (s_best[k] == best && s_col[k] < best_col)) {
        best = s_best[k];
        best_col = s_col[k];
      }
      bad |= s_bad[k];
    }
    const int64_t out = r * chunks + chunk;
    w.stat_max[out] = static_cast<double>(best);
    w.stat_arg[out] = best_col == INT64_MAX ? chunk * kChunk : best_col;
    w.stat_bad[out] = bad;
  }
}

template <typename C>
__global__ void setup_kernel(SampleLogitsArgs a, int64_t chunks, Workspace w, bool sample) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= a.rows) return;
  double m = -INFINITY;
  int64_t argmax = 0;
  int bad = 0;
  for (int64_t k = 0; k < chunks; ++k) {  // in order: the first chunk holding the maximum wins
    const double v = w.stat_max[r * chunks + k];
    if (v > m) {
      m = v;
      argmax = w.stat_arg[r * chunks + k];
    }
    bad |= w.stat_bad[r * chunks + k];
  }
  if (m == -INFINITY) argmax = w.stat_arg[r * chunks];
  const double temperature = a.temperature.at(r), top_p = a.top_p.at(r), min_p = a.min_p.at(r);
  const int64_t top_k = a.top_k.at(r);
  int32_t status = sampling::param_status(temperature, top_k, top_p, min_p);
  double u = 0.0;
  if (status == sampling::kOk && sample) {
    u = sampling::row_uniform(a.uniform, a.uniform_stride, a.seed, a.offset, r);
    if (!(u >= 0.0 && u < 1.0)) status = sampling::kBadUniform;
  }
  if (status == sampling::kOk) {
    if (bad & 1) status = sampling::kNanLogit;
    else if (bad & 2) status = sampling::kPosInfLogit;
    else if (m == -INFINITY) status = sampling::kAllNegInf;
  }
  a.status[r] = status;
  const C t = static_cast<C>(temperature);
  const bool ok = status == sampling::kOk, greedy = t == C(0), work = ok && !greedy;
  RowState s;
  s.m = m;
  s.t = static_cast<double>(t);
  s.u = u;
  s.top_p = top_p;
  s.min_p = min_p;
  s.k_target = static_cast<double>(top_k);
  s.p_target = 0.0;
  s.k_prefix = s.p_prefix = s.tk = s.thr = 0;
  s.argmax = argmax;
  s.mode = work ? 1 : (ok ? 2 : 0);
  s.k_active = work && top_k > 0 && top_k < a.cols;
  s.p_active = work && top_p < 1.0;
  s.p_keepall = 0;
  w.state[r] = s;
  if (sample) {
    a.tokens[r] = ok ? (greedy ? argmax : 0) : -1;
    static_cast<C*>(a.logprobs)[r] = ok ? C(0) : C(NAN);
  }
}

// Counts and masses per digit of the keys that share the row's prefix above the digit.
template <typename T, bool BY_MASS>
__global__ void __launch_bounds__(kThreadsPerBlock)
    histogram_kernel(SampleLogitsArgs a, int64_t chunks, Workspace w, int shift) {
  using C = typename compute_type<T>::type;
  using K = typename KeyOf<C>::type;
  const int64_t r = blockIdx.x, chunk = blockIdx.y;
  const RowState& s = w.state[r];
  if (!(BY_MASS ? s.p_active : s.k_active)) return;
  const K prefix = static_cast<K>(BY_MASS ? s.p_prefix : s.k_prefix);
  const K low = static_cast<K>(s.tk);
  const C m = static_cast<C>(s.m), t = static_cast<C>(s.t);
  int counts[kBins];
  double masses[kBins];
#pragma unroll
  for (int b = 0; b < kBins; ++b) {
    counts[b] = 0;
    masses[b] = 0.0;
  }
  for (int i = 0; i < kItemsPerThread; ++i) {
    const int64_t c = chunk * kChunk + i * kThreadsPerBlock + threadIdx.x;
    if (c >= a.cols) break;
    const C x = load_x<T>(a, r, c);
    const K key = order_key(x);
    const K shifted = key >> shift;
    const bool member = (shifted >> kRadixBits) == prefix && (!BY_MASS || key >= low);
    const int digit = static_cast<int>(shifted & (kBins - 1));
    const double e = member ? static_cast<double>(mass_of(x, m, t)) : 0.0;
#pragma unroll
    for (int b = 0; b < kBins; ++b) {  // unrolled compares: no dynamic register indexing
      counts[b] += (member && digit == b) ? 1 : 0;
      masses[b] += digit == b ? e : 0.0;
    }
  }
  __shared__ int s_n[kBins][kWarps];
  __shared__ double s_w[kBins][kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int b = 0; b < kBins; ++b) {
    const int n = warp_sum(counts[b]);
    const double m_b = warp_sum(masses[b]);
    if (lane == 0) {
      s_n[b][warp] = n;
      s_w[b][warp] = m_b;
    }
  }
  __syncthreads();
  if (threadIdx.x < kBins) {
    int n = 0;
    double mass = 0.0;
    for (int k = 0; k < kWarps; ++k) {
      n += s_n[threadIdx.x][k];
      mass += s_w[threadIdx.x][k];
    }
    const int64_t out = (r * chunks + chunk) * kBins + threadIdx.x;
    w.part_n[out] = n;
    w.part_w[out] = mass;
  }
}

template <bool BY_MASS>
__global__ void narrow_kernel(int64_t rows, int64_t chunks, Workspace w, bool first, bool last) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  RowState& s = w.state[r];
  if (!(BY_MASS ? s.p_active : s.k_active)) return;
  int64_t counts[kBins];
  double masses[kBins];
  for (int b = 0; b < kBins; ++b) {
    counts[b] = 0;
    masses[b] = 0.0;
  }
  for (int64_t k = 0; k < chunks; ++k) {  // chunk order: the same sums for every batch
    for (int b = 0; b < kBins; ++b) {
      counts[b] += w.part_n[(r * chunks + k) * kBins + b];
      masses[b] += w.part_w[(r * chunks + k) * kBins + b];
    }
  }
  double target;
  if (BY_MASS && first) {
    double total = 0.0;
    for (int b = kBins - 1; b >= 0; --b) total += masses[b];
    target = s.top_p * total;  // the first level sees all of K
  } else {
    target = BY_MASS ? s.p_target : s.k_target;
  }
  double above = 0.0;
  int chosen = -1;
  for (int b = kBins - 1; b >= 0; --b) {
    const double wb = BY_MASS ? masses[b] : static_cast<double>(counts[b]);
    if (counts[b] == 0) continue;
    if (above + wb >= target) {
      chosen = b;
      break;
    }
    above += wb;
  }
  uint64_t& prefix = BY_MASS ? s.p_prefix : s.k_prefix;
  prefix = (prefix << kRadixBits) | static_cast<uint64_t>(chosen < 0 ? 0 : chosen);
  if (BY_MASS) {
    s.p_target = target - (chosen < 0 ? 0.0 : above);
    if (chosen < 0) s.p_keepall = 1;  // rounding: top-p keeps all of K
    if (last) {
      const uint64_t tp = s.p_keepall ? s.tk : prefix;
      s.thr = tp > s.tk ? tp : s.tk;
    }
  } else {
    s.k_target = target - above;
    if (last) s.tk = s.thr = prefix;
  }
}

template <typename C, typename K>
__device__ __forceinline__ bool kept(C x, C e, const RowState& s) {
  return order_key(x) >= static_cast<K>(s.thr) && static_cast<double>(e) >= s.min_p;
}

template <typename T>
__global__ void __launch_bounds__(kThreadsPerBlock) mass_kernel(SampleLogitsArgs a, int64_t chunks, Workspace w) {
  using C = typename compute_type<T>::type;
  using K = typename KeyOf<C>::type;
  const int64_t r = blockIdx.x, chunk = blockIdx.y;
  const RowState& s = w.state[r];
  if (s.mode != 1) return;
  const C m = static_cast<C>(s.m), t = static_cast<C>(s.t);
  double sum = 0.0;
  for (int i = 0; i < kItemsPerThread; ++i) {
    const int64_t c = chunk * kChunk + i * kThreadsPerBlock + threadIdx.x;
    if (c >= a.cols) break;
    const C x = load_x<T>(a, r, c);
    const C e = mass_of(x, m, t);
    sum += kept<C, K>(x, e, s) ? static_cast<double>(e) : 0.0;
  }
  __shared__ double scratch[kWarps];
  const double total = block_sum(sum, scratch);
  if (threadIdx.x == 0) w.chunk_mass[r * chunks + chunk] = total;
}

template <typename T>
__global__ void __launch_bounds__(kThreadsPerBlock) write_kernel(SampleLogitsArgs a, Workspace w) {
  using C = typename compute_type<T>::type;
  using K = typename KeyOf<C>::type;
  const int64_t r = blockIdx.x, chunk = blockIdx.y;
  const RowState& s = w.state[r];
  const C m = static_cast<C>(s.m), t = s.mode == 1 ? static_cast<C>(s.t) : C(1);
  T* out = static_cast<T*>(a.filtered) + r * a.cols;
  for (int i = 0; i < kItemsPerThread; ++i) {
    const int64_t c = chunk * kChunk + i * kThreadsPerBlock + threadIdx.x;
    if (c >= a.cols) break;
    const C x = load_x<T>(a, r, c);
    C v;
    if (s.mode == 1) v = kept<C, K>(x, mass_of(x, m, t), s) ? x / t : neg_inf<C>();
    else if (s.mode == 2) v = c == s.argmax ? C(0) : neg_inf<C>();
    else v = C(NAN);
    out[c] = cuda::store<T>(v);
  }
}

// The chunk where the cumulative kept mass passes u * (kept mass) scans its columns
// in rounds of kThreadsPerBlock, with a block-wide prefix sum in a fixed order.
template <typename T>
__global__ void __launch_bounds__(kThreadsPerBlock) draw_kernel(SampleLogitsArgs a, int64_t chunks, Workspace w) {
  using C = typename compute_type<T>::type;
  using K = typename KeyOf<C>::type;
  const int64_t r = blockIdx.x, chunk = blockIdx.y;
  const RowState& s = w.state[r];
  if (s.mode != 1) return;
  __shared__ int64_t s_chunk;
  __shared__ double s_cum, s_total, s_target;
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int64_t k = 0; k < chunks; ++k) total += w.chunk_mass[r * chunks + k];
    const double target = s.u * total;
    double cum = 0.0, before = 0.0;
    int64_t crossing = -1, last = -1;
    for (int64_t k = 0; k < chunks; ++k) {
      const double mass = w.chunk_mass[r * chunks + k];
      if (mass > 0.0) last = k;
      if (crossing < 0 && cum + mass > target) {
        crossing = k;
        before = cum;
      }
      cum += mass;
    }
    if (crossing < 0) {  // rounding: the last chunk with mass
      crossing = last;
      before = 0.0;
      for (int64_t k = 0; k < last; ++k) before += w.chunk_mass[r * chunks + k];
    }
    s_chunk = crossing;
    s_cum = before;
    s_total = total;
    s_target = target;
  }
  __syncthreads();
  if (s_chunk != chunk) return;
  const C m = static_cast<C>(s.m), t = static_cast<C>(s.t);
  __shared__ double warp_totals[kWarps];
  __shared__ int64_t s_token, s_last;
  if (threadIdx.x == 0) {
    s_token = -1;  // as unsigned: the largest value, so atomicMin finds the first column
    s_last = 0;    // the chunk has mass, so some kept column raises it
  }
  __syncthreads();
  double cum = s_cum;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int i = 0; i < kItemsPerThread; ++i) {
    const int64_t c = chunk * kChunk + i * kThreadsPerBlock + threadIdx.x;
    double mass = 0.0;
    if (c < a.cols) {
      const C x = load_x<T>(a, r, c);
      const C e = mass_of(x, m, t);
      mass = kept<C, K>(x, e, s) ? static_cast<double>(e) : 0.0;
    }
    // Inclusive prefix sum over the block: within warps, then the warps' totals in order.
    double incl = mass;
    for (int d = 1; d < 32; d *= 2) {
      const double o = __shfl_up_sync(0xFFFFFFFFu, incl, d);
      if (lane >= d) incl += o;
    }
    if (lane == 31) warp_totals[warp] = incl;
    __syncthreads();
    double before = 0.0, round_total = 0.0;
    for (int k = 0; k < kWarps; ++k) {
      if (k < warp) before += warp_totals[k];
      round_total += warp_totals[k];
    }
    const double running = cum + before + incl;
    if (mass > 0.0) {
      if (running > s_target) atomicMin(reinterpret_cast<unsigned long long*>(&s_token), c);  // integer: exact
      atomicMax(reinterpret_cast<unsigned long long*>(&s_last), c);
    }
    cum += round_total;
    __syncthreads();
    if (s_token >= 0) break;  // the same value in every thread
  }
  if (threadIdx.x == 0) {
    const int64_t token = s_token >= 0 ? s_token : s_last;  // rounding: the chunk's last kept column
    const C x = load_x<T>(a, r, token);
    a.tokens[r] = token;
    static_cast<C*>(a.logprobs)[r] = static_cast<C>(static_cast<double>((x - m) / t) - ::log(s_total));
  }
}

template <typename T>
const char* run(const SampleLogitsArgs& a, void* workspace, cudaStream_t stream) {
  using C = typename compute_type<T>::type;
  constexpr int kKeyBits = sizeof(typename KeyOf<C>::type) * 8;
  const int64_t chunks = (a.cols + kChunk - 1) / kChunk;
  if (chunks > 65535) return "sample_logits: rows longer than 65535 * 4096 columns are not supported on CUDA";
  const Workspace w = carve(workspace, a.rows, chunks);
  const dim3 grid(static_cast<unsigned>(a.rows), static_cast<unsigned>(chunks));
  const unsigned row_blocks = static_cast<unsigned>((a.rows + 127) / 128);
  const bool sample = a.filtered == nullptr;
  stats_kernel<T><<<grid, kThreadsPerBlock, 0, stream>>>(a, chunks, w);
  setup_kernel<C><<<row_blocks, 128, 0, stream>>>(a, chunks, w, sample);
  // The searches run only when some row can need them (per-row tensors: always).
  const bool any_k = a.top_k.data != nullptr || (a.top_k.value > 0 && a.top_k.value < a.cols);
  const bool any_p = a.top_p.data != nullptr || a.top_p.value < 1.0;
  constexpr int kLevels = kKeyBits / kRadixBits;
  for (int level = 0; any_k && level < kLevels; ++level) {
    const int shift = kKeyBits - kRadixBits * (level + 1);
    histogram_kernel<T, false><<<grid, kThreadsPerBlock, 0, stream>>>(a, chunks, w, shift);
    narrow_kernel<false><<<row_blocks, 128, 0, stream>>>(a.rows, chunks, w, level == 0, level == kLevels - 1);
  }
  for (int level = 0; any_p && level < kLevels; ++level) {
    const int shift = kKeyBits - kRadixBits * (level + 1);
    histogram_kernel<T, true><<<grid, kThreadsPerBlock, 0, stream>>>(a, chunks, w, shift);
    narrow_kernel<true><<<row_blocks, 128, 0, stream>>>(a.rows, chunks, w, level == 0, level == kLevels - 1);
  }
  if (!sample) {
    write_kernel<T><<<grid, kThreadsPerBlock, 0, stream>>>(a, w);
  } else {
    mass_kernel<T><<<grid, kThreadsPerBlock, 0, stream>>>(a, chunks, w);
    draw_kernel<T><<<grid, kThreadsPerBlock, 0, stream>>>(a, chunks, w);
  }
  return cuda::last_error();
}

}  // namespace

int64_t sample_logits_workspace_bytes(int64_t rows, int64_t cols, DType) {
  const int64_t chunks = cols > 0 ? (cols + kChunk - 1) / kChunk : 1;
  return workspace_size(rows, chunks);
}

const char* sample_logits_cuda(const SampleLogitsArgs& a, void* workspace, void* stream) {
  if (a.rows == 0) return nullptr;
  const char* error = nullptr;
  cuda::dispatch_dtype(a.dtype, [&](auto tag) { error = run<decltype(tag)>(a, workspace, static_cast<cudaStream_t>(stream)); });
  return error;
}

}  // namespace ptf
