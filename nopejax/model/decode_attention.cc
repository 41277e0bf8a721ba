// One decoding step's attention on a CPU (nopejax/model/cpu_kernels.py): queries [B, K, G, H]
// against one layer's cached keys and values [B, K, S, H] (layer `layer` of a stack
// [R, B, K, S, H], read in place) and the step's own key and value [B, K, 1, H], with an
// additive bias [B, K, G, S + 1] (the mask, and the positional bias where the scheme has one).
// Each (batch row, kv head) reads its keys and values once for all G query heads of its group;
// the rows are shared between the caller and XLA's intra-op thread pool.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

inline float Dot(const float* a, const float* b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  float sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

struct Step {
  int64_t G, S, H;
  const float *q, *k_cache, *v_cache, *k_new, *v_new, *bias;
  float* out;

  // Row bk = b * K + k: logits, softmax and the weighted sum of values for its G queries.
  void Row(int64_t bk, float* p) const {
    const int64_t T = S + 1;
    const float* q_GH = q + bk * G * H;
    const float* k_SH = k_cache + bk * S * H;
    const float* v_SH = v_cache + bk * S * H;
    const float* bias_GT = bias + bk * G * T;
    float* out_GH = out + bk * G * H;
    for (int64_t s = 0; s < S; ++s)
      for (int64_t g = 0; g < G; ++g)
        p[g * T + s] = Dot(q_GH + g * H, k_SH + s * H, H) + bias_GT[g * T + s];
    for (int64_t g = 0; g < G; ++g) {
      float* p_T = p + g * T;
      p_T[S] = Dot(q_GH + g * H, k_new + bk * H, H) + bias_GT[g * T + S];
      const float m = *std::max_element(p_T, p_T + T);
      float total = 0;
      for (int64_t s = 0; s < T; ++s) total += (p_T[s] = std::exp(p_T[s] - m));
      const float scale = 1.0f / total;
      for (int64_t s = 0; s < T; ++s) p_T[s] *= scale;
      float* o = out_GH + g * H;
      for (int64_t h = 0; h < H; ++h) o[h] = p_T[S] * v_new[bk * H + h];
    }
    for (int64_t s = 0; s < S; ++s) {
      const float* v_H = v_SH + s * H;
      for (int64_t g = 0; g < G; ++g) {
        const float w = p[g * T + s];
        float* o = out_GH + g * H;
        for (int64_t h = 0; h < H; ++h) o[h] += w * v_H[h];
      }
    }
  }
};

// Rows handed out one at a time; whoever claims a row computes it. The caller works too and
// waits only for rows others claimed, so a pool task that starts late finds nothing to do.
struct Rows {
  Step step;
  int64_t n;
  std::atomic<int64_t> next{0}, done{0};

  void Work() {
    std::vector<float> p(step.G * (step.S + 1));
    for (int64_t i; (i = next.fetch_add(1)) < n;) {
      step.Row(i, p.data());
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

ffi::Error DecodeAttention(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q,
                           ffi::Buffer<ffi::F32> k_cache, ffi::Buffer<ffi::F32> v_cache,
                           ffi::Buffer<ffi::S32> layer, ffi::Buffer<ffi::F32> k_new,
                           ffi::Buffer<ffi::F32> v_new, ffi::Buffer<ffi::F32> bias,
                           ffi::ResultBuffer<ffi::F32> out) {
  auto qd = q.dimensions();
  auto cd = k_cache.dimensions();
  const int64_t B = qd[0], K = qd[1], G = qd[2], H = qd[3];
  const int64_t S = cd[cd.size() - 2];
  const int64_t R = cd.size() == 5 ? cd[0] : 1;
  const int64_t r = layer.typed_data()[0];
  if (r < 0 || r >= R) return ffi::Error::InvalidArgument("decode_attention: layer out of range");
  const int64_t layer_size = B * K * S * H;
  auto rows = std::make_shared<Rows>();
  rows->step = Step{G, S, H, q.typed_data(), k_cache.typed_data() + r * layer_size,
                    v_cache.typed_data() + r * layer_size, k_new.typed_data(),
                    v_new.typed_data(), bias.typed_data(), out->typed_data()};
  rows->n = B * K;
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), rows->n) - 1;
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([rows] { rows->Work(); });
  rows->Work();
  while (rows->done.load(std::memory_order_acquire) < rows->n) std::this_thread::yield();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(NopejaxDecodeAttention, DecodeAttention,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
