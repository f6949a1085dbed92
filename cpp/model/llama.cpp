#include "attnvar/model/llama.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <fmt/format.h>

#include <cmath>

#include "attnvar/error.h"
#include "attnvar/model/feed_forward.h"
#include "attnvar/model/projection.h"
#include "attnvar/model/rms_norm.h"
#include "attnvar/model/rope.h"

namespace attnvar {

namespace {

// The hook context of one sequence's pass: what it records, its edits and callbacks.
HookContext hook_context(const HookSelection& selection, const CaptureSpec& capture,
                         std::map<std::string, at::Tensor>* out, const PassInput& input,
                         int64_t first_slot) {
  return HookContext(&selection, out,
                     capture.dtype == CaptureDtype::kFloat16 ? at::kHalf : at::kFloat,
                     &input.edits, input.callbacks, first_slot);
}

// Looks up one HF tensor, checks its shape, converts it, and takes it out of the map: once
// the caller drops the result (e.g. after copying it into a fused weight), its storage is
// freed unless someone else still holds the tensor.
class TensorSource {
 public:
  TensorSource(std::map<std::string, at::Tensor>& tensors,
               std::map<std::string, QuantizedMatrix>& quantized, const std::string& origin,
               at::ScalarType dtype, c10::Device device)
      : tensors_(tensors), quantized_(quantized), origin_(origin), dtype_(dtype),
        device_(device) {}

  // A projection or embedding weight: kept in its blocks when given quantized.
  Linear get_linear(const std::string& name, at::IntArrayRef shape) {
    auto it = quantized_.find(name);
    if (it == quantized_.end()) return Linear(get(name, shape));
    QuantizedMatrix m = std::move(it->second);
    quantized_.erase(it);
    check_quantized(m, name.c_str());
    if (shape.size() != 2 || m.rows() != shape[0] || m.cols != shape[1]) {
      throw FormatError(fmt::format("{}: tensor '{}' has shape ({}, {}), the config implies {}",
                                    origin_, name, m.rows(), m.cols, c10::str(shape)));
    }
    if (dtype_ != at::kFloat || !device_.is_cpu()) {
      throw ConfigError(fmt::format("{}: tensor '{}': quantized weights run in float32 on the "
                                    "CPU only", origin_, name));
    }
    return Linear(std::move(m));
  }

  at::Tensor get(const std::string& name, at::IntArrayRef shape) {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) {
      throw FormatError(fmt::format("{}: missing tensor '{}'", origin_, name));
    }
    return take(it, shape);
  }

  at::Tensor get_optional(const std::string& name, at::IntArrayRef shape) {
    auto it = tensors_.find(name);
    return it == tensors_.end() ? at::Tensor() : take(it, shape);
  }

  bool has(const std::string& name) const { return tensors_.count(name) > 0; }

 private:
  at::Tensor take(std::map<std::string, at::Tensor>::iterator it, at::IntArrayRef shape) {
    at::Tensor t = convert(it->first, it->second, shape);
    tensors_.erase(it);
    return t;
  }

  at::Tensor convert(const std::string& name, const at::Tensor& t, at::IntArrayRef shape) const {
    if (t.sizes() != shape) {
      throw FormatError(fmt::format("{}: tensor '{}' has shape {}, the config implies {}",
                                    origin_, name, c10::str(t.sizes()), c10::str(shape)));
    }
    if (!at::isFloatingType(t.scalar_type())) {
      throw FormatError(fmt::format("{}: tensor '{}' is not floating point ({})", origin_,
                                    name, c10::toString(t.scalar_type())));
    }
    return t.to(device_, dtype_).contiguous();
  }

  std::map<std::string, at::Tensor>& tensors_;
  std::map<std::string, QuantizedMatrix>& quantized_;
  const std::string& origin_;
  at::ScalarType dtype_;
  c10::Device device_;
};

}  // namespace

LlamaModel::LlamaModel(ModelConfig config, const std::map<std::string, at::Tensor>& tensors,
                       const std::string& origin, at::ScalarType dtype, c10::Device device)
    : LlamaModel(std::move(config), std::map<std::string, at::Tensor>(tensors), origin, dtype,
                 device) {}

