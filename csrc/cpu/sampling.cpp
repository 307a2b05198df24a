// CPU kernels for sample_logits and filter_logits.
//
// A row is cut into chunks of kChunk columns (a cut fixed by the row length, so
// every sum is added in the same order whatever the batch size or thread count:
// batch-invariant). Rows run in parallel when there are enough of them; a short
// batch of long rows runs each row's chunk passes in parallel instead. Both
// schedules execute the same per-chunk code and combine chunk results in chunk
// order, so they give bit-identical results.
//
// Per row, one vectorised pass finds the maximum of every block of kBlock
// columns (and checks for NaN / +inf). Then:
// - small top-k (0 < k <= kSmallK): the k-th largest block maximum is a lower
//   bound of the k-th largest logit (those k blocks hold k values at least that
//   large), so the top-k set K lies in the few blocks whose maximum reaches it.
//   Only those blocks are read again; thresholds, masses and the draw then work
//   on their candidates alone.
// - otherwise: a pass computes e = exp((l - max) / T) and a histogram of counts
//   and float64 masses over the top 11 bits of each logit's order key; the bins
//   locate the top-k and top-p thresholds, and radix selection over the one bin
//   that holds each threshold (gathered in one more pass) finds it exactly. A
//   last pass sums the kept mass per block of kBlock columns, which places the
//   draw in one block; only that block is rescanned.
// Nothing is sorted.
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "pyprobtf/cpu.h"
#include "pyprobtf/sampling.h"

