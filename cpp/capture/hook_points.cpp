#include "attnvar/capture/hook_points.h"

#include <fmt/format.h>

#include <array>
#include <charconv>

#include "attnvar/error.h"

namespace attnvar {
namespace {

constexpr std::array<std::string_view, static_cast<size_t>(HookPoint::kCount)> kSuffixes = {
    "hook_resid_pre", "attn.hook_q",   "attn.hook_k",    "attn.hook_v",
    "attn.hook_rot_q", "attn.hook_rot_k", "attn.hook_z", "hook_attn_out",
    "hook_resid_mid", "mlp.hook_post", "hook_mlp_out",   "hook_resid_post"};

std::string valid_points() {
  std::string out;
  for (std::string_view s : kSuffixes) out += fmt::format("{}blocks.{{l}}.{}", out.empty() ? "" : ", ", s);
  return out + ", " + std::string(kFinalNormHook);
}

}  // namespace

std::string_view hook_point_suffix(HookPoint point) {
  return kSuffixes.at(static_cast<size_t>(point));
}

std::string hook_name(int64_t layer, HookPoint point) {
  return fmt::format("blocks.{}.{}", layer, hook_point_suffix(point));
}

std::vector<std::string> hook_point_names(int64_t num_layers) {
  std::vector<std::string> names;
  for (int64_t l = 0; l < num_layers; ++l) {
    for (size_t p = 0; p < kSuffixes.size(); ++p) names.push_back(hook_name(l, HookPoint(p)));
  }
  names.emplace_back(kFinalNormHook);
  return names;
}

ParsedHook parse_hook_name(const std::string& name, int64_t num_layers) {
  if (name == kFinalNormHook) return ParsedHook{-1, HookPoint::kCount, true};
  // "blocks.{l}.{suffix}", l a plain decimal.
  constexpr std::string_view kPrefix = "blocks.";
  int64_t layer = -1;
  std::string_view rest;
  if (name.starts_with(kPrefix)) {
    const char* begin = name.data() + kPrefix.size();
    const char* end = name.data() + name.size();
    auto [p, ec] = std::from_chars(begin, end, layer);
    if (ec == std::errc() && p != begin && p < end && *p == '.' &&
        (p == begin + 1 || *begin != '0')) {
      rest = std::string_view(p + 1, static_cast<size_t>(end - p - 1));
    } else {
      layer = -1;
    }
  }
  size_t point = kSuffixes.size();
  for (size_t i = 0; i < kSuffixes.size(); ++i) {
    if (kSuffixes[i] == rest) point = i;
  }
  if (layer < 0 || point == kSuffixes.size()) {
    throw ConfigError(fmt::format("hook point '{}' is not one of: {}", printable(name, 80),
                                  valid_points()));
  }
  if (layer >= num_layers) {
    throw ConfigError(
        fmt::format("hook point '{}': layer {} is outside [0, {})", name, layer, num_layers));
  }
  return ParsedHook{layer, static_cast<HookPoint>(point), false};
}

HookSelection::HookSelection(const std::vector<std::string>& names, int64_t num_layers)
    : masks_(static_cast<size_t>(num_layers), 0u) {
  for (const std::string& name : names) {
    const ParsedHook h = parse_hook_name(name, num_layers);
    if (h.final_norm) {
      count_ += !final_norm_;
      final_norm_ = true;
      continue;
    }
    const uint32_t bit = 1u << static_cast<uint32_t>(h.point);
    count_ += (masks_[h.layer] & bit) == 0;
    masks_[h.layer] |= bit;
  }
}

}  // namespace attnvar