LlamaModel::LlamaModel(ModelConfig config, std::map<std::string, at::Tensor>&& tensors,
                       const std::string& origin, at::ScalarType dtype, c10::Device device,
                       std::map<std::string, QuantizedMatrix>&& quantized)
    : config_(std::move(config)), dtype_(dtype), device_(device) {
  config_.validate(origin);
  rope_ = std::make_unique<Rope>(
      RopeParams{config_.head_dim, config_.rope_theta, config_.rope_scaling}, device);
  if (config_.rope_local_theta > 0 && config_.any_sliding()) {
    local_rope_ = std::make_unique<Rope>(
        RopeParams{config_.head_dim, config_.rope_local_theta, config_.rope_local_scaling},
        device);
  }
  if (dtype != at::kFloat && dtype != at::kBFloat16 && dtype != at::kHalf) {
    throw ConfigError(fmt::format("{}: dtype {} is not supported (float32, bfloat16, float16)",
                                  origin, c10::toString(dtype)));
  }
  c10::InferenceMode guard;
  const ModelConfig& c = config_;
  const int64_t hidden = c.hidden_size, q_dim = c.num_attention_heads * c.head_dim,
                kv_dim = c.num_key_value_heads * c.head_dim;
  TensorSource src(tensors, quantized, origin, dtype, device);
  // A norm weight as the family applies it (rms_norm.h): in the model's dtype, or in f32
  // where the product is taken in f32, plus one where the family stores w for (1 + w).
  const auto norm = [&](const std::string& name, int64_t size) {
    at::Tensor w = src.get(name, {size});
    if (c.norm_product_in_f32()) w = w.to(at::kFloat);
    if (c.unit_offset_norms()) w = w + 1.0;
    return w;
  };
  embed_tokens_ = src.get_linear("model.embed_tokens.weight", {c.vocab_size, hidden});
  if (c.embedding_scaled()) {
    // As transformers: √hidden as an f32 scalar, cast to the weights' dtype.
    embed_scale_ = at::scalar_tensor(std::sqrt(static_cast<double>(hidden)), at::kFloat)
                       .to(device, dtype);
  }
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = fmt::format("model.layers.{}.", i);
    AttentionWeights a;
    if (c.fused_projections()) {  // Phi-3: rows q, then k, then v, as attnvar fuses them
      auto qkv = src.get_linear(p + "self_attn.qkv_proj.weight", {q_dim + 2 * kv_dim, hidden});
      a.q_proj = qkv.narrow_rows(0, q_dim);
      a.k_proj = qkv.narrow_rows(q_dim, kv_dim);
      a.v_proj = qkv.narrow_rows(q_dim + kv_dim, kv_dim);
    } else {
      a.q_proj = src.get_linear(p + "self_attn.q_proj.weight", {q_dim, hidden});
      a.k_proj = src.get_linear(p + "self_attn.k_proj.weight", {kv_dim, hidden});
      a.v_proj = src.get_linear(p + "self_attn.v_proj.weight", {kv_dim, hidden});
    }
    a.o_proj = src.get_linear(p + "self_attn.o_proj.weight", {hidden, q_dim});
    if (c.qkv_bias()) {
      a.q_bias = src.get(p + "self_attn.q_proj.bias", {q_dim});
      a.k_bias = src.get(p + "self_attn.k_proj.bias", {kv_dim});
      a.v_bias = src.get(p + "self_attn.v_proj.bias", {kv_dim});
    }
    if (c.o_bias()) a.o_bias = src.get(p + "self_attn.o_proj.bias", {hidden});
    if (c.qk_norm()) {  // Qwen3, Gemma 3: per head
      a.q_norm = norm(p + "self_attn.q_norm.weight", c.head_dim);
      a.k_norm = norm(p + "self_attn.k_norm.weight", c.head_dim);
    }
    if (c.qk_norm_whole()) {  // OLMo 2: over the whole projection (the Attention sees the size)
      a.q_norm = norm(p + "self_attn.q_norm.weight", q_dim);
      a.k_norm = norm(p + "self_attn.k_norm.weight", kv_dim);
    }
    const int64_t inter = c.intermediate_size;
    FeedForwardWeights f;
    if (c.fused_projections()) {  // Phi-3: gate rows, then up rows, as attnvar fuses them
      f.gate_up_proj = src.get_linear(p + "mlp.gate_up_proj.weight", {2 * inter, hidden});
      f.gate_proj = f.gate_up_proj.narrow_rows(0, inter);
      f.up_proj = f.gate_up_proj.narrow_rows(inter, inter);
      f.down_proj = src.get_linear(p + "mlp.down_proj.weight", {hidden, inter});
    } else {
      f = fuse_gate_up({src.get_linear(p + "mlp.gate_proj.weight", {inter, hidden}),
                        src.get_linear(p + "mlp.up_proj.weight", {inter, hidden}),
                        src.get_linear(p + "mlp.down_proj.weight", {hidden, inter}),
                        {}});
    }
    f.activation = c.activation();
    DecoderLayer layer{{}, {}, {}, {}, Attention(c, std::move(a), i), std::move(f)};
    if (c.post_norms()) {
      layer.attn_out_norm = norm(p + "post_attention_layernorm.weight", hidden);
      layer.mlp_out_norm = norm(p + "post_feedforward_layernorm.weight", hidden);
    } else if (c.sandwich_norms()) {
      layer.attn_in_norm = norm(p + "input_layernorm.weight", hidden);
      layer.attn_out_norm = norm(p + "post_attention_layernorm.weight", hidden);
      layer.mlp_in_norm = norm(p + "pre_feedforward_layernorm.weight", hidden);
      layer.mlp_out_norm = norm(p + "post_feedforward_layernorm.weight", hidden);
    } else {
      layer.attn_in_norm = norm(p + "input_layernorm.weight", hidden);
      layer.mlp_in_norm = norm(p + "post_attention_layernorm.weight", hidden);
    }
    layers_.push_back(std::move(layer));
  }
  norm_ = norm("model.norm.weight", hidden);
  if (c.tie_word_embeddings) {
    lm_head_ = embed_tokens_;
  } else {
    lm_head_ = src.get_linear("lm_head.weight", {c.vocab_size, hidden});
  }
  if (!quantized.empty()) {
    throw FormatError(fmt::format("{}: quantized tensor '{}' is not a weight of this model",
                                  origin, quantized.begin()->first));
  }
}

