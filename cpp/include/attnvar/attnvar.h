// attnvar.h — the entry header of attnvar's C++ API.
//
// attnvar generates text with *parallel tokens* (several candidate tokens fed at one shared
// RoPE position) on Llama-family models, replays any resulting tree under other position
// and visibility encodings, and records what attention did along the way. This header is
// the one a C++ program includes; it pulls in the area headers that declare the API and
// documents, in one place, the contract of each entry point: every parameter's meaning and
// valid range, who owns what and for how long, and what it throws.
//
//     #include <attnvar/attnvar.h>                    // link attnvar::attnvar (CMake)
//
//     attnvar::LoadedModel model = attnvar::load_model("SmolLM2-135M-Instruct.Q4_1.gguf");
//     attnvar::GenerateOptions options;               // θ = 0.1, isolated siblings
//     options.max_steps = 8;
//     attnvar::GenerationResult run = attnvar::generate(model, "The cat sat on the", options);
//     std::cout << attnvar::bracketed_text(run.tree, *model.tokenizer) << "\n";
//     // The cat sat on the[ mat/ floor]...
//
// A complete program is examples/generate_parallel.cpp; the guide is docs/cpp_api.md; the
// mechanism is docs/generation.md and docs/engine.md.
//
// Contents (the area header that declares each name in parentheses):
//   1. Version             ATTNVAR_VERSION_*, version_number(), version_string() (version.h)
//   2. Errors              Error, FormatError, ConfigError, MissingError (error.h)
//   3. Loading             load_model(), load_tokenizer(), LoadedModel (load_model.h)
//   4. Tokens              Tokenizer::encode/decode/piece (tokenizer/tokenizer.h),
//                          encode_prompt() (here)
//   5. Generation          generate(), GenerateOptions, GenerationResult, StopOn
//                          (generate/generator.h), SiblingVisibility (model/visibility.h),
//                          NextStepPolicy (generate/next_step.h), Tree (generate/tree.h)
//   6. Replay              replay(), ReplayOptions, ReplayResult (generate/replay.h),
//                          encode(), Encoding, Layout (generate/encoding.h),
//                          KeyBias (model/llama.h)
//   7. Capture             CaptureSpec (capture/capture_spec.h), PassCapture, LayerCapture,
//                          assemble_dense(), assemble_value_norms() (capture/pass_capture.h)
//   8. Text                bracketed_text(), top_path_text() (generate/text.h)
// Names reachable only through other headers (the model internals under model/, the
// tokenizer's pipeline parts, the compat preset in generate/compat_tempo.h, selection in
// generate/selection.h) are public but not part of this header's versioned surface.
//
// General rules, which hold for every function below unless its entry says otherwise:
//  - Namespace: everything is in namespace attnvar.
//  - Errors: attnvar throws exceptions, never returns error codes. Its own exceptions all
//    derive from attnvar::Error (itself a std::runtime_error) and their what() names the
//    culprit (file, field, tensor, option or slot):
//      FormatError   a malformed, truncated or corrupt file, or a tensor whose type or
//                    shape does not fit;
//      ConfigError   an unsupported architecture or option, or an out-of-range value;
//      MissingError  a file or tensor that should exist does not;
//      Error         anything else (e.g. asking for a capture that was not recorded).
//    Torch computes the tensors, so c10::Error (a std::exception; c10::OutOfMemoryError,
//    c10::IndexError... derive from it) can also escape where a check is left to torch —
//    each entry says where — and std::bad_alloc on exhaustion. The functions documented
//    here take their inputs by const reference or by value and never modify them, so an
//    exception leaves the caller's objects (models, trees, options) as they were.
//  - Ownership: arguments are borrowed for the duration of the call only; nothing keeps a
//    pointer or reference to them afterwards. Results are returned by value and owned by
//    the caller. Tensors in results (at::Tensor) are reference-counted handles whose
//    storage the result owns; they live on the host (CPU) whatever the model's device.
//  - Threads: attnvar's own loops and torch's kernels use torch's intra-op thread pool
//    (OMP_NUM_THREADS, at::set_num_threads). A LoadedModel is immutable after loading
//    (generate and replay take it by const reference and keep all per-run state in the
//    run), but concurrent runs on one model are not covered by the tests: serialise the
//    calls on one model, or load one model per thread. A Tokenizer's const members are
//    thread-safe.
//  - Token ids are int64_t in trees, prompts and options, int32_t in the Tokenizer's
//    own interface (encode_prompt() converts).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "attnvar/capture/capture_spec.h"
#include "attnvar/capture/pass_capture.h"
#include "attnvar/error.h"
#include "attnvar/generate/encoding.h"
#include "attnvar/generate/generator.h"
#include "attnvar/generate/next_step.h"
#include "attnvar/generate/replay.h"
#include "attnvar/generate/text.h"
#include "attnvar/generate/tree.h"
#include "attnvar/load_model.h"
#include "attnvar/model/llama.h"
#include "attnvar/model/visibility.h"
#include "attnvar/tokenizer/tokenizer.h"
#include "attnvar/version.h"

