#include "attnvar/model/attention.h"

#include <ATen/ATen.h>

#include <cmath>

#include "attnvar/model/projection.h"
#include "attnvar/model/rms_norm.h"
#include "attnvar/model/single_thread.h"

namespace attnvar {
namespace {

at::Tensor select_heads(const at::Tensor& t, const std::vector<int64_t>& heads) {
  if (heads.empty()) return t;
  auto index = at::tensor(heads, at::TensorOptions().dtype(at::kLong)).to(t.device());
  return t.index_select(0, index);
}

// Up to this many multiply-adds in q·kᵀ (heads × queries × slots × head_dim), the
// capture path's attention runs on one thread: below it, waking the other threads costs
// more than they save (a step of generation: ≤ 0.3 M; a 512-token prefill: 150 M).
constexpr int64_t kSingleThreadAttentionMax = int64_t{1} << 20;

at::ScalarType capture_dtype(const CaptureSpec& spec) {
  return spec.dtype == CaptureDtype::kFloat16 ? at::kHalf : at::kFloat;
}

}  // namespace

Attention::Attention(const ModelConfig& config, AttentionWeights weights, int64_t layer)
    : layer_(layer),
      num_heads_(config.num_attention_heads),
      num_kv_heads_(config.num_key_value_heads),
      head_dim_(config.head_dim),
      rms_norm_eps_(config.rms_norm_eps),
      scale_(config.attention_scale()),
      softcap_(config.attn_logit_softcapping),
      w_(std::move(weights)) {
  const int64_t q_dim = w_.q_proj.out_features(), kv_dim = w_.k_proj.out_features();
  qkv_proj_ = Linear::cat_rows({w_.q_proj, w_.k_proj, w_.v_proj});
  w_.q_proj = qkv_proj_.narrow_rows(0, q_dim);
  w_.k_proj = qkv_proj_.narrow_rows(q_dim, kv_dim);
  w_.v_proj = qkv_proj_.narrow_rows(q_dim + kv_dim, kv_dim);
  if (w_.q_bias.defined() || w_.k_bias.defined() || w_.v_bias.defined()) {
    const at::Tensor& given =
        w_.q_bias.defined() ? w_.q_bias : (w_.k_bias.defined() ? w_.k_bias : w_.v_bias);
    const auto or_zeros = [&](const at::Tensor& b, int64_t n) {
      return b.defined() ? b : at::zeros({n}, given.options());
    };
    qkv_bias_ = at::cat({or_zeros(w_.q_bias, q_dim), or_zeros(w_.k_bias, kv_dim),
                         or_zeros(w_.v_bias, kv_dim)});
    w_.q_bias = qkv_bias_.narrow(0, 0, q_dim);
    w_.k_bias = qkv_bias_.narrow(0, q_dim, kv_dim);
    w_.v_bias = qkv_bias_.narrow(0, q_dim + kv_dim, kv_dim);
  }
}

at::Tensor Attention::forward(const at::Tensor& x, const Rope& rope, const RopeAngles& angles,
                              KVCache& cache,
                              const at::Tensor& bias, const CaptureSpec& spec,
                              std::optional<LayerCapture>* capture, const HookContext& hooks) const {
  // One projection for q, k, v: (T, (H + 2 Hkv) * D); the weights stream on every thread.
  auto qkv = project(x, qkv_proj_, qkv_bias_);
  auto merged = attend(qkv, rope, angles, cache, bias, spec, capture, hooks);  // (T, H * D)
  // Value norms multiply every slot's values by W_O: real work, on every thread.
  if (*capture && spec.value_norms) {
    (*capture)->value_norms =
        select_heads(value_norms(cache.values(layer_, cache.size() + x.size(0))), spec.heads)
            .to(capture_dtype(spec));
  }
  return project(merged, w_.o_proj, w_.o_bias);
}

at::Tensor Attention::forward_segments(const at::Tensor& x, const std::vector<int64_t>& rows,
                                       const Rope& rope, const std::vector<RopeAngles>& angles,
                                       const std::vector<KVCache*>& caches,
                                       const std::vector<at::Tensor>& biases,
                                       const CaptureSpec& spec,
                                       std::vector<std::optional<LayerCapture>>* captures,
                                       const std::vector<HookContext>& hooks) const {
  auto qkv = project_segments(x, rows, qkv_proj_, qkv_bias_);
  std::vector<at::Tensor> merged;
  merged.reserve(rows.size());
  int64_t offset = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    KVCache& cache = *caches[i];
    std::optional<LayerCapture>* capture = &(*captures)[i];
    merged.push_back(
        attend(qkv.narrow(0, offset, rows[i]), rope, angles[i], cache, biases[i], spec, capture,
               hooks.empty() ? HookContext{} : hooks[i]));
    if (*capture && spec.value_norms) {
      (*capture)->value_norms =
          select_heads(value_norms(cache.values(layer_, cache.size() + rows[i])), spec.heads)
              .to(capture_dtype(spec));
    }
    offset += rows[i];
  }
  return project_segments(at::cat(merged), rows, w_.o_proj, w_.o_bias);
}

at::Tensor Attention::value_norms(const at::Tensor& values) const {
  // ‖W_O^h v_k‖ for every query head h (its kv head h / group) and slot k.
  const int64_t group = num_heads_ / num_kv_heads_;
  const int64_t hidden = w_.o_proj.out_features();
  // A quantized o_proj is decoded for this (capture-only) product.
  auto o_heads = w_.o_proj.to_dense().view({hidden, num_heads_, head_dim_}).permute({1, 2, 0});
  auto head_kv = at::arange(num_heads_, at::TensorOptions().dtype(at::kLong))
                     .div(group, "floor")
                     .to(values.device());
  auto v_per_head = values.index_select(0, head_kv);  // (H, S, D)
  return at::bmm(v_per_head, o_heads).norm(2, -1);    // (H, S)
}