int64_t LlamaModel::weight_bytes() const {
  int64_t n = embed_tokens_.nbytes() + static_cast<int64_t>(norm_.nbytes());
  if (!config_.tie_word_embeddings) n += lm_head_.nbytes();
  for (const DecoderLayer& l : layers_) {
    const AttentionWeights& a = l.attention.weights();
    n += a.q_proj.nbytes() + a.k_proj.nbytes() + a.v_proj.nbytes() + a.o_proj.nbytes();
    n += l.feed_forward.gate_up_proj.defined()
             ? l.feed_forward.gate_up_proj.nbytes()
             : l.feed_forward.gate_proj.nbytes() + l.feed_forward.up_proj.nbytes();
    n += l.feed_forward.down_proj.nbytes();
    for (const at::Tensor* t : {&l.attn_in_norm, &l.mlp_in_norm, &l.attn_out_norm,
                                &l.mlp_out_norm, &a.q_norm, &a.k_norm, &a.q_bias, &a.k_bias,
                                &a.v_bias, &a.o_bias}) {
      if (t->defined()) n += static_cast<int64_t>(t->nbytes());
    }
  }
  return n;
}

at::Tensor LlamaModel::embed(const at::Tensor& ids) const {
  auto h = embed_tokens_.gather_rows(ids);
  return embed_scale_.defined() ? h.mul_(embed_scale_) : h;
}

at::Tensor LlamaModel::output_head(const at::Tensor& x, const std::vector<int64_t>& rows) const {
  auto logits = project_segments(rms_norm(x, norm_, config_.rms_norm_eps), rows, lm_head_);
  if (const auto& cap = config_.final_logit_softcapping) {
    logits.div_(*cap).tanh_().mul_(*cap);
  }
  return logits.to(at::kFloat);
}