namespace attnvar {

// ===========================================================================================
// 1. Version (attnvar/version.h, generated from project(attnvar VERSION ...) by CMake)
// ===========================================================================================
//
// ATTNVAR_VERSION_MAJOR, ATTNVAR_VERSION_MINOR, ATTNVAR_VERSION_PATCH  integers
// ATTNVAR_VERSION_STRING   "MAJOR.MINOR.PATCH"
// ATTNVAR_VERSION_NUMBER   MAJOR * 10000 + MINOR * 100 + PATCH, for #if
// int version_number() noexcept;  const char* version_string() noexcept;
//   The same values as compiled into the library, to detect a header/library mismatch.
//   version_string() returns a static string: never free it.
//
// What a bump means (docs/cpp_api.md, "Versioning"): MAJOR — a source-incompatible change
// to anything documented in this header (removed or renamed name, changed parameter,
// default, meaning or exception); MINOR — additions only (new functions, overloads,
// options whose defaults keep the old behaviour, enumerators appended at the end); PATCH —
// fixes that change no declaration. While MAJOR is 0, a MINOR bump may still break source
// compatibility and says so in docs/cpp_api.md. There is no ABI promise: attnvar is a
// static library built against one exact LibTorch, so rebuild it with your torch.

// ===========================================================================================
// 2. Errors (attnvar/error.h)
// ===========================================================================================
//
// class Error : std::runtime_error; FormatError, ConfigError, MissingError : Error.
//   What each means is under "General rules" above; each entry below lists which it throws.
//   The Python bindings map them to attnvar.FormatError and attnvar.ConfigError (both
//   ValueError), FileNotFoundError and attnvar.AttnvarError.

// ===========================================================================================
// 3. Loading (attnvar/load_model.h)
// ===========================================================================================
//
// LoadedModel load_model(const std::string& path, at::ScalarType dtype = at::kFloat,
//                        c10::Device device = c10::kCPU);
//   Loads a model: decoder weights, configuration, tokenizer and identity.
//   path    A .gguf file (weights, configuration and tokenizer from its metadata; quantized
//           tensors are dequantized), or a Hugging Face model directory (config.json,
//           model.safetensors or a sharded index, tokenizer.json when present), or a
//           .safetensors / .safetensors.index.json file inside one. Architectures
//           (model_type): llama (Llama 2/3, SmolLM2, TinyLlama), mistral, qwen2, qwen3;
//           GGUF files of architecture llama, qwen2 or qwen3. The file is read
//           during the call only (memory-mapped, copied into tensors, unmapped): it may be
//           moved or deleted afterwards.
//   dtype   The dtype of the weights and of the computation: at::kFloat (default, the
//           reference), at::kBFloat16 or at::kHalf. Logits, distributions and captures
//           come back as f32 (captures: as CaptureSpec::dtype says) whatever it is.
//   device  c10::kCPU (default) or a CUDA device (c10::Device("cuda:0")) when torch was
//           built with CUDA; the weights and the KV caches live there.
//   Returns a LoadedModel that owns everything it holds (see below).
//   Throws  MissingError: path does not exist, or a tensor the configuration implies is
//             absent.
//           FormatError: a malformed or truncated file, a tensor of the wrong shape or
//             type, a required metadata key missing.
//           ConfigError: an unsupported architecture, rope scaling or dtype.
//           c10::Error: device not available (e.g. CUDA asked of a CPU build of torch).
//
// struct LoadedModel {
//   std::unique_ptr<LlamaModel> decoder;    never null after load_model()
//   std::unique_ptr<Tokenizer> tokenizer;   null for an HF directory without tokenizer.json
//   ModelIdentity identity;                 path, format, sha256, quantization, note
//   std::vector<int64_t> eos_ids;           what generation stops on by default: the
//                                           config's EOS ids, then the tokenizer's EOS and
//                                           end-of-turn ids, without duplicates
// };
//   Move-only. The model lives as long as the LoadedModel (or whoever the unique_ptrs are
//   moved to); results of generate()/replay() do not refer to it and may outlive it.
//
// std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path);
//   The tokenizer alone, without weights.
//   path    A .gguf file, a tokenizer.json (or any .json in that format), a directory
//           holding tokenizer.json, or a weights file inside an HF directory.
//   Returns the tokenizer, owned by the caller; nullptr for a directory without
//           tokenizer.json.
//   Throws  MissingError (path absent), FormatError / ConfigError naming file and field.

// ===========================================================================================
// 4. Tokens (attnvar/tokenizer/tokenizer.h)
// ===========================================================================================
//
// std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special = true)
//   text         UTF-8; ill-formed sequences are replaced by U+FFFD first, never rejected.
//                Added and special tokens (e.g. "<|im_start|>") are matched whole.
//   add_special  true: BOS (when add_bos()) and any other post-processor tokens are
//                added, as the model expects for a prompt.
//   Returns the ids, each in [0, vocab_size()); empty for empty text unless the
//   post-processor adds tokens. Ill-formed text is repaired, not an error. Thread-safe.
//
// std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special = false)
//   The text of ids through the file's decoder. Throws ConfigError for an id outside
//   [0, vocab_size()) or without a token.
//
// std::string Tokenizer::piece(int32_t id)
//   One token as shown inside a parallel set: its leading space kept, valid UTF-8 as text,
//   the bytes of an incomplete sequence as "<0xNN>". Throws ConfigError like decode.
//
// The tokenizer also gives bos_id(), eos_ids(), vocab_size(), is_special(id),
// id_to_token(id), token_to_id(token) and set_add_bos(bool); see tokenizer.h.

// Prompt ids for generate()/replay(): model.tokenizer->encode(text, add_special), widened
// to int64_t.
//   model        Borrowed for the call; must have a tokenizer.
//   text         UTF-8 prompt text, any length.
//   add_special  As Tokenizer::encode (true: BOS added when the model asks for it).
// Throws ConfigError when model has no tokenizer (an HF directory without tokenizer.json)
// or when the text encodes to no token at all (generation needs at least one).
inline std::vector<int64_t> encode_prompt(const LoadedModel& model, std::string_view text,
                                          bool add_special = true) {
  if (!model.tokenizer) {
    throw ConfigError("encode_prompt: " + model.identity.path +
                      " has no tokenizer; pass token ids instead");
  }
  const std::vector<int32_t> ids = model.tokenizer->encode(text, add_special);
  if (ids.empty()) throw ConfigError("encode_prompt: the prompt encodes to no token");
  return std::vector<int64_t>(ids.begin(), ids.end());
}

// ===========================================================================================
// 5. Generation (attnvar/generate/generator.h)
// ===========================================================================================
//
// GenerationResult generate(const LlamaModel& model, const std::vector<int64_t>& prompt,
//                           const GenerateOptions& options,
//                           const InterruptCheck& interrupt = {},
//                           const PassSink& sink = {});
//   Parallel generation as described in docs/generation.md: at each step t the set
//   S_t = { v : q_t(v) ≥ threshold } (the argmax alone if empty; at most max_width) is
//   chosen, and every non-EOS member is fed in ONE forward pass at the shared logical
//   position P + t, each in its own cache slot, seeing its siblings per options.mode;
//   q_{t+1} comes from the fed members' outputs per options.policy.
//   model      Borrowed for the call; not modified (each run has its own KV cache).
//   prompt     Token ids, BOS included if the model wants one (encode_prompt() does it);
//              non-empty, each in [0, vocab_size) of the model's config.
//   options    See GenerateOptions below; checked first by validate().
//   interrupt  Called before every step; may throw any exception to stop the run. The
//              exception propagates out of generate() unchanged and the model stays
//              usable. Empty: never interrupted.
//   sink       When options.capture.enabled: called after each pass with that pass's
//              capture, which it then owns; GenerationResult::passes stays empty (memory
//              holds one pass at a time). Anything it throws propagates. Empty: the
//              captures are collected in GenerationResult::passes.
//   Returns the run (below).
//   Throws  ConfigError: an option out of range (validate() names it), an empty prompt, a
//             prompt id outside the vocabulary, or a query that a sliding window leaves
//             with no visible key.
//           c10::Error: a capture head outside [0, num_attention_heads) (capture layers
//             outside [0, num_hidden_layers) are simply never captured); out of memory.
//
// struct GenerateOptions {                          field: meaning; valid range [default]
//   double threshold;          θ: members are tokens with q_t ≥ θ; (0, 1]; 1 is greedy [0.1]
//   int64_t max_steps;         sets to generate; ≥ 0 [30]
//   SiblingVisibility mode;    kIsolated: each member sees itself only; kVisible: all
//                              siblings; kCausal: siblings of lower rank [kIsolated]
//   NextStepPolicy policy;     kMixture: Σ w_i softmax(l_i/τ), w ∝ selection probability;
//                              kTop; kLast; kMeanLogits [kMixture]
//   int64_t max_width;         at most this many members per set; ≥ 1 [32]
//   double temperature;        τ: logits / τ before every softmax; finite, > 0 [1.0]
//   bool sample;               also draw one token from q_t into the set [false]
//   uint64_t seed;             the draw's seed; any value [0]
//   StopOn stop_on;            kAnyEos: stop after a set with any EOS member; kTopEos:
//                              only when the rank-0 member is EOS [kAnyEos]
//   std::vector<int64_t> eos_ids;   ids that count as EOS (never fed); each in
//                              [0, vocab_size); empty: the model config's EOS ids only —
//                              the LoadedModel overload below uses LoadedModel::eos_ids
//   int64_t min_new_steps;     steps t < min_new_steps select from q_t without the EOS ids
//                              (their mass set to 0, the rest renormalised; q_t unchanged
//                              when it is all EOS), so no run stops before; ≥ 0 [0]
//   CaptureSpec capture;       what to record about attention (section 7) [off]
//   bool keep_distributions;   keep every q_t in GenerationResult::distributions [false]
// };
// void validate(const GenerateOptions& options, int64_t vocab_size);
//   Throws ConfigError naming the first option out of the ranges above; generate() calls it.
// StopOn stop_on_from_string(const std::string&)  "any_eos" | "top_eos"; else ConfigError.
// SiblingVisibility sibling_visibility_from_string(const std::string&)
//   "isolated" | "visible" | "causal"; else ConfigError.
// NextStepPolicy next_step_policy_from_string(const std::string&)
//   "mixture" | "top" | "last" | "mean_logits"; else ConfigError.
//
// struct GenerationResult {
//   Tree tree;                        the prompt and every set S_t, members in rank order
//                                     with their probability, rank, EOS flag and slot
//   std::vector<SlotRecord> slots;    every fed token in slot order: the prompt, then each
//                                     step's non-EOS members (token, position, step, member)
//   std::vector<PassCapture> passes;  prefill, then one per fed set; only when capturing
//                                     without a sink
//   at::Tensor distributions;         (steps, V) f32 q_t when keep_distributions; else
//                                     undefined
//   std::string stop_reason;          "max_steps", or "eos" (an EOS per stop_on, or a set
//                                     with no member to feed)
//   double prefill_seconds, generate_seconds;   wall-clock timings
// };
//
// struct Tree (attnvar/generate/tree.h): prompt (token ids) and steps; each TreeStep holds
// members (token_id, probability, rank, is_eos, slot) and the entropy of q_t in nats.
// Tree::build(prompt, steps, eos_ids) makes one by hand for replay(): ConfigError for an
// empty prompt, an empty step, a repeated id within a step or a negative id.

// generate() on a LoadedModel from prompt text: encode_prompt(model, prompt), then
// generate(*model.decoder, ids, options, interrupt, sink) with options.eos_ids defaulted to
// model.eos_ids (the config's EOS ids plus the tokenizer's EOS and end-of-turn ids, as the
// Python Model.generate does) when the caller left it empty.
//   model    Borrowed for the call; needs a tokenizer.
//   prompt   UTF-8 text; BOS is added when the model asks for it.
//   options  As for generate(); taken by value (eos_ids may be filled in).
// Throws what encode_prompt() and generate() throw; Error if model.decoder is null (a
// moved-from LoadedModel).
inline GenerationResult generate(const LoadedModel& model, std::string_view prompt,
                                 GenerateOptions options = {},
                                 const InterruptCheck& interrupt = {}, const PassSink& sink = {}) {
  if (!model.decoder) throw Error("generate: the LoadedModel holds no decoder (moved from?)");
  const std::vector<int64_t> ids = encode_prompt(model, prompt);
  if (options.eos_ids.empty()) options.eos_ids = model.eos_ids;
  return generate(*model.decoder, ids, options, interrupt, sink);
}

// ===========================================================================================
// 6. Replay (attnvar/generate/replay.h, attnvar/generate/encoding.h)
// ===========================================================================================
//
// ReplayResult replay(const LlamaModel& model, const Tree& tree, const ReplayOptions& options);
//   Teacher-forces a tree (from generate() or Tree::build()) under any encoding: the text
//   is held fixed while the positions and visibility change (docs/generation.md).
//   model    Borrowed for the call; not modified (the replay has its own KV cache).
//   tree     Borrowed for the call. Non-empty prompt; every id (prompt and members) in
//            [0, vocab_size). EOS members are never fed. The members' probabilities weight
//            the mixture policy; NaN (hand-built trees) counts as equal weights.
//   options  See ReplayOptions below.
//   Returns the layout it ran, the captures, the logits of every slot and the next-step
//   distributions as generation would have computed them (ReplayResult below).
//   Throws  ConfigError: temperature ≤ 0, an id outside the vocabulary, an empty prompt,
//             an intervention out of range (key slot outside [0, N), layer window not
//             inside [0, num_hidden_layers), head outside [0, num_attention_heads)), an
//             intervention that hides every key from some query, or a query that a
//             sliding window leaves with no visible key.
//           c10::Error: a capture head out of range, as for generate(); out of memory.
//
// struct ReplayOptions {
//   Encoding encoding;     how the tree is laid out (below) [kSharedIsolated]
//   CaptureSpec capture;   what to record (section 7) [off]
//   std::vector<KeyBias> interventions;  biases added to attention scores (below) [none]
//   int64_t chunk_size;    at most this many queries per forward pass, except that a
//                          step's members are never split (a step wider than chunk_size
//                          gets a pass of its own); ≤ 0: the whole tree in one pass [0].
//                          Results depend on it only through floating-point rounding.
//   NextStepPolicy policy; for ReplayResult::distributions [kMixture]
//   double temperature;    > 0 [1.0]
//   bool logits;           false: skip the output projection; logits and distributions
//                          stay undefined (captures only) [true]
// };
//
// struct KeyBias (attnvar/model/llama.h): adds `delta` to the pre-softmax scores of
// key_slots (slots of the replay's layout, [0, N)) in layers [layer_begin, layer_end)
// (inside [0, num_hidden_layers)) for `heads` (each in [0, num_attention_heads); empty:
// all). delta = −inf (the default) knocks the keys out; captured scores include it.
//
// struct ReplayResult {
//   Layout layout;                    the slots, positions and visibility that were run
//   std::vector<PassCapture> passes;  one per forward pass, when capturing
//   at::Tensor logits;                (N, V) f32, one row per slot
//   at::Tensor distributions;         (steps', V) f32: q_0 from the last prompt slot, then
//                                     q_{t+1} from step t's fed members; ends early at a
//                                     step with no fed member
// };
//
// enum class Encoding — where each fed member sits and what it sees:
//   kSharedIsolated  position P + t, siblings see themselves only (= generation kIsolated)
//   kSharedVisible   position P + t, all siblings visible        (= generation kVisible)
//   kSharedCausal    position P + t, lower ranks visible          (= generation kCausal)
//   kSerial          each fed member its own position, causal, like ordinary text
//   kFractional      position P + t + r / k_t, siblings see themselves only
//   kTopOnly         rank 0 only: a plain sequence
// Encoding encoding_from_string(const std::string&)  "shared_isolated" ... "top_only";
//   else ConfigError.
// std::string to_string(Encoding);  Encoding encoding_for_mode(SiblingVisibility);
//
// Layout encode(const Tree& tree, Encoding encoding);
//   The layout alone, without running the model: slots (the prompt, then each step's fed
//   members in rank order), positions(), token_ids() and visibility (N, N) bool, with
//   step_begin[t]..step_begin[t + 1] the slots of step t. Throws ConfigError for an empty
//   prompt; ids are not checked here.

// replay() on a LoadedModel: replay(*model.decoder, tree, options).
// Throws what replay() throws; Error if model.decoder is null (a moved-from LoadedModel).
inline ReplayResult replay(const LoadedModel& model, const Tree& tree,
                           const ReplayOptions& options = {}) {
  if (!model.decoder) throw Error("replay: the LoadedModel holds no decoder (moved from?)");
  return replay(*model.decoder, tree, options);
}

// ===========================================================================================
// 7. Capture (attnvar/capture/capture_spec.h, attnvar/capture/pass_capture.h)
// ===========================================================================================
//
// struct CaptureSpec {
//   bool enabled;                 record at all [false]
//   std::vector<int64_t> layers;  layers to record, each in [0, num_hidden_layers) (others
//                                 are never matched, so record nothing); empty: all [empty]
//   std::vector<int64_t> heads;   query heads, each in [0, num_attention_heads) (c10::Error
//                                 otherwise), in the order given; empty: all [empty]
//   bool probabilities;           α[h, q, k] after softmax [true]
//   bool scores;                  pre-softmax scores after the bias, −inf where masked [false]
//   bool value_norms;             ‖v_k W_O^h‖ per head and key [false]
//   CaptureDtype dtype;           kFloat32 or kFloat16 (storage only) [kFloat32]
// };
// Capturing runs a captured layer's attention on an explicit path instead of the fused
// kernel; the two agree to floating-point rounding (docs/engine.md).
//
// struct PassCapture {       what one forward pass recorded
//   int64_t step;            the generation step it fed; −1 for the prompt prefill
//   int64_t first_slot;      its queries are slots [first_slot, first_slot + num_queries)
//   int64_t num_queries;     T
//   std::vector<LayerCapture> layers;   the captured layers, in layer order
// };
// struct LayerCapture (attnvar/model/attention.h) { int64_t layer; at::Tensor
//   probabilities, scores  (H', T, S); value_norms (H', S) }, H' the captured heads and S
//   the slots after the pass; a field not asked for is an undefined tensor.
//
// at::Tensor assemble_dense(const std::vector<PassCapture>& passes, int64_t num_slots,
//                           CaptureField field);
//   The dense view [L', H', N, N] f32 of kProbabilities or kScores over a run's N slots.
//   passes     A run's passes (GenerationResult::passes or ReplayResult::passes); borrowed.
//   num_slots  N: GenerationResult::slots.size() or ReplayResult::layout.size().
//   Pairs no pass recorded hold 0 (probabilities) or −inf (scores), like masked pairs.
//   Throws Error: no capture (passes empty or capture off), the field was not captured, or
//   a pass reaches beyond num_slots.
//
// at::Tensor assemble_value_norms(const std::vector<PassCapture>& passes, int64_t num_slots);
//   [L', H', N] f32 value-contribution norms of every slot. Throws Error when value norms
//   were not captured or the widest pass did not see num_slots slots.

// ===========================================================================================
// 8. Text (attnvar/generate/text.h)
// ===========================================================================================
//
// std::string bracketed_text(const Tree& tree, const Tokenizer& tokenizer);
//   "The cat sat on the[ mat/ floor]": the prompt (a leading BOS left out), then each set,
//   a set of k ≥ 2 members in brackets joined by "/", in rank order, as Tokenizer::piece().
//   Throws ConfigError for an id the tokenizer has no token for.
// std::string top_path_text(const Tree& tree, const Tokenizer& tokenizer);
//   The prompt and each set's rank-0 member. Same errors.

}  // namespace attnvar