namespace ptf {
namespace {

using sampling::order_key;
using sampling::order_value;

constexpr int64_t kChunk = 16384;  // columns per chunk: the cut of a row
constexpr int64_t kBlock = 64;     // columns per block: block maxima and block masses
constexpr int64_t kSmallK = 1024;  // rows with top_k up to this take the candidate path
// At most this many columns are copied out of a row (top-k candidates, one histogram
// bin's members); past it, selection streams over the row in a few more passes, so
// extra memory stays O(cols / kChunk * kBins) however many logits tie.
constexpr int64_t kGatherCap = int64_t{1} << 16;
constexpr int kDigitBits = 11;     // radix digit: 2048 bins
// A column costs well under a nanosecond here (one vectorised pass for most rows),
// so a parallel region pays off only past kCheapWork times cpu::kMinParallelWork columns.
constexpr int64_t kCheapWork = 8;
constexpr int64_t kBins = int64_t{1} << kDigitBits;

template <typename C> using KeyOf = std::conditional_t<std::is_same<C, double>::value, uint64_t, uint32_t>;

// Radix selection: the key v with W(> v) < target <= W(>= v), where W sums
// `weight` (or counts, when weight is null) over keys[0, n). All keys agree in
// their top `fixed_bits` bits. When rounding leaves target above the total
// weight, the smallest key is returned (everything is kept). Reorders keys and
// weight in place (stable compaction, no sorting).
template <typename K>
K weighted_select(K* keys, double* weight, int64_t n, double target, int fixed_bits, uint32_t* bin_n,
                  double* bin_w) {
  constexpr int kKeyBits = static_cast<int>(sizeof(K) * 8);
  int shift = kKeyBits - fixed_bits;
  while (shift > 0 && n > 1) {
    const int digit = std::min(kDigitBits, shift);
    shift -= digit;
    const int64_t bins = int64_t{1} << digit;
    const K mask = static_cast<K>(bins - 1);
    std::fill(bin_n, bin_n + bins, 0u);
    std::fill(bin_w, bin_w + bins, 0.0);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t b = static_cast<int64_t>((keys[i] >> shift) & mask);
      bin_n[b] += 1;
      bin_w[b] += weight ? weight[i] : 1.0;
    }
    double above = 0.0;
    int64_t chosen = -1;
    for (int64_t b = bins - 1; b >= 0; --b) {
      if (bin_n[b] == 0) continue;
      if (above + bin_w[b] >= target) {
        chosen = b;
        break;
      }
      above += bin_w[b];
    }
    if (chosen < 0) return *std::min_element(keys, keys + n);
    target -= above;
    int64_t kept = 0;
    for (int64_t i = 0; i < n; ++i) {
      if (static_cast<int64_t>((keys[i] >> shift) & mask) == chosen) {
        keys[kept] = keys[i];
        if (weight) weight[kept] = weight[i];
        ++kept;
      }
    }
    n = kept;
  }
  return keys[0];
}

// Scratch of one chunk; reused from row to row.
template <typename C> struct ChunkWork {
  using K = KeyOf<C>;
  C max;
  int64_t nan, pos_inf;
  std::vector<C> cand_v;        // small top-k: candidate values ...
  std::vector<int64_t> cand_i;  // ... and their columns, in column order
  std::vector<uint32_t> bin_n;  // level-1 histogram: counts ...
  std::vector<double> bin_w;    // ... and masses
  std::vector<K> gather_k;      // one bin's keys ...
  std::vector<double> gather_w; // ... and masses, in column order
  std::vector<C> block_max;
  std::vector<double> block_mass;
  double mass;
  K min_key;  // streaming selection: the smallest member key of the chunk
};

// Scratch of one row.
template <typename C> struct RowWork {
  using K = KeyOf<C>;
  std::vector<ChunkWork<C>> chunks;
  std::vector<C> v;
  std::vector<int64_t> idx;
  std::vector<K> keys, sel_keys;
  std::vector<double> e, sel_w;
  std::vector<uint32_t> bin_n, counts;
  std::vector<double> bin_w, masses;
};

// Everything a row's passes need, with the row's parameters resolved.
template <typename T, bool CONTIG> struct RowCtx {
  using C = typename compute_type<T>::type;
  using K = KeyOf<C>;
  const SampleLogitsArgs* a;
  int64_t r;
  const T* row;
  int64_t cols;
  C m;    // row maximum
  C t;    // temperature in the compute type
  C min_p;  // min_p rounded up to C: e >= min_p here exactly when double(e) >= the float64 min_p
  K thr;    // kept: order_key >= thr (0 keeps all)

  PTF_HD C x(int64_t c) const { return cpu::load(row[CONTIG ? c : c * a->logits.col_stride]); }
  PTF_HD C e(C xv) const { return cpu::exp((xv - m) / t); }
};

template <typename C> C neg_inf() { return -std::numeric_limits<C>::infinity(); }

// The smallest C at or above v: comparing a C against it is comparing against v exactly.
template <typename C> C round_up(double v) {
  C c = static_cast<C>(v);
  if (static_cast<double>(c) < v) c = std::nextafter(c, std::numeric_limits<C>::infinity());
  return c;
}

// Whether a value is NaN or +inf (an error), counted in lanes as wide as C's.
template <typename C> using CountOf = std::conditional_t<std::is_same<C, double>::value, int64_t, int32_t>;

// ----------------------------------------------------------------------------- passes over one chunk

// Pass 1: the maximum of every block of kBlock columns (and of the chunk), and
// NaN / +inf counts.
template <typename T, bool CONTIG>
PTF_MULTIVERSION void scan_chunk(const RowCtx<T, CONTIG>& ctx_in, int64_t c0, int64_t c1,
                                 ChunkWork<typename RowCtx<T, CONTIG>::C>& w) {
  using C = typename RowCtx<T, CONTIG>::C;
  const RowCtx<T, CONTIG> ctx = ctx_in;  // a local copy: the stores below cannot alias it
  const int64_t blocks = (c1 - c0 + kBlock - 1) / kBlock;
  w.block_max.resize(blocks);
  C m = neg_inf<C>();
  int64_t bad = 0;
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t b0 = c0 + b * kBlock, b1 = std::min(b0 + kBlock, c1);
    C bm = neg_inf<C>();
    CountOf<C> bb = 0;
#pragma omp simd reduction(max : bm) reduction(+ : bb)
    for (int64_t c = b0; c < b1; ++c) {
      const C v = ctx.x(c);
      bm = v > bm ? v : bm;
      bb += !(v < std::numeric_limits<C>::infinity());  // NaN or +inf
    }
    w.block_max[b] = bm;
    m = bm > m ? bm : m;
    bad += bb;
  }
  w.max = m;
  w.nan = 0;
  w.pos_inf = 0;
  if (bad) {  // the error path: tell NaN from +inf
    for (int64_t c = c0; c < c1; ++c) {
      const C v = ctx.x(c);
      w.nan += v != v;
      w.pos_inf += v == std::numeric_limits<C>::infinity();
    }
  }
}

// Top-k candidates: the finite values >= low (and their columns), from the
// blocks whose maximum reaches low.
template <typename T, bool CONTIG>
PTF_MULTIVERSION void candidates_chunk(const RowCtx<T, CONTIG>& ctx_in, int64_t c0, int64_t c1,
                                       typename RowCtx<T, CONTIG>::C low,
                                       ChunkWork<typename RowCtx<T, CONTIG>::C>& w) {
  using C = typename RowCtx<T, CONTIG>::C;
  const RowCtx<T, CONTIG> ctx = ctx_in;
  w.cand_v.clear();
  w.cand_i.clear();
  const int64_t blocks = static_cast<int64_t>(w.block_max.size());
  for (int64_t b = 0; b < blocks; ++b) {
    if (!(w.block_max[b] >= low)) continue;
    const int64_t b0 = c0 + b * kBlock, b1 = std::min(b0 + kBlock, c1);
    for (int64_t c = b0; c < b1; ++c) {
      const C v = ctx.x(c);
      if (v >= low && v > neg_inf<C>()) {
        w.cand_v.push_back(v);
        w.cand_i.push_back(c);
      }
    }
  }
}