at::Tensor LlamaModel::norm_if(const at::Tensor& x, const at::Tensor& w) const {
  return w.defined() ? rms_norm(x, w, config_.rms_norm_eps) : x;
}

KVCache LlamaModel::new_cache(int64_t initial_capacity) const {
  return KVCache(config_.num_hidden_layers, config_.num_key_value_heads, config_.head_dim,
                 at::TensorOptions().dtype(dtype_).device(device_), initial_capacity);
}

std::array<LlamaModel::KindInputs, 2> LlamaModel::kind_inputs(const KVCache& cache,
                                                               const PassInput& input) const {
  const ModelConfig& c = config_;
  std::array<KindInputs, 2> kinds;
  const int64_t S_prev = cache.size();
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    KindInputs& k = kinds[c.sliding(l) ? 1 : 0];
    if (k.visibility.defined()) continue;
    k.visibility = input.visibility;
    if (c.sliding(l) && c.sliding_window) {
      auto q = input.positions.to(at::kDouble).cpu();
      auto keys = at::cat({cache.positions().to(at::kDouble).cpu(), q});
      auto within = (q.unsqueeze(1) - keys.unsqueeze(0)) < static_cast<double>(*c.sliding_window);
      k.visibility = input.visibility.logical_and(within.to(input.visibility.device()));
      auto sees = k.visibility.any(-1);
      if (!sees.all().item<bool>()) {
        throw ConfigError(fmt::format(
            "forward: query {} of the pass sees no slot within the sliding window of {} "
            "positions (layer {})",
            sees.logical_not().nonzero()[0][0].item<int64_t>(), *c.sliding_window, l));
      }
    }
    const bool unmasked = input.interventions.empty() && k.visibility.all().item<bool>();
    if (!unmasked) k.shared_bias = build_bias(input, k.visibility, S_prev, /*layer=*/-1);
    k.angles = rope_for(l).angles(input.positions);
  }
  return kinds;
}

at::Tensor LlamaModel::build_bias(const PassInput& input, const at::Tensor& visibility,
                                  int64_t num_prev, int64_t layer) const {
  const int64_t T = input.token_ids.size(0), S = num_prev + T;
  auto opts = at::TensorOptions().dtype(at::kFloat).device(device_);
  auto bias = at::zeros({T, S}, opts).masked_fill_(
      visibility.to(device_).logical_not(), -std::numeric_limits<float>::infinity());
  bool per_head = false;
  at::Tensor extra;  // (H, T, S)
  for (const auto& iv : input.interventions) {
    if (layer < iv.layer_begin || layer >= iv.layer_end) continue;
    if (!extra.defined()) extra = at::zeros({config_.num_attention_heads, T, S}, opts);
    auto keys = at::tensor(iv.key_slots, at::TensorOptions().dtype(at::kLong)).to(device_);
    if (iv.heads.empty()) {
      extra.index_add_(2, keys, at::full({config_.num_attention_heads, T, (int64_t)iv.key_slots.size()}, iv.delta, opts));
    } else {
      for (int64_t h : iv.heads) {
        extra[h].index_add_(1, keys, at::full({T, (int64_t)iv.key_slots.size()}, iv.delta, opts));
      }
    }
    per_head = true;
  }
  if (!per_head) return bias;
  auto full = bias.unsqueeze(0) + extra;
  // A query whose every key is hidden would produce NaN probabilities.
  auto dead = at::isinf(full).logical_and(full < 0).all(-1);
  if (dead.any().item<bool>()) {
    auto idx = dead.nonzero()[0];
    throw ConfigError(fmt::format(
        "interventions hide every key from query {} of the pass (head {}) in layer {}",
        idx[1].item<int64_t>(), idx[0].item<int64_t>(), layer));
  }
  return full;
}

void LlamaModel::check_edits(const std::vector<HookEdit>& edits, int64_t num_slots) const {
  const ModelConfig& c = config_;
  check_hook_edits(edits, c.num_hidden_layers, c.hidden_size, c.intermediate_size,
                   c.num_attention_heads, c.num_key_value_heads, c.head_dim, num_slots);
}

