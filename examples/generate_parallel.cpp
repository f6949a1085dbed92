// Parallel-token generation from C++ with nothing but the entry header.
//
//   generate_parallel MODEL [PROMPT] [THRESHOLD] [STEPS]
//
// Loads MODEL (a .gguf file or an HF model directory), generates from PROMPT with parallel
// sets (threshold θ, isolated siblings) and prints the bracketed text, e.g.
//   The cat sat on the[ mat/ floor]...
// then one line per step with its set. Exit status: 0 on success, 2 for bad arguments or a
// missing model file, 1 for any other error.
#include <attnvar/attnvar.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <string>

namespace {

int usage(const char* argv0) {
  std::cerr << "usage: " << argv0 << " MODEL [PROMPT] [THRESHOLD] [STEPS]\n"
            << "  MODEL      a .gguf file or an HF model directory\n"
            << "  PROMPT     text [\"The cat sat on the\"]\n"
            << "  THRESHOLD  θ in (0, 1] [0.1]\n"
            << "  STEPS      sets to generate, ≥ 0 [8]\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || argc > 5) return usage(argv[0]);
  const std::string model_path = argv[1];
  const std::string prompt = argc > 2 ? argv[2] : "The cat sat on the";
  attnvar::GenerateOptions options;
  options.mode = attnvar::SiblingVisibility::kIsolated;
  options.threshold = 0.1;
  options.max_steps = 8;
  try {
    if (argc > 3) options.threshold = std::stod(argv[3]);
    if (argc > 4) options.max_steps = std::stoll(argv[4]);
  } catch (const std::exception&) {
    return usage(argv[0]);
  }

  try {
    std::cout << "attnvar " << ATTNVAR_VERSION_STRING << " (library "
              << attnvar::version_string() << ")\n";
    const attnvar::LoadedModel model = attnvar::load_model(model_path);
    if (!model.tokenizer) {
      std::cerr << model_path << ": no tokenizer, so no text to print\n";
      return 2;
    }
    std::cout << "model: " << model.identity.path << " (" << model.identity.format << ", "
              << model.identity.quantization << ")\n";

    const attnvar::GenerationResult run = attnvar::generate(model, prompt, options);

    std::cout << "threshold " << options.threshold << ", mode isolated, "
              << run.tree.num_steps() << " steps, stop: " << run.stop_reason << "\n";
    std::cout << attnvar::bracketed_text(run.tree, *model.tokenizer) << "\n";
    for (int64_t t = 0; t < run.tree.num_steps(); ++t) {
      const attnvar::TreeStep& step = run.tree.steps[t];
      std::cout << "  step " << t << " (entropy " << step.entropy << " nats):";
      for (const attnvar::Member& m : step.members) {
        std::cout << " '" << model.tokenizer->piece(static_cast<int32_t>(m.token_id)) << "' "
                  << m.probability << (m.is_eos ? " [eos]" : "");
      }
      std::cout << "\n";
    }
    return 0;
  } catch (const attnvar::MissingError& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {  // attnvar::Error and its kin, c10::Error, bad_alloc
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