// Histogram of counts and masses over the top kDigitBits bits of the order keys.
template <typename T, bool CONTIG>
PTF_MULTIVERSION void histogram_chunk(const RowCtx<T, CONTIG>& ctx, int64_t c0, int64_t c1,
                                      ChunkWork<typename RowCtx<T, CONTIG>::C>& w) {
  using C = typename RowCtx<T, CONTIG>::C;
  using K = typename RowCtx<T, CONTIG>::K;
  constexpr int kShift = static_cast<int>(sizeof(K) * 8) - kDigitBits;
  const RowCtx<T, CONTIG> local = ctx;
  w.bin_n.assign(kBins, 0u);
  w.bin_w.assign(kBins, 0.0);
  uint32_t* bin_n = w.bin_n.data();
  double* bin_w = w.bin_w.data();
  C ev[kBlock];
  uint32_t digit[kBlock];
  for (int64_t b0 = c0; b0 < c1; b0 += kBlock) {
    const int64_t n = std::min(kBlock, c1 - b0);
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      const C v = local.x(b0 + j);
      ev[j] = local.e(v);
      digit[j] = static_cast<uint32_t>(order_key(v) >> kShift);
    }
    for (int64_t j = 0; j < n; ++j) {
      bin_n[digit[j]] += 1;
      bin_w[digit[j]] += static_cast<double>(ev[j]);
    }
  }
}

// The keys and masses of the columns whose top bits are `bin`, in column order.
template <typename T, bool CONTIG>
PTF_MULTIVERSION void gather_chunk(const RowCtx<T, CONTIG>& ctx_in, int64_t c0, int64_t c1, uint32_t bin,
                                   ChunkWork<typename RowCtx<T, CONTIG>::C>& w) {
  using C = typename RowCtx<T, CONTIG>::C;
  using K = typename RowCtx<T, CONTIG>::K;
  constexpr int kShift = static_cast<int>(sizeof(K) * 8) - kDigitBits;
  const RowCtx<T, CONTIG> ctx = ctx_in;
  size_t n = 0;
  K keys[kBlock];
  C ev[kBlock];
  for (int64_t b0 = c0; b0 < c1; b0 += kBlock) {
    const int64_t len = std::min(kBlock, c1 - b0);
    CountOf<C> hits = 0;
#pragma omp simd reduction(+ : hits)
    for (int64_t j = 0; j < len; ++j) {
      const C v = ctx.x(b0 + j);
      keys[j] = order_key(v);
      ev[j] = ctx.e(v);
      hits += static_cast<uint32_t>(keys[j] >> kShift) == bin;
    }
    if (hits == 0) continue;
    w.gather_k.resize(n + len);
    w.gather_w.resize(n + len);
    K* gk = w.gather_k.data();
    double* gw = w.gather_w.data();
    for (int64_t j = 0; j < len; ++j) {  // branch-free append
      gk[n] = keys[j];
      gw[n] = static_cast<double>(ev[j]);
      n += static_cast<uint32_t>(keys[j] >> kShift) == bin;
    }
  }
  w.gather_k.resize(n);
  w.gather_w.resize(n);
}

// Streaming radix selection, one digit: counts and masses (or counts again, unweighted)
// of digit (key >> shift) & mask over the chunk's members: the columns whose key agrees
// with `prefix` above bit `high_shift` and is >= floor. Also their smallest key.
template <typename T, bool CONTIG>
PTF_MULTIVERSION void digit_histogram_chunk(const RowCtx<T, CONTIG>& ctx, int64_t c0, int64_t c1,
                                            typename RowCtx<T, CONTIG>::K prefix, int high_shift, int shift,
                                            typename RowCtx<T, CONTIG>::K mask, typename RowCtx<T, CONTIG>::K floor,
                                            bool weighted, ChunkWork<typename RowCtx<T, CONTIG>::C>& w) {
  using C = typename RowCtx<T, CONTIG>::C;
  using K = typename RowCtx<T, CONTIG>::K;
  const RowCtx<T, CONTIG> local = ctx;
  w.bin_n.assign(kBins, 0u);
  w.bin_w.assign(kBins, 0.0);
  w.min_key = std::numeric_limits<K>::max();
  const K high = prefix >> high_shift;
  for (int64_t c = c0; c < c1; ++c) {
    const C v = local.x(c);
    const K key = order_key(v);
    if ((key >> high_shift) != high || key < floor) continue;
    const auto b = static_cast<int64_t>((key >> shift) & mask);
    w.bin_n[b] += 1;
    w.bin_w[b] += weighted ? static_cast<double>(local.e(v)) : 1.0;
    w.min_key = key < w.min_key ? key : w.min_key;
  }
}