std::vector<HookEdit> LlamaModel::prepare_edits(const std::vector<HookEdit>& edits,
                                                int64_t num_slots) const {
  check_edits(edits, num_slots);
  std::vector<HookEdit> out = edits;
  for (HookEdit& e : out) {
    if (e.value.defined()) e.value = e.value.to(device_, dtype_);
  }
  return out;
}

at::Tensor LlamaModel::check_pass(const KVCache& cache, const PassInput& input) const {
  const ModelConfig& c = config_;
  const auto& ids = input.token_ids;
  if (!ids.defined() || ids.dim() != 1 || ids.size(0) == 0) {
    throw ConfigError("forward: token_ids must be a non-empty 1-D tensor");
  }
  if (at::isFloatingType(ids.scalar_type())) {
    throw ConfigError("forward: token_ids must be integers");
  }
  const int64_t T = ids.size(0), S_prev = cache.size(), S = S_prev + T;
  auto ids_long = ids.to(at::kLong);
  const int64_t lo = ids_long.min().item<int64_t>(), hi = ids_long.max().item<int64_t>();
  if (lo < 0 || hi >= c.vocab_size) {
    throw ConfigError(fmt::format("forward: token id {} is outside the vocabulary [0, {})",
                                  lo < 0 ? lo : hi, c.vocab_size));
  }
  if (!input.positions.defined() || input.positions.dim() != 1 || input.positions.size(0) != T) {
    throw ConfigError(fmt::format("forward: positions must have shape ({}), one per token", T));
  }
  if (!input.visibility.defined() || input.visibility.scalar_type() != at::kBool ||
      input.visibility.sizes() != at::IntArrayRef({T, S})) {
    throw ConfigError(fmt::format(
        "forward: visibility must be a bool tensor of shape ({}, {}) (new tokens x slots)", T, S));
  }
  auto visible_any = input.visibility.any(-1);
  if (!visible_any.all().item<bool>()) {
    throw ConfigError(fmt::format("forward: query {} of the pass sees no slot",
                                  visible_any.logical_not().nonzero()[0][0].item<int64_t>()));
  }
  if (!input.slots.empty() && static_cast<int64_t>(input.slots.size()) != T) {
    throw ConfigError("forward: slots metadata must have one entry per token");
  }
  for (const auto& iv : input.interventions) {
    for (int64_t k : iv.key_slots) {
      if (k < 0 || k >= S) throw ConfigError(fmt::format("intervention key slot {} outside [0, {})", k, S));
    }
    for (int64_t h : iv.heads) {
      if (h < 0 || h >= c.num_attention_heads) throw ConfigError(fmt::format("intervention head {} outside [0, {})", h, c.num_attention_heads));
    }
    if (iv.layer_begin < 0 || iv.layer_end > c.num_hidden_layers || iv.layer_begin >= iv.layer_end) {
      throw ConfigError(fmt::format("intervention layer window [{}, {}) is not inside [0, {})",
                                    iv.layer_begin, iv.layer_end, c.num_hidden_layers));
    }
  }

  // Hook edits (names, heads, value shapes and values) unless checked for the whole run, and
  // the names of hook functions.
  if (!input.edits_prepared) check_edits(input.edits);
  if (input.callbacks != nullptr) {
    for (const auto& [name, fn] : *input.callbacks) {
      if (parse_hook_name(name, c.num_hidden_layers).final_norm) {
        throw ConfigError(fmt::format("hook function at {}: the final norm is recorded, not "
                                      "edited", name));
      }
    }
  }
  // A slot-by-slot value must hold every slot of this pass it edits.
  for (size_t i = 0; i < input.edits.size(); ++i) {
    check_value_covers(input.edits[i], i, S, /*whole_run=*/false);
  }
  return ids_long.to(device_);
}

