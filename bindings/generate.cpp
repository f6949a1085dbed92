// Bindings for the generate area: trees, parallel generation, replay, the compat preset.
#include <pybind11/stl.h>
#include <torch/csrc/utils/pybind.h>

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>

#include <map>
#include <string>
#include <type_traits>

#include "attnvar/capture/pass_capture.h"
#include "attnvar/error.h"
#include "attnvar/generate/compat_tempo.h"
#include "attnvar/generate/encoding.h"
#include "attnvar/generate/generator.h"
#include "attnvar/generate/next_step.h"
#include "attnvar/generate/replay.h"
#include "attnvar/generate/selection.h"
#include "attnvar/generate/tree.h"
#include "bindings.h"

namespace py = pybind11;

namespace attnvar::python {
namespace {

// Runs between passes with the GIL released elsewhere: Ctrl-C becomes KeyboardInterrupt.
void check_signals() {
  py::gil_scoped_acquire gil;
  if (PyErr_CheckSignals() != 0) throw py::error_already_set();
}

CaptureField field_from_string(const std::string& f) {
  if (f == "probabilities" || f == "attention") return CaptureField::kProbabilities;
  if (f == "scores") return CaptureField::kScores;
  throw ConfigError("capture field '" + f + "' is not one of probabilities, scores");
}

// The arguments of capture_spec(), then hook edits and functions.
#define ATTNVAR_CAPTURE_SPEC_ARGS                                                     \
  py::arg("capture") = false, py::arg("layers") = py::none(), py::arg("heads") = py::none(), \
      py::arg("probabilities") = true, py::arg("scores") = false,                     \
      py::arg("value_norms") = false, py::arg("capture_dtype") = "float32",              \
      py::arg("hooks") = py::none()
#define ATTNVAR_CAPTURE_ARGS \
  ATTNVAR_CAPTURE_SPEC_ARGS, py::arg("edits") = py::list(), py::arg("hook_fns") = py::none()

using HookCallbacks = std::map<std::string, HookCallback>;

// Binds `name`(model, prompts, options: one dict per prompt, max_batch, ATTNVAR_CAPTURE_ARGS)
// to a batch function. options_from(dict, capture, edits, callbacks) gives one sequence's
// options (the callbacks outlive the call); batch(model, prompts, options, max_batch,
// interrupt) runs them with the GIL released.
template <class OptionsFrom, class Batch>
void def_batch(py::module_& m, const char* name, OptionsFrom options_from, Batch batch,
               const char* doc) {
  using Options = std::invoke_result_t<OptionsFrom, const py::dict&, const CaptureSpec&,
                                       const std::vector<HookEdit>&, const HookCallbacks*>;
  m.def(
      name,
      [options_from, batch](
          const LlamaModel& model, const std::vector<std::vector<int64_t>>& prompts,
          const std::vector<py::dict>& options, int64_t max_batch, bool capture,
          std::optional<std::vector<int64_t>> layers, std::optional<std::vector<int64_t>> heads,
          bool probabilities, bool scores, bool value_norms, const std::string& capture_dtype,
          std::optional<std::vector<std::string>> hooks, const py::list& edits,
          const py::object& hook_fns) {
        const CaptureSpec spec = capture_spec(capture, layers, heads, probabilities, scores,
                                              value_norms, capture_dtype, hooks);
        const auto edit_list = hook_edits(edits);
        const auto callbacks = hook_callbacks(hook_fns);
        std::vector<Options> opts;
        for (const auto& d : options) opts.push_back(options_from(d, spec, edit_list, &callbacks));
        py::gil_scoped_release release;
        return batch(model, prompts, opts, max_batch, check_signals);
      },
      py::arg("model"), py::arg("prompts"), py::arg("options"), py::arg("max_batch") = 8,
      ATTNVAR_CAPTURE_ARGS, doc);
}

// One sequence's generation options from a dict with generate()'s keyword names (any
// subset; the others keep generate()'s defaults). Unknown keys are a ConfigError.
GenerateOptions generate_options_from(const py::dict& d) {
  GenerateOptions o;
  o.mode = SiblingVisibility::kIsolated;
  for (const auto& item : d) {
    const auto key = item.first.cast<std::string>();
    const py::handle v = item.second;
    if (key == "threshold") o.threshold = v.cast<double>();
    else if (key == "max_steps") o.max_steps = v.cast<int64_t>();
    else if (key == "mode") o.mode = sibling_visibility_from_string(v.cast<std::string>());
    else if (key == "policy") o.policy = next_step_policy_from_string(v.cast<std::string>());
    else if (key == "max_width") o.max_width = v.cast<int64_t>();
    else if (key == "temperature") o.temperature = v.cast<double>();
    else if (key == "sample") o.sample = v.cast<bool>();
    else if (key == "seed") o.seed = v.cast<uint64_t>();
    else if (key == "stop_on") o.stop_on = stop_on_from_string(v.cast<std::string>());
    else if (key == "eos_ids") o.eos_ids = v.cast<std::vector<int64_t>>();
    else if (key == "min_new_steps") o.min_new_steps = v.cast<int64_t>();
    else if (key == "keep_distributions") o.keep_distributions = v.cast<bool>();
    else throw ConfigError("generate_batch: unknown option '" + key + "'");
  }
  return o;
}

// One compat run's options from a dict with generate_tempo2025()'s keyword names (any
// subset; the others keep its defaults). leaked_masks is read so that the batch can refuse it
// by name. Unknown keys are a ConfigError.
TempoOptions tempo_options_from(const py::dict& d) {
  TempoOptions o;
  for (const auto& item : d) {
    const auto key = item.first.cast<std::string>();
    const py::handle v = item.second;
    if (key == "threshold") o.threshold = v.cast<double>();
    else if (key == "max_steps") o.max_steps = v.cast<int64_t>();
    else if (key == "emulate_isolation_bug") o.emulate_isolation_bug = v.cast<bool>();
    else if (key == "eos_ids") o.eos_ids = v.cast<std::optional<std::vector<int64_t>>>();
    else if (key == "leaked_masks") o.leaked_masks = v.cast<std::vector<at::Tensor>>();
    else throw ConfigError("generate_tempo2025_batch: unknown option '" + key + "'");
  }
  return o;
}

// One replay's options from replay()'s and replay_batch()'s Python arguments (the
// callbacks outlive the replay).
ReplayOptions replay_options(const std::string& encoding, const py::list& interventions,
                             const std::string& policy, double temperature, bool logits,
                             const CaptureSpec& spec, const py::list& edits,
                             const HookCallbacks* callbacks) {
  ReplayOptions o;
  o.encoding = encoding_from_string(encoding);
  o.logits = logits;
  o.interventions = key_biases(interventions);
  o.policy = next_step_policy_from_string(policy);
  o.temperature = temperature;
  o.capture = spec;
  o.edits = hook_edits(edits);
  o.callbacks = callbacks;
  return o;
}

// The compat preset runs the prototype as it was: no hook edits or functions.
[[noreturn]] void refuse_hook_edits() {
  throw ConfigError("the compat preset tempo-2025 takes no hook edits or hook_fns");
}

}  // namespace

void bind_generate(py::module_& m) {
  py::class_<Member>(m, "Member", "One token of a set S_t.")
      .def(py::init<>())
      .def_readwrite("token_id", &Member::token_id)
      .def_readwrite("probability", &Member::probability)
      .def_readwrite("rank", &Member::rank)
      .def_readwrite("is_eos", &Member::is_eos)
      .def_readwrite("slot", &Member::slot);
  py::class_<TreeStep>(m, "TreeStep", "A set S_t: members in rank order.")
      .def(py::init<>())
      .def_readwrite("members", &TreeStep::members)
      .def_readwrite("entropy", &TreeStep::entropy);
  py::class_<Tree>(m, "Tree", "The prompt plus every set: everything needed to replay a run.")
      .def(py::init<>())
      .def_readwrite("prompt", &Tree::prompt)
      .def_readwrite("steps", &Tree::steps)
      .def_property_readonly("prompt_length", &Tree::prompt_length)
      .def_property_readonly("num_steps", &Tree::num_steps)
      .def_static("build", &Tree::build, py::arg("prompt"), py::arg("steps"),
                  py::arg("eos_ids") = std::vector<int64_t>{},
                  "A tree built by hand from token ids (steps[t] = S_t in rank order).");
  py::class_<SlotRecord>(m, "SlotRecord", "What one slot holds.")
      .def_readonly("token_id", &SlotRecord::token_id)
      .def_readonly("position", &SlotRecord::position)
      .def_readonly("step", &SlotRecord::step)
      .def_readonly("member", &SlotRecord::member);
  py::class_<LayerCapture>(m, "LayerCapture")
      .def_readonly("layer", &LayerCapture::layer)
      .def_readonly("probabilities", &LayerCapture::probabilities)
      .def_readonly("scores", &LayerCapture::scores)
      .def_readonly("value_norms", &LayerCapture::value_norms);
  py::class_<PassCapture>(m, "PassCapture", "What one forward pass recorded.")
      .def_readonly("step", &PassCapture::step)
      .def_readonly("first_slot", &PassCapture::first_slot)
      .def_readonly("num_queries", &PassCapture::num_queries)
      .def_readonly("layers", &PassCapture::layers)
      .def_readonly("hooks", &PassCapture::hooks, "Hook points by name, (T, ...) each.");

  py::class_<GenerationResult>(m, "GenerationResult")
      .def_readonly("tree", &GenerationResult::tree)
      .def_readonly("slots", &GenerationResult::slots)
      .def_readonly("passes", &GenerationResult::passes)
      .def_readonly("distributions", &GenerationResult::distributions)
      .def_readonly("stop_reason", &GenerationResult::stop_reason)
      .def_readonly("visibility", &GenerationResult::visibility,
                    "[N, N] bool: the mask each slot's query was given (filled by "
                    "generate_tempo2025; None for generate()).")
      .def_readonly("prefill_seconds", &GenerationResult::prefill_seconds)
      .def_readonly("generate_seconds", &GenerationResult::generate_seconds)
      .def(
          "dense",
          [](const GenerationResult& r, const std::string& field) {
            return assemble_dense(r.passes, static_cast<int64_t>(r.slots.size()),
                                  field_from_string(field));
          },
          py::arg("field") = "probabilities", "[L', H', N, N] f32 lower-block view.")
      .def("value_norms", [](const GenerationResult& r) {
        return assemble_value_norms(r.passes, static_cast<int64_t>(r.slots.size()));
      });

  py::class_<Layout>(m, "Layout", "A tree laid out under an encoding.")
      .def_property_readonly("encoding", [](const Layout& l) { return to_string(l.encoding); })
      .def_readonly("slots", &Layout::slots)
      .def_readonly("visibility", &Layout::visibility)
      .def_readonly("step_begin", &Layout::step_begin)
      .def_property_readonly("positions", &Layout::positions)
      .def_property_readonly("token_ids", &Layout::token_ids);
  py::class_<ReplayResult>(m, "ReplayResult")
      .def_readonly("layout", &ReplayResult::layout)
      .def_readonly("passes", &ReplayResult::passes)
      .def_readonly("logits", &ReplayResult::logits)
      .def_readonly("distributions", &ReplayResult::distributions)
      .def(
          "dense",
          [](const ReplayResult& r, const std::string& field) {
            return assemble_dense(r.passes, r.layout.size(), field_from_string(field));
          },
          py::arg("field") = "probabilities")
      .def("value_norms", [](const ReplayResult& r) {
        return assemble_value_norms(r.passes, r.layout.size());
      });

  m.def(
      "encode",
      [](const Tree& tree, const std::string& encoding) {
        return encode(tree, encoding_from_string(encoding));
      },
      py::arg("tree"), py::arg("encoding"), "Lay a tree out under an encoding.");
  m.def(
      "select_set",
      [](const at::Tensor& q, double threshold, int64_t max_width, bool sample, uint64_t seed) {
        auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
        std::vector<std::pair<int64_t, double>> out;
        for (const auto& s : select_set(q, SelectionOptions{threshold, max_width, sample}, gen)) {
          out.emplace_back(s.token_id, s.probability);
        }
        return out;
      },
      py::arg("q"), py::arg("threshold") = 0.1, py::arg("max_width") = 32,
      py::arg("sample") = false, py::arg("seed") = 0,
      "S_t from q_t: [(token_id, probability)] in rank order.");
  m.def(
      "next_distribution",
      [](const at::Tensor& logits, const std::vector<double>& weights, const std::string& policy,
         double temperature) {
        return next_distribution(logits, weights, next_step_policy_from_string(policy),
                                 temperature);
      },
      py::arg("member_logits"), py::arg("weights"), py::arg("policy") = "mixture",
      py::arg("temperature") = 1.0);

  m.def(
      "generate",
      [](const LlamaModel& model, const std::vector<int64_t>& prompt, double threshold,
         int64_t max_steps, const std::string& mode, const std::string& policy, int64_t max_width,
         double temperature, bool sample, uint64_t seed, const std::string& stop_on,
         const std::vector<int64_t>& eos_ids, int64_t min_new_steps, bool keep_distributions,
         bool capture,
         std::optional<std::vector<int64_t>> layers, std::optional<std::vector<int64_t>> heads,
         bool probabilities, bool scores, bool value_norms, const std::string& capture_dtype,
         std::optional<std::vector<std::string>> hooks, const py::list& edits,
         const py::object& hook_fns, py::object sink) {
        GenerateOptions o;
        o.threshold = threshold;
        o.max_steps = max_steps;
        o.mode = sibling_visibility_from_string(mode);
        o.policy = next_step_policy_from_string(policy);
        o.max_width = max_width;
        o.temperature = temperature;
        o.sample = sample;
        o.seed = seed;
        o.stop_on = stop_on_from_string(stop_on);
        o.eos_ids = eos_ids;
        o.min_new_steps = min_new_steps;
        o.keep_distributions = keep_distributions;
        o.capture = capture_spec(capture, layers, heads, probabilities, scores, value_norms,
                                 capture_dtype, hooks);
        o.edits = hook_edits(edits);
        const auto callbacks = hook_callbacks(hook_fns);
        o.callbacks = &callbacks;
        PassSink pass_sink;
        if (!sink.is_none()) {
          // Streaming: each pass goes to the Python callable as soon as it is computed.
          pass_sink = [sink](PassCapture&& pc) {
            py::gil_scoped_acquire gil;
            sink(py::cast(std::move(pc)));
          };
        }
        py::gil_scoped_release release;
        return generate(model, prompt, o, check_signals, pass_sink);
      },
      py::arg("model"), py::arg("prompt"), py::arg("threshold") = 0.1,
      py::arg("max_steps") = 30, py::arg("mode") = "isolated", py::arg("policy") = "mixture",
      py::arg("max_width") = 32, py::arg("temperature") = 1.0, py::arg("sample") = false,
      py::arg("seed") = 0, py::arg("stop_on") = "any_eos",
      py::arg("eos_ids") = std::vector<int64_t>{}, py::arg("min_new_steps") = 0,
      py::arg("keep_distributions") = false, ATTNVAR_CAPTURE_ARGS, py::arg("sink") = py::none(),
      "Parallel generation: every member of S_t fed in one pass at position P + t. With "
      "`sink`, each pass's capture is handed to sink(PassCapture) as it is computed and "
      "the result keeps none.");

  def_batch(
      m, "generate_batch",
      [](const py::dict& d, const CaptureSpec& spec, const std::vector<HookEdit>& edits,
         const HookCallbacks* callbacks) {
        GenerateOptions o = generate_options_from(d);
        o.capture = spec;
        o.edits = edits;
        o.callbacks = callbacks;
        return o;
      },
      &generate_batch,
      "Several generations at once (one pass per step for all active sequences); "
      "options[i]: generate()'s keyword arguments for prompts[i]. Each result is bit for bit "
      "generate() of that prompt alone.");

  m.def(
      "replay",
      [](const LlamaModel& model, const Tree& tree, const std::string& encoding,
         const py::list& interventions, int64_t chunk_size, const std::string& policy,
         double temperature, bool capture, std::optional<std::vector<int64_t>> layers,
         std::optional<std::vector<int64_t>> heads, bool probabilities, bool scores,
         bool value_norms, const std::string& capture_dtype,
         std::optional<std::vector<std::string>> hooks, const py::list& edits,
         const py::object& hook_fns, bool logits) {
        const auto callbacks = hook_callbacks(hook_fns);
        ReplayOptions o = replay_options(
            encoding, interventions, policy, temperature, logits,
            capture_spec(capture, layers, heads, probabilities, scores, value_norms,
                         capture_dtype, hooks),
            edits, &callbacks);
        o.chunk_size = chunk_size;
        py::gil_scoped_release release;
        return replay(model, tree, o);
      },
      py::arg("model"), py::arg("tree"), py::arg("encoding") = "shared_isolated",
      py::arg("interventions") = py::list(), py::arg("chunk_size") = 0,
      py::arg("policy") = "mixture", py::arg("temperature") = 1.0, ATTNVAR_CAPTURE_ARGS,
      py::arg("logits") = true,
      "Teacher-force a tree under an encoding (one pass, or chunks of whole steps). "
      "logits=False skips the output projection: no logits, no distributions.");

  m.def(
      "replay_batch",
      [](const LlamaModel& model, const std::vector<Tree>& trees,
         const std::vector<std::string>& encodings, const std::vector<py::list>& interventions,
         const std::vector<py::list>& edit_lists, int64_t max_batch, const std::string& policy,
         double temperature, bool capture, std::optional<std::vector<int64_t>> layers,
         std::optional<std::vector<int64_t>> heads, bool probabilities, bool scores,
         bool value_norms, const std::string& capture_dtype,
         std::optional<std::vector<std::string>> hooks, const py::object& hook_fns,
         bool logits) {
        if (encodings.size() != trees.size() || interventions.size() != trees.size() ||
            edit_lists.size() != trees.size()) {
          throw ConfigError(fmt::format(
              "replay_batch: {} trees, {} encodings, {} intervention lists, {} edit lists",
              trees.size(), encodings.size(), interventions.size(), edit_lists.size()));
        }
        const CaptureSpec spec = capture_spec(capture, layers, heads, probabilities, scores,
                                              value_norms, capture_dtype, hooks);
        const auto callbacks = hook_callbacks(hook_fns);
        std::vector<ReplayOptions> opts;
        for (size_t i = 0; i < trees.size(); ++i) {
          opts.push_back(replay_options(encodings[i], interventions[i], policy, temperature,
                                        logits, spec, edit_lists[i], &callbacks));
        }
        py::gil_scoped_release release;
        return replay_batch(model, trees, opts, max_batch);
      },
      py::arg("model"), py::arg("trees"), py::arg("encodings"), py::arg("interventions"),
      py::arg("edit_lists"), py::arg("max_batch") = 8, py::arg("policy") = "mixture",
      py::arg("temperature") = 1.0, ATTNVAR_CAPTURE_SPEC_ARGS, py::arg("hook_fns") = py::none(),
      py::arg("logits") = true,
      "Several replays (one pass each), up to max_batch per forward pass; trees[i] under "
      "encodings[i] with interventions[i] and edits[i]. Each result is bit for bit replay() "
      "of that tree alone.");

  m.def("printed_set_starts", &printed_set_starts, py::arg("tree"),
        "Printed-sequence index of each set's first member (compat bookkeeping).");
  m.def("tempo_bug_visibility", &tempo_bug_visibility, py::arg("tree"), py::arg("query_slot"));
  m.def("tempo_leak_mask", &tempo_leak_mask, py::arg("tree"),
        "[S, S] bool mask a finished isolated-mode compat run leaves behind (the stale-mask "
        "leak): causal plus holes between members of S_0 .. S_{T-2}, S = P + sum of their "
        "sizes, in printed-index space.");
  m.def(
      "generate_tempo2025",
      [](const LlamaModel& model, const std::vector<int64_t>& prompt, double threshold,
         int64_t max_steps, bool emulate_isolation_bug,
         std::optional<std::vector<int64_t>> eos_ids, std::vector<at::Tensor> leaked_masks,
         bool capture, std::optional<std::vector<int64_t>> layers,
         std::optional<std::vector<int64_t>> heads, bool probabilities, bool scores,
         bool value_norms, const std::string& capture_dtype,
         std::optional<std::vector<std::string>> hooks, const py::list& edits,
         const py::object& hook_fns) {
        if (!edits.empty() || !hook_fns.is_none()) refuse_hook_edits();
        TempoOptions o;
        o.threshold = threshold;
        o.max_steps = max_steps;
        o.emulate_isolation_bug = emulate_isolation_bug;
        o.eos_ids = eos_ids;
        o.leaked_masks = std::move(leaked_masks);
        o.capture = capture_spec(capture, layers, heads, probabilities, scores, value_norms,
                                 capture_dtype, hooks);
        py::gil_scoped_release release;
        return generate_tempo2025(model, prompt, o, check_signals);
      },
      py::arg("model"), py::arg("prompt"), py::arg("threshold") = 0.15,
      py::arg("max_steps") = 30, py::arg("emulate_isolation_bug") = false,
      py::arg("eos_ids") = py::none(), py::arg("leaked_masks") = std::vector<at::Tensor>{},
      ATTNVAR_CAPTURE_ARGS,
      "The compat preset `tempo-2025` (the prototype's bookkeeping, not the mechanism). "
      "eos_ids: None = the model config's; [] = never stop on EOS. leaked_masks: the "
      "tempo_leak_mask of every earlier isolated-mode run of the emulated process, oldest "
      "first; [] = a clean start.");

  def_batch(
      m, "generate_tempo2025_batch",
      [](const py::dict& d, const CaptureSpec& spec, const std::vector<HookEdit>& edits,
         const HookCallbacks* callbacks) {
        if (!edits.empty() || !callbacks->empty()) refuse_hook_edits();
        TempoOptions o = tempo_options_from(d);
        o.capture = spec;
        return o;
      },
      &generate_tempo2025_batch,
      "Several compat runs at once (one pass per round for the active runs' one-token "
      "passes); options[i]: generate_tempo2025()'s keyword arguments for prompts[i] "
      "(threshold, max_steps, emulate_isolation_bug, eos_ids). Each result is bit for bit "
      "generate_tempo2025() of that prompt alone. leaked_masks are refused: leaking runs "
      "depend on the runs before them and go one after another.");
}

}  // namespace attnvar::python