at::Tensor Attention::attend(const at::Tensor& qkv, const Rope& rope, const RopeAngles& angles,
                             KVCache& cache, const at::Tensor& bias, const CaptureSpec& spec,
                             std::optional<LayerCapture>* capture, const HookContext& hooks) const {
  const int64_t T = qkv.size(0);
  const int64_t S = cache.size() + T;
  const int64_t group = num_heads_ / num_kv_heads_;  // query heads per kv head

  // Views (T, heads, D) of the column blocks of qkv. q/k norms (qwen3) act per head
  // before RoPE.
  const int64_t q_dim = num_heads_ * head_dim_, kv_dim = num_kv_heads_ * head_dim_;
  auto q = qkv.narrow(1, 0, q_dim).view({T, num_heads_, head_dim_});
  auto k = qkv.narrow(1, q_dim, kv_dim).view({T, num_kv_heads_, head_dim_});
  auto v = qkv.narrow(1, q_dim + kv_dim, kv_dim).view({T, num_kv_heads_, head_dim_});
  q = hooks.at_point(layer_, HookPoint::kQ, q);
  k = hooks.at_point(layer_, HookPoint::kK, k);
  v = hooks.at_point(layer_, HookPoint::kV, v);
  {
    SingleThreadScope one_thread;  // microsecond elementwise ops (single_thread.h)
    if (w_.q_norm.defined() && w_.q_norm.size(0) == head_dim_) {  // per head (Qwen3)
      q = rms_norm(q, w_.q_norm, rms_norm_eps_);
      k = rms_norm(k, w_.k_norm, rms_norm_eps_);
    } else if (w_.q_norm.defined()) {  // over the whole projection (OLMo 2)
      q = rms_norm(q.reshape({T, q_dim}), w_.q_norm, rms_norm_eps_).view({T, num_heads_, head_dim_});
      k = rms_norm(k.reshape({T, kv_dim}), w_.k_norm, rms_norm_eps_)
              .view({T, num_kv_heads_, head_dim_});
    }
    q = rope.apply(q.transpose(0, 1), angles);  // (H, T, D)
    k = rope.apply(k.transpose(0, 1), angles);  // (Hkv, T, D)
    if (hooks.active(layer_, HookPoint::kRotQ)) {
      q = hooks.at_point(layer_, HookPoint::kRotQ, q.transpose(0, 1)).transpose(0, 1);
    }
    if (hooks.active(layer_, HookPoint::kRotK)) {
      k = hooks.at_point(layer_, HookPoint::kRotK, k.transpose(0, 1)).transpose(0, 1);
    }
    cache.write_pending(layer_, k, v.transpose(0, 1));
  }
  auto keys = cache.keys(layer_, S);      // (Hkv, S, D)
  auto values = cache.values(layer_, S);  // (Hkv, S, D)

  at::Tensor context;  // (H, T, D)
  const bool captured = spec.captures_layer(layer_);
  if (!captured && !softcap_) {
    // Fast path: fused attention, nothing materialised beyond what the kernel needs. On
    // all intra-op threads: its blocking, hence its rounding, depends on their number.
    std::optional<at::Tensor> mask;
    if (bias.defined()) {
      mask = (bias.dim() == 2 ? bias.unsqueeze(0).unsqueeze(0) : bias.unsqueeze(0))
                 .to(q.scalar_type());
    }
    context = at::scaled_dot_product_attention(q.unsqueeze(0), keys.unsqueeze(0),
                                               values.unsqueeze(0), mask, 0.0, false, scale_,
                                               /*enable_gqa=*/true)
                  .squeeze(0);
  } else {
    // Explicit path, as HF eager computes it: (q k^T) * scale, soft-capped (Gemma 2:
    // cap · tanh(scores / cap)), + bias, softmax in f32. The bias (mask and interventions)
    // is added after the cap, so a key bias of δ shifts the scores by exactly δ.
    // Query heads sharing a kv head are stacked so keys are never repeated in memory:
    // (H, T, D) -> (Hkv, group * T, D). A step's few queries over the cache take
    // microseconds: on this thread alone (single_thread.h), with the same results.
    SingleThreadScope one_thread(num_heads_ * T * S * head_dim_ <= kSingleThreadAttentionMax);
    auto qg = q.reshape({num_kv_heads_, group * T, head_dim_});
    auto scores = at::bmm(qg, keys.transpose(1, 2)).mul_(scale_).view({num_heads_, T, S});
    if (softcap_) scores.div_(*softcap_).tanh_().mul_(*softcap_);
    if (bias.defined()) scores.add_(bias);  // broadcasts (T, S) or (1|H, T, S)
    auto probs = at::softmax(scores, -1, at::kFloat).to(q.scalar_type());
    context =
        at::bmm(probs.view({num_kv_heads_, group * T, S}), values).view({num_heads_, T, head_dim_});

    if (captured) {
      LayerCapture c;
      c.layer = layer_;
      const auto dtype = capture_dtype(spec);
      if (spec.probabilities) c.probabilities = select_heads(probs, spec.heads).to(dtype);
      if (spec.scores) c.scores = select_heads(scores, spec.heads).to(dtype);
      *capture = std::move(c);
    }
  }
  return hooks.at_point(layer_, HookPoint::kZ, context.transpose(0, 1))
      .reshape({T, num_heads_ * head_dim_});
}

}  // namespace attnvar