void LlamaModel::append_slots(KVCache& cache, const PassInput& input,
                              const at::Tensor& ids) const {
  std::vector<SlotInfo> new_slots = input.slots;
  if (new_slots.empty()) {
    const int64_t T = ids.size(0);
    auto pos = input.positions.to(at::kDouble).cpu();
    auto id_cpu = ids.cpu();
    for (int64_t i = 0; i < T; ++i) {
      new_slots.push_back(SlotInfo{pos[i].item<double>(), -1, 0, id_cpu[i].item<int64_t>()});
    }
  }
  cache.append(new_slots);
}

ForwardOutput LlamaModel::forward(KVCache& cache, const PassInput& input,
                                  const CaptureSpec& capture) const {
  c10::InferenceMode guard;
  const ModelConfig& c = config_;
  auto ids_long = check_pass(cache, input);
  const int64_t T = ids_long.size(0), S_prev = cache.size();
  const auto kinds = kind_inputs(cache, input);
  cache.reserve(T);
  const bool any_intervention = !input.interventions.empty();

  ForwardOutput out;
  const HookSelection selection(capture.hook_points, c.num_hidden_layers);
  const HookContext hooks = hook_context(selection, capture, &out.hooks, input, S_prev);
  auto h = embed(ids_long);  // (T, hidden)
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const DecoderLayer& layer = layers_[l];
    const KindInputs& kind = for_layer(kinds, l);
    at::Tensor bias =
        any_intervention ? build_bias(input, kind.visibility, S_prev, l) : kind.shared_bias;
    std::optional<LayerCapture> layer_capture;
    h = hooks.at_point(l, HookPoint::kResidPre, h);
    auto attn = layer.attention.forward(norm_if(h, layer.attn_in_norm), rope_for(l),
                                        kind.angles, cache, bias, capture, &layer_capture, hooks);
    attn = hooks.at_point(l, HookPoint::kAttnOut, norm_if(attn, layer.attn_out_norm));
    h = hooks.at_point(l, HookPoint::kResidMid, h + attn);
    auto mlp = feed_forward(norm_if(h, layer.mlp_in_norm), layer.feed_forward, l, hooks);
    mlp = hooks.at_point(l, HookPoint::kMlpOut, norm_if(mlp, layer.mlp_out_norm));
    h = hooks.at_point(l, HookPoint::kResidPost, h + mlp);
    if (layer_capture) out.captures.push_back(std::move(*layer_capture));
  }
  if (hooks.records_final_norm()) hooks.record_final_norm(rms_norm(h, norm_, c.rms_norm_eps));
  if (!device_.is_cpu()) {
    // Captures are for analysis on the host: one transfer per pass, after every layer ran.
    for (auto& lc : out.captures) {
      for (at::Tensor* t : {&lc.probabilities, &lc.scores, &lc.value_norms}) {
        if (t->defined()) *t = t->cpu();
      }
    }
  }
  if (!input.no_logits) {
    if (input.last_logits_only) h = h.narrow(0, T - 1, 1);
    out.logits = output_head(h, {h.size(0)});
  }

  append_slots(cache, input, ids_long);
  return out;
}