// The mass of the chunk's columns in level-1 bin `bin` with key >= floor.
template <typename T, bool CONTIG>
PTF_MULTIVERSION void bin_mass_chunk(const RowCtx<T, CONTIG>& ctx, int64_t c0, int64_t c1, uint32_t bin,
                                     typename RowCtx<T, CONTIG>::K floor,
                                     ChunkWork<typename RowCtx<T, CONTIG>::C>& w) {
  using C = typename RowCtx<T, CONTIG>::C;
  using K = typename RowCtx<T, CONTIG>::K;
  constexpr int kShift = static_cast<int>(sizeof(K) * 8) - kDigitBits;
  const RowCtx<T, CONTIG> local = ctx;
  double total = 0.0;
  for (int64_t c = c0; c < c1; ++c) {
    const C v = local.x(c);
    const K key = order_key(v);
    if (static_cast<uint32_t>(key >> kShift) == bin && key >= floor) total += static_cast<double>(local.e(v));
  }
  w.mass = total;
}

// Whether column value v (with mass ev) is in the kept set A.
template <typename T, bool CONTIG>
PTF_HD bool kept(const RowCtx<T, CONTIG>& ctx, typename RowCtx<T, CONTIG>::C v,
                 typename RowCtx<T, CONTIG>::C ev) {
  return order_key(v) >= ctx.thr && ev >= ctx.min_p;
}

// The kept mass of every block of the chunk, and of the chunk.
template <typename T, bool CONTIG>
PTF_MULTIVERSION void mass_chunk(const RowCtx<T, CONTIG>& ctx, int64_t c0, int64_t c1,
                                 ChunkWork<typename RowCtx<T, CONTIG>::C>& w) {
  using C = typename RowCtx<T, CONTIG>::C;
  const int64_t blocks = (c1 - c0 + kBlock - 1) / kBlock;
  w.block_mass.resize(blocks);
  const RowCtx<T, CONTIG> local = ctx;  // (a copy the compiler knows nothing else writes)
  double total = 0.0;
  C ev[kBlock];
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t b0 = c0 + b * kBlock, n = std::min(kBlock, c1 - b0);
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      const C v = local.x(b0 + j);
      const C e = local.e(v);
      ev[j] = kept(local, v, e) ? e : C(0);
    }
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < n; ++j) s += static_cast<double>(ev[j]);
    w.block_mass[b] = s;
    total += s;
  }
  w.mass = total;
}

// filter_logits' output for the chunk: l / T on the kept set, -inf elsewhere.
template <typename T, bool CONTIG>
PTF_MULTIVERSION void write_chunk(const RowCtx<T, CONTIG>& ctx, int64_t c0, int64_t c1, T* out) {
  using C = typename RowCtx<T, CONTIG>::C;
  const RowCtx<T, CONTIG> local = ctx;
#pragma omp simd
  for (int64_t c = c0; c < c1; ++c) {
    const C v = local.x(c);
    out[c] = cpu::store<T>(kept(local, v, local.e(v)) ? v / local.t : neg_inf<C>());
  }
}

template <typename T>
PTF_MULTIVERSION void fill_row(T* out, int64_t cols, typename compute_type<T>::type value) {
  const T stored = cpu::store<T>(value);
#pragma omp simd
  for (int64_t c = 0; c < cols; ++c) out[c] = stored;
}

// ----------------------------------------------------------------------------- one row

