// One registration function per area; module.cpp calls them in order.
#pragma once

#include <pybind11/pybind11.h>

#include <optional>
#include <string>
#include <vector>

#include "attnvar/capture/capture_spec.h"
#include "attnvar/model/config.h"
#include "attnvar/model/llama.h"
#include "attnvar/model/weights.h"

namespace attnvar::python {

void bind_errors(pybind11::module_& m);
void bind_model(pybind11::module_& m);
void bind_tokenizer(pybind11::module_& m);
void bind_formats(pybind11::module_& m);
void bind_generate(pybind11::module_& m);

// Model configuration and identity as Python dicts (formats.cpp).
pybind11::dict config_to_dict(const ModelConfig& config);
pybind11::dict identity_to_dict(const ModelIdentity& identity);

// Shared option conversions (capture_options.cpp).
CaptureSpec capture_spec(bool capture, std::optional<std::vector<int64_t>> layers,
                         std::optional<std::vector<int64_t>> heads, bool probabilities,
                         bool scores, bool value_norms, const std::string& dtype,
                         std::optional<std::vector<std::string>> hooks = std::nullopt);
// Each item: dict(layer_begin, layer_end, key_slots, heads=None, delta=-inf).
std::vector<KeyBias> key_biases(const pybind11::list& items);
// Each item: dict(kind="zero"|"set"|"add", hook, heads=None, slots=None, value=None);
// ConfigError naming the item and key for unknown keys and missing fields.
std::vector<HookEdit> hook_edits(const pybind11::list& items);
// {hook point name: callable(name, tensor) -> tensor | None}, or None.
std::map<std::string, HookCallback> hook_callbacks(const pybind11::object& fns);

}  // namespace attnvar::python