std::vector<ForwardOutput> LlamaModel::forward_batch(const std::vector<KVCache*>& caches,
                                                     const std::vector<PassInput>& inputs,
                                                     const CaptureSpec& capture) const {
  if (caches.size() != inputs.size()) {
    throw ConfigError(fmt::format("forward_batch: {} caches for {} inputs", caches.size(),
                                  inputs.size()));
  }
  for (size_t i = 0; i < caches.size(); ++i) {
    if (caches[i] == nullptr) throw ConfigError("forward_batch: a null cache");
    for (size_t j = 0; j < i; ++j) {
      if (caches[j] == caches[i]) {
        throw ConfigError(fmt::format("forward_batch: sequences {} and {} share a cache", j, i));
      }
    }
  }
  if (inputs.size() == 1) return {forward(*caches[0], inputs[0], capture)};
  c10::InferenceMode guard;
  const ModelConfig& c = config_;
  const size_t n = inputs.size();
  std::vector<at::Tensor> ids(n);
  std::vector<int64_t> rows(n), prev(n);
  std::vector<std::array<KindInputs, 2>> kinds(n);
  for (size_t i = 0; i < n; ++i) {  // every check before any cache changes
    ids[i] = check_pass(*caches[i], inputs[i]);
    kinds[i] = kind_inputs(*caches[i], inputs[i]);
  }
  for (size_t i = 0; i < n; ++i) {
    rows[i] = ids[i].size(0);
    prev[i] = caches[i]->size();
    caches[i]->reserve(rows[i]);
  }

  std::vector<ForwardOutput> out(n);
  const HookSelection selection(capture.hook_points, c.num_hidden_layers);
  std::vector<HookContext> hooks;
  for (size_t i = 0; i < n; ++i) {
    hooks.push_back(hook_context(selection, capture, &out[i].hooks, inputs[i], prev[i]));
  }
  const auto at_rows = [&](int64_t layer, HookPoint point, const at::Tensor& t) {
    return at_point_rows(hooks, rows, layer, point, t);
  };
  auto h = embed(at::cat(ids));  // (Σ T, hidden)
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const DecoderLayer& layer = layers_[l];
    std::vector<at::Tensor> bias(n);
    std::vector<RopeAngles> angles(n);
    for (size_t i = 0; i < n; ++i) {
      const KindInputs& kind = for_layer(kinds[i], l);
      bias[i] = inputs[i].interventions.empty()
                    ? kind.shared_bias
                    : build_bias(inputs[i], kind.visibility, prev[i], l);
      angles[i] = kind.angles;
    }
    std::vector<std::optional<LayerCapture>> layer_captures(n);
    h = at_rows(l, HookPoint::kResidPre, h);
    auto attn = layer.attention.forward_segments(norm_if(h, layer.attn_in_norm), rows,
                                                 rope_for(l), angles, caches, bias, capture,
                                                 &layer_captures, hooks);
    attn = at_rows(l, HookPoint::kAttnOut, norm_if(attn, layer.attn_out_norm));
    h = at_rows(l, HookPoint::kResidMid, h + attn);
    auto mlp = feed_forward_segments(norm_if(h, layer.mlp_in_norm), rows, layer.feed_forward,
                                     l, hooks);
    mlp = at_rows(l, HookPoint::kMlpOut, norm_if(mlp, layer.mlp_out_norm));
    h = at_rows(l, HookPoint::kResidPost, h + mlp);
    for (size_t i = 0; i < n; ++i) {
      if (layer_captures[i]) out[i].captures.push_back(std::move(*layer_captures[i]));
    }
  }
  if (selection.wants_final_norm()) {
    // Per sequence, on its own rows: the norm is row-wise, and this keeps each result the
    // solo pass's bit for bit.
    int64_t offset = 0;
    for (size_t i = 0; i < n; ++i) {
      hooks[i].record_final_norm(rms_norm(h.narrow(0, offset, rows[i]), norm_, c.rms_norm_eps));
      offset += rows[i];
    }
  }
  if (!device_.is_cpu()) {
    for (auto& o : out) {
      for (auto& lc : o.captures) {
        for (at::Tensor* t : {&lc.probabilities, &lc.scores, &lc.value_norms}) {
          if (t->defined()) *t = t->cpu();
        }
      }
    }
  }
  // The output head, for the sequences that want logits, in one call.
  std::vector<at::Tensor> last;
  std::vector<int64_t> last_rows;
  std::vector<size_t> owner;
  int64_t offset = 0;
  for (size_t i = 0; i < n; ++i) {
    if (!inputs[i].no_logits) {
      auto hi = h.narrow(0, offset, rows[i]);
      if (inputs[i].last_logits_only) hi = hi.narrow(0, rows[i] - 1, 1);
      last.push_back(hi);
      last_rows.push_back(hi.size(0));
      owner.push_back(i);
    }
    offset += rows[i];
  }
  if (!last.empty()) {
    auto logits = output_head(at::cat(last), last_rows);
    int64_t at_row = 0;
    for (size_t k = 0; k < owner.size(); ++k) {
      out[owner[k]].logits = logits.narrow(0, at_row, last_rows[k]);
      at_row += last_rows[k];
    }
  }
  for (size_t i = 0; i < n; ++i) append_slots(*caches[i], inputs[i], ids[i]);
  return out;
}

}  // namespace attnvar