template <typename T, bool CONTIG> struct RowSampler {
  using C = typename compute_type<T>::type;
  using K = KeyOf<C>;
  using Ctx = RowCtx<T, CONTIG>;
  static constexpr int kShift = static_cast<int>(sizeof(K) * 8) - kDigitBits;

  const SampleLogitsArgs& a;
  RowWork<C>& work;
  bool parallel;  // run the chunk passes of this row in parallel
  int num_threads;
  Ctx ctx{};
  int64_t n_chunks = 0;

  template <typename F> void for_chunks(F&& f) {
    auto body = [&](int64_t chunk) {
      const int64_t c0 = chunk * kChunk;
      f(chunk, c0, std::min(c0 + kChunk, ctx.cols));
    };
    if (parallel) {
      cpu::parallel_for(n_chunks, n_chunks * kChunk / kCheapWork, num_threads, body);
    } else {
      for (int64_t chunk = 0; chunk < n_chunks; ++chunk) body(chunk);
    }
  }

  T* out_row() const { return static_cast<T*>(a.filtered) + ctx.r * ctx.cols; }

  void finish(int32_t status, int64_t token, double logprob) {
    a.status[ctx.r] = status;
    if (a.filtered) {
      if (status != sampling::kOk) fill_row<T>(out_row(), ctx.cols, std::numeric_limits<C>::quiet_NaN());
      return;
    }
    a.tokens[ctx.r] = token;
    static_cast<C*>(a.logprobs)[ctx.r] = static_cast<C>(logprob);
  }

  void fail(int32_t status) { finish(status, -1, std::numeric_limits<double>::quiet_NaN()); }

  void run(int64_t r) {
    const int64_t cols = a.cols;
    ctx.a = &a;
    ctx.r = r;
    ctx.row = static_cast<const T*>(a.logits.data) + r * a.logits.row_stride;
    ctx.cols = cols;
    const double temperature = a.temperature.at(r), top_p = a.top_p.at(r), min_p = a.min_p.at(r);
    const int64_t top_k = a.top_k.at(r);
    int32_t status = sampling::param_status(temperature, top_k, top_p, min_p);
    double u = 0.0;
    if (status == sampling::kOk && !a.filtered) {
      u = sampling::row_uniform(a.uniform, a.uniform_stride, a.seed, a.offset, r);
      if (!(u >= 0.0 && u < 1.0)) status = sampling::kBadUniform;
    }
    if (status != sampling::kOk) return fail(status);

    ctx.t = static_cast<C>(temperature);
    ctx.min_p = round_up<C>(min_p);
    ctx.thr = 0;
    const bool greedy = ctx.t == C(0);
    const bool k_active = top_k > 0 && top_k < cols && !greedy;
    const bool small_k = k_active && top_k <= kSmallK;
    n_chunks = (cols + kChunk - 1) / kChunk;
    work.chunks.resize(n_chunks);

    for_chunks([&](int64_t chunk, int64_t c0, int64_t c1) {
      scan_chunk<T, CONTIG>(ctx, c0, c1, work.chunks[chunk]);
    });
    C m = neg_inf<C>();
    int64_t nan = 0, pos_inf = 0;
    for (const auto& w : work.chunks) {
      m = w.max > m ? w.max : m;
      nan += w.nan;
      pos_inf += w.pos_inf;
    }
    if (nan) return fail(sampling::kNanLogit);
    if (pos_inf) return fail(sampling::kPosInfLogit);
    if (m == neg_inf<C>()) return fail(sampling::kAllNegInf);
    ctx.m = m;

    if (greedy) return run_greedy();
    if (small_k) return run_small_k(top_k, top_p, u);
    return run_general(k_active ? top_k : 0, top_p, u);
  }

  void run_greedy() {
    // The first maximal column: in the first block whose maximum is the row's.
    int64_t token = 0;
    for (int64_t chunk = 0; chunk < n_chunks; ++chunk) {
      const auto& bm = work.chunks[chunk].block_max;
      const auto first = std::find(bm.begin(), bm.end(), ctx.m);
      if (first != bm.end()) {
        token = chunk * kChunk + (first - bm.begin()) * kBlock;
        break;
      }
    }
    while (ctx.x(token) != ctx.m) ++token;
    if (a.filtered) {
      T* out = out_row();
      fill_row<T>(out, ctx.cols, neg_inf<C>());
      out[token] = cpu::store<T>(C(0));
    }
    finish(sampling::kOk, token, 0.0);
  }

  // Top-k with small k: every token of K is among the candidates of the blocks
  // whose maximum reaches the k-th largest block maximum.
  void run_small_k(int64_t top_k, double top_p, double u) {
    auto& v = work.v;
    auto& idx = work.idx;
    auto& keys = work.keys;
    auto& e = work.e;
    work.bin_n.resize(kBins);
    work.bin_w.resize(kBins);
    keys.clear();
    for (const auto& w : work.chunks) {
      for (const C bm : w.block_max) keys.push_back(order_key(bm));
    }
    C low = neg_inf<C>();  // fewer than k blocks: every finite value is a candidate
    if (static_cast<int64_t>(keys.size()) >= top_k) {
      low = order_value(select(keys.data(), nullptr, static_cast<int64_t>(keys.size()),
                               static_cast<double>(top_k), 0));
    }
    int64_t candidate_blocks = 0;
    for (const auto& w : work.chunks) {
      for (const C bm : w.block_max) candidate_blocks += bm >= low;
    }
    if (candidate_blocks * kBlock > kGatherCap) {  // many ties at the top: no candidate copy
      return run_general(top_k, top_p, u);
    }
    for_chunks([&](int64_t chunk, int64_t c0, int64_t c1) {
      candidates_chunk<T, CONTIG>(ctx, c0, c1, low, work.chunks[chunk]);
    });
    v.clear();
    idx.clear();
    for (const auto& w : work.chunks) {
      v.insert(v.end(), w.cand_v.begin(), w.cand_v.end());
      idx.insert(idx.end(), w.cand_i.begin(), w.cand_i.end());
    }
    int64_t n = static_cast<int64_t>(v.size());
    keys.resize(n);
    for (int64_t i = 0; i < n; ++i) keys[i] = order_key(v[i]);
    // Fewer finite candidates than k happens only when the row has fewer than k
    // finite values (low is then -inf): K is every token.
    if (n >= top_k) {
      work.sel_keys.assign(keys.begin(), keys.end());
      const K tk = select(work.sel_keys.data(), nullptr, n, static_cast<double>(top_k), 0);
      int64_t kept_n = 0;
      for (int64_t i = 0; i < n; ++i) {
        if (keys[i] >= tk) {
          v[kept_n] = v[i];
          idx[kept_n] = idx[i];
          keys[kept_n] = keys[i];
          ++kept_n;
        }
      }
      n = kept_n;
    }
    e.resize(n);
    double mass_k = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      e[i] = static_cast<double>(ctx.e(v[i]));
      mass_k += e[i];
    }
    K thr = 0;
    if (top_p < 1.0) {
      work.sel_keys.assign(keys.begin(), keys.begin() + n);
      work.sel_w.assign(e.begin(), e.begin() + n);
      thr = select(work.sel_keys.data(), work.sel_w.data(), n, top_p * mass_k, 0);
    }
    const double min_p = static_cast<double>(ctx.min_p);  // e[i] is a C: the same comparison
    auto in_a = [&](int64_t i) { return keys[i] >= thr && e[i] >= min_p; };
    if (a.filtered) {
      T* out = out_row();
      fill_row<T>(out, ctx.cols, neg_inf<C>());
      for (int64_t i = 0; i < n; ++i) {
        if (in_a(i)) out[idx[i]] = cpu::store<T>(v[i] / ctx.t);
      }
      return finish(sampling::kOk, 0, 0.0);
    }
    double mass_a = 0.0;
    for (int64_t i = 0; i < n; ++i) mass_a += in_a(i) ? e[i] : 0.0;
    const double target = u * mass_a;
    double cum = 0.0;
    int64_t chosen = -1, last = -1;
    for (int64_t i = 0; i < n; ++i) {
      if (!in_a(i) || e[i] <= 0.0) continue;
      last = i;
      cum += e[i];
      if (cum > target) {
        chosen = i;
        break;
      }
    }
    if (chosen < 0) chosen = last;  // rounding left u * mass just above the last sum
    finish(sampling::kOk, idx[chosen], logprob(v[chosen], mass_a));
  }

  double logprob(C v, double mass_a) const {
    return static_cast<double>((v - ctx.m) / ctx.t) - std::log(mass_a);
  }

  K select(K* keys, double* weight, int64_t n, double target, int fixed_bits) {
    return weighted_select<K>(keys, weight, n, target, fixed_bits, work.bin_n.data(), work.bin_w.data());
  }

  // weighted_select (counts when !weighted, masses e otherwise) over the row's columns in
  // level-1 bin `bin` with key >= floor, streamed: one pass over the row per digit.
  K stream_select(uint32_t bin, K floor, bool weighted, double target) {
    constexpr int kKeyBits = static_cast<int>(sizeof(K) * 8);
    K prefix = static_cast<K>(bin) << kShift;
    int shift = kShift;
    while (shift > 0) {
      const int digit = std::min(kDigitBits, shift);
      const int high_shift = shift;
      shift -= digit;
      const K mask = static_cast<K>((int64_t{1} << digit) - 1);
      for_chunks([&](int64_t chunk, int64_t c0, int64_t c1) {
        digit_histogram_chunk<T, CONTIG>(ctx, c0, c1, prefix, high_shift, shift, mask, floor, weighted,
                                         work.chunks[chunk]);
      });
      const int64_t bins = int64_t{1} << digit;
      auto& counts = work.bin_n;
      auto& masses = work.bin_w;
      counts.assign(kBins, 0u);
      masses.assign(kBins, 0.0);
      K min_key = std::numeric_limits<K>::max();
      for (const auto& w : work.chunks) {  // in chunk order: the same sums on every schedule
        for (int64_t b = 0; b < bins; ++b) {
          counts[b] += w.bin_n[b];
          masses[b] += w.bin_w[b];
        }
        min_key = w.min_key < min_key ? w.min_key : min_key;
      }
      double above = 0.0;
      int64_t chosen = -1;
      for (int64_t b = bins - 1; b >= 0; --b) {
        if (counts[b] == 0) continue;
        if (above + masses[b] >= target) {
          chosen = b;
          break;
        }
        above += masses[b];
      }
      if (chosen < 0) return min_key;  // rounding left the target above the total: keep all
      target -= above;
      prefix |= static_cast<K>(chosen) << shift;
    }
    (void)kKeyBits;
    return prefix;
  }

  // The mass of the row's columns in level-1 bin `bin` with key >= floor, summed in chunk order.
  double stream_bin_mass(uint32_t bin, K floor) {
    for_chunks([&](int64_t chunk, int64_t c0, int64_t c1) {
      bin_mass_chunk<T, CONTIG>(ctx, c0, c1, bin, floor, work.chunks[chunk]);
    });
    double total = 0.0;
    for (const auto& w : work.chunks) total += w.mass;
    return total;
  }

  // The keys and masses of level-1 bin `bin`, over all chunks in column order.
  void gather(uint32_t bin) {
    for_chunks([&](int64_t chunk, int64_t c0, int64_t c1) {
      gather_chunk<T, CONTIG>(ctx, c0, c1, bin, work.chunks[chunk]);
    });
    work.keys.clear();
    work.e.clear();
    for (const auto& w : work.chunks) {
      work.keys.insert(work.keys.end(), w.gather_k.begin(), w.gather_k.end());
      work.e.insert(work.e.end(), w.gather_w.begin(), w.gather_w.end());
    }
  }

  void run_general(int64_t top_k, double top_p, double u) {
    if (top_k > 0 || top_p < 1.0) locate_thresholds(top_k, top_p);
    for_chunks([&](int64_t chunk, int64_t c0, int64_t c1) {
      if (a.filtered) {
        write_chunk<T, CONTIG>(ctx, c0, c1, out_row());
      } else {
        mass_chunk<T, CONTIG>(ctx, c0, c1, work.chunks[chunk]);
      }
    });
    if (a.filtered) return finish(sampling::kOk, 0, 0.0);
    draw(u);
  }

  // ctx.thr from the level-1 histogram and radix selection inside one bin.
  void locate_thresholds(int64_t top_k, double top_p) {
    for_chunks([&](int64_t chunk, int64_t c0, int64_t c1) {
      histogram_chunk<T, CONTIG>(ctx, c0, c1, work.chunks[chunk]);
    });
    work.bin_n.resize(kBins);  // selection scratch
    work.bin_w.resize(kBins);
    auto& counts = work.counts;
    auto& masses = work.masses;
    counts.assign(kBins, 0u);
    masses.assign(kBins, 0.0);
    for (const auto& w : work.chunks) {  // in chunk order: the same sums on every schedule
      for (int64_t b = 0; b < kBins; ++b) {
        counts[b] += w.bin_n[b];
        masses[b] += w.bin_w[b];
      }
    }
    // Top-k: the bin holding the k-th largest key, then the key itself.
    int64_t bin_k = -1;
    K tk = 0;
    double mass_k = 0.0;     // sum over K
    double kept_in_bin = 0.0;  // the part of bin_k's mass in K
    if (top_k > 0) {
      int64_t above = 0;
      for (int64_t b = kBins - 1; b >= 0; --b) {
        if (above + counts[b] >= top_k) {
          bin_k = b;
          break;
        }
        above += counts[b];
        mass_k += masses[b];
      }
      if (counts[bin_k] > kGatherCap) {
        tk = stream_select(static_cast<uint32_t>(bin_k), 0, false, static_cast<double>(top_k - above));
        kept_in_bin = stream_bin_mass(static_cast<uint32_t>(bin_k), tk);
      } else {
        gather(static_cast<uint32_t>(bin_k));
        const int64_t n = static_cast<int64_t>(work.keys.size());
        work.sel_keys.assign(work.keys.begin(), work.keys.end());
        tk = select(work.sel_keys.data(), nullptr, n, static_cast<double>(top_k - above), kDigitBits);
        for (int64_t i = 0; i < n; ++i) kept_in_bin += work.keys[i] >= tk ? work.e[i] : 0.0;
      }
      mass_k += kept_in_bin;
    } else {
      for (int64_t b = kBins - 1; b >= 0; --b) mass_k += masses[b];
    }
    K tp = 0;
    if (top_p < 1.0) {
      const double target = top_p * mass_k;
      double above = 0.0;
      int64_t bin_p = -1;
      for (int64_t b = kBins - 1; b >= std::max<int64_t>(bin_k, 0); --b) {
        const double wb = b == bin_k ? kept_in_bin : masses[b];
        if (counts[b] == 0) continue;
        if (above + wb >= target) {
          bin_p = b;
          break;
        }
        above += wb;
      }
      if (bin_p >= 0 && counts[bin_p] > kGatherCap) {
        tp = stream_select(static_cast<uint32_t>(bin_p), tk, true, target - above);
      } else if (bin_p >= 0) {  // else rounding left the target above the total: top-p keeps all of K
        if (bin_p != bin_k) gather(static_cast<uint32_t>(bin_p));
        // Candidates: the bin's members of K (all of them unless it is top-k's bin).
        int64_t n = 0;
        work.sel_keys.resize(work.keys.size());
        work.sel_w.resize(work.keys.size());
        for (size_t i = 0; i < work.keys.size(); ++i) {
          if (work.keys[i] >= tk) {
            work.sel_keys[n] = work.keys[i];
            work.sel_w[n] = work.e[i];
            ++n;
          }
        }
        tp = select(work.sel_keys.data(), work.sel_w.data(), n, target - above, kDigitBits);
      }
    }
    ctx.thr = std::max(tk, tp);
  }

  // The inverse-CDF draw: chunk masses, then block masses, then one block's columns.
  void draw(double u) {
    double mass_a = 0.0;
    for (const auto& w : work.chunks) mass_a += w.mass;
    const double target = u * mass_a;
    double cum = 0.0;
    int64_t chunk = -1;
    for (int64_t i = 0; i < n_chunks; ++i) {
      if (cum + work.chunks[i].mass > target) {
        chunk = i;
        break;
      }
      cum += work.chunks[i].mass;
    }
    if (chunk < 0) {  // rounding: take the last token with mass
      chunk = n_chunks - 1;
      while (work.chunks[chunk].mass <= 0.0) --chunk;
    }
    const auto& bm = work.chunks[chunk].block_mass;
    const int64_t blocks = static_cast<int64_t>(bm.size());
    int64_t block = -1;
    for (int64_t b = 0; b < blocks; ++b) {
      if (cum + bm[b] > target) {
        block = b;
        break;
      }
      cum += bm[b];
    }
    if (block < 0) {
      block = blocks - 1;
      while (bm[block] <= 0.0) --block;
    }
    const int64_t b0 = chunk * kChunk + block * kBlock, b1 = std::min(b0 + kBlock, ctx.cols);
    int64_t token = -1, last = -1;
    for (int64_t c = b0; c < b1; ++c) {
      const C v = ctx.x(c);
      const C ev = ctx.e(v);
      if (!kept(ctx, v, ev) || !(ev > C(0))) continue;
      last = c;
      cum += static_cast<double>(ev);
      if (cum > target) {
        token = c;
        break;
      }
    }
    if (token < 0) token = last;
    finish(sampling::kOk, token, logprob(ctx.x(token), mass_a));
  }
};

template <typename T, bool CONTIG>
void sample_impl(const SampleLogitsArgs& a, int num_threads) {
  using C = typename compute_type<T>::type;
  const int64_t n_chunks = (a.cols + kChunk - 1) / kChunk;
  if (a.rows >= num_threads || n_chunks == 1 || num_threads <= 1) {
    cpu::parallel_for(a.rows, a.rows * a.cols / kCheapWork, num_threads, [&](int64_t r) {
      static thread_local RowWork<C> work;
      RowSampler<T, CONTIG>{a, work, false, 1}.run(r);
    });
  } else {
    static thread_local RowWork<C> work;
    for (int64_t r = 0; r < a.rows; ++r) RowSampler<T, CONTIG>{a, work, true, num_threads}.run(r);
  }
}

}  // namespace

void sample_logits_cpu(const SampleLogitsArgs& a, int num_threads) {
  if (a.rows == 0) return;
  const bool contiguous = a.logits.col_stride == 1;
  cpu::dispatch_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    contiguous ? sample_impl<T, true>(a, num_threads) : sample_impl<T, false>(a, num_threads);
  });
}

}  // namespace ptf
