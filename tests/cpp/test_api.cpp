// The entry header attnvar/attnvar.h: its version macros, the text formatters and the thin
// LoadedModel conveniences it adds over the area headers.
#include "attnvar/attnvar.h"

#include <cmath>
#include <string>

#include "attnvar/tokenizer/byte_level.h"
#include "catch_compat.h"
#include "tiny_model.h"

using namespace attnvar;

namespace {

constexpr int32_t kBos = 256;

// A byte-level tokenizer without merges: id b < 256 is the byte b, id 256 is "<s>" (BOS,
// special), added before the text when with_bos.
Tokenizer byte_tokenizer(bool with_bos) {
  TokenizerParts p;
  p.origin = "bytes";
  p.family = TokenizerFamily::kByteLevelBpe;
  p.bpe.byte_level = true;
  for (int b = 0; b < 256; ++b) {
    p.vocab.push_back({byte_level::to_spelling(std::string(1, static_cast<char>(b))), b});
  }
  p.decoder = std::make_unique<ByteLevelDecoder>();
  if (with_bos) {
    AddedToken bos;
    bos.id = kBos;
    bos.content = "<s>";
    bos.special = true;
    p.added_tokens.push_back(bos);
    p.bos_id = kBos;
    p.prefix_ids = {kBos};
  }
  return Tokenizer(std::move(p));
}

int64_t byte(char c) { return static_cast<unsigned char>(c); }

}  // namespace

TEST_CASE("version macros come from the project version and match the library", "[api]") {
  CHECK(std::string(ATTNVAR_VERSION_STRING) == ATTNVAR_TEST_PROJECT_VERSION);
  CHECK(std::string(ATTNVAR_VERSION_STRING) == std::to_string(ATTNVAR_VERSION_MAJOR) + "." +
                                                   std::to_string(ATTNVAR_VERSION_MINOR) + "." +
                                                   std::to_string(ATTNVAR_VERSION_PATCH));
  CHECK(ATTNVAR_VERSION_NUMBER ==
        ATTNVAR_VERSION_MAJOR * 10000 + ATTNVAR_VERSION_MINOR * 100 + ATTNVAR_VERSION_PATCH);
  CHECK(version_number() == ATTNVAR_VERSION_NUMBER);
  CHECK(std::string(version_string()) == ATTNVAR_VERSION_STRING);
}

TEST_CASE("bracketed_text brackets sets of two or more, without the BOS", "[api]") {
  const Tokenizer tok = byte_tokenizer(true);
  // "The" + " " + [c/d] + "a" + [x/y/z]; the last set's members include an EOS.
  const Tree tree = Tree::build({kBos, byte('T'), byte('h'), byte('e')},
                                {{byte(' ')}, {byte('c'), byte('d')}, {byte('a')},
                                 {byte('x'), byte('y'), byte('z')}},
                                {byte('z')});
  CHECK(bracketed_text(tree, tok) == "The [c/d]a[x/y/z]");
  CHECK(top_path_text(tree, tok) == "The cax");
  // No BOS in front: the whole prompt is shown; a prompt BOS elsewhere shows its text.
  const Tree plain = Tree::build({byte('H'), kBos}, {{byte('!'), byte('?')}});
  CHECK(bracketed_text(plain, tok) == "H<s>[!/?]");
  CHECK(bracketed_text(Tree::build({byte('H')}, {{byte('!'), byte('?')}}), byte_tokenizer(false)) ==
        "H[!/?]");
  // Ids the tokenizer has no token for.
  CHECK_THROWS_AS(bracketed_text(Tree::build({byte('a')}, {{300}}), tok), ConfigError);
  CHECK_THROWS_AS(top_path_text(Tree::build({int64_t{1} << 40}, {}), tok), ConfigError);
}

TEST_CASE("encode_prompt widens the tokenizer's ids and refuses what cannot be a prompt",
          "[api]") {
  LoadedModel model;
  model.identity.path = "no_tokenizer";
  CHECK_THROWS_AS(encode_prompt(model, "x"), ConfigError);
  model.tokenizer = std::make_unique<Tokenizer>(byte_tokenizer(true));
  CHECK(encode_prompt(model, "Hi") == std::vector<int64_t>{kBos, byte('H'), byte('i')});
  CHECK(encode_prompt(model, "Hi", false) == std::vector<int64_t>{byte('H'), byte('i')});
  CHECK_THROWS_AS(encode_prompt(model, "", false), ConfigError);
}

TEST_CASE("generate and replay on a LoadedModel equal the decoder calls, eos from the model",
          "[api]") {
  LoadedModel model;
  model.decoder = std::make_unique<LlamaModel>(testing::tiny_model());
  model.tokenizer = std::make_unique<Tokenizer>(byte_tokenizer(false));
  const std::string text = "!#%";  // printable ASCII is spelled as itself: ids 33, 35, 37
  const std::vector<int64_t> ids = {byte('!'), byte('#'), byte('%')};

  GenerateOptions options;
  options.threshold = 0.05;
  options.max_steps = 4;
  // Every id of the tiny vocabulary but one is EOS: the first set must contain one.
  for (int64_t id = 0; id < 50; ++id) {
    if (id != 5) model.eos_ids.push_back(id);
  }
  const GenerationResult via_model = generate(model, text, options);
  GenerateOptions with_eos = options;
  with_eos.eos_ids = model.eos_ids;
  const GenerationResult direct = generate(*model.decoder, ids, with_eos);
  REQUIRE(via_model.tree.prompt == ids);
  REQUIRE(via_model.tree.num_steps() == direct.tree.num_steps());
  for (int64_t t = 0; t < direct.tree.num_steps(); ++t) {
    const auto& a = via_model.tree.steps[t].members;
    const auto& b = direct.tree.steps[t].members;
    REQUIRE(a.size() == b.size());
    for (size_t r = 0; r < a.size(); ++r) {
      CHECK(a[r].token_id == b[r].token_id);
      CHECK(a[r].is_eos == b[r].is_eos);
    }
  }
  CHECK(via_model.stop_reason == "eos");  // an EOS from model.eos_ids, not the config's

  // Caller's eos_ids win over the model's.
  GenerateOptions none_eos = options;
  none_eos.eos_ids = {49};
  none_eos.max_steps = 2;
  const GenerationResult own = generate(model, text, none_eos);
  for (const auto& step : own.tree.steps) {
    for (const auto& m : step.members) CHECK(m.is_eos == (m.token_id == 49));
  }

  ReplayOptions ro;
  ro.encoding = Encoding::kSerial;
  const ReplayResult a = replay(model, direct.tree, ro);
  const ReplayResult b = replay(*model.decoder, direct.tree, ro);
  CHECK(a.logits.equal(b.logits));

  LoadedModel moved = std::move(model);
  CHECK_THROWS_AS(generate(model, text, options), Error);
  CHECK_THROWS_AS(replay(model, direct.tree), Error);
}

TEST_CASE("min_new_steps selects without EOS before it, from q_t renormalised", "[api]") {
  const LlamaModel model = testing::tiny_model();
  GenerateOptions o;
  o.threshold = 0.05;
  o.max_steps = 6;
  o.keep_distributions = true;
  // Every id but 5 is EOS: without the rule the first set holds an EOS and the run stops.
  for (int64_t id = 0; id < 50; ++id) {
    if (id != 5) o.eos_ids.push_back(id);
  }
  const std::vector<int64_t> prompt = {1, 2, 3};
  const GenerationResult plain = generate(model, prompt, o);
  REQUIRE(plain.tree.num_steps() == 1);
  CHECK(plain.stop_reason == "eos");

  o.min_new_steps = 3;
  const GenerationResult kept = generate(model, prompt, o);
  REQUIRE(kept.tree.num_steps() >= 4);
  for (int64_t t = 0; t < 3; ++t) {
    const auto& members = kept.tree.steps[t].members;
    REQUIRE(members.size() == 1);  // id 5 holds all the mass once EOS is removed
    CHECK(members[0].token_id == 5);
    CHECK(std::abs(members[0].probability - 1.0) < 1e-6);
    CHECK_FALSE(members[0].is_eos);
    // q_t as recorded is the model's own, EOS mass included.
    CHECK(kept.distributions[t][5].item<double>() < 0.5);
  }
  CHECK(kept.stop_reason == "eos");  // from step 3 on, EOS may stop it again

  o.min_new_steps = -1;
  CHECK_THROWS_AS(generate(model, prompt, o), ConfigError);
}

TEST_CASE("replay_batch gives each tree bit for bit its own replay()", "[api]") {
  const LlamaModel model = testing::tiny_model();
  // Trees of several lengths and set widths (one of 20 members: more rows than the gemv
  // kernels take), replayed under every encoding, with and without a key bias.
  std::vector<Tree> trees;
  const std::vector<std::vector<int64_t>> prompts = {{3, 4, 5}, {9}, {1, 2, 3, 4, 5, 6, 7}};
  for (size_t i = 0; i < prompts.size(); ++i) {
    GenerateOptions g;
    g.threshold = i == 2 ? 1e-6 : 0.05;
    g.max_width = 20;
    g.max_steps = 3 + static_cast<int64_t>(i);
    g.eos_ids = {};
    trees.push_back(generate(model, prompts[i], g).tree);
  }
  CaptureSpec spec;
  spec.enabled = true;
  spec.scores = true;
  std::vector<Tree> batch_trees;
  std::vector<ReplayOptions> options;
  for (const Encoding e : {Encoding::kSharedIsolated, Encoding::kSharedVisible,
                           Encoding::kSharedCausal, Encoding::kSerial, Encoding::kFractional,
                           Encoding::kTopOnly}) {
    for (size_t i = 0; i < trees.size(); ++i) {
      ReplayOptions o;
      o.encoding = e;
      o.capture = spec;
      if (i == 1) o.interventions.push_back(KeyBias{0, 1, {}, {0}, -0.75});
      if (i == 2 && e == Encoding::kSerial) o.chunk_size = 4;  // chunked: runs alone
      batch_trees.push_back(trees[i]);
      options.push_back(o);
    }
  }
  for (const int64_t max_batch : {1, 4, 64}) {
    const auto got = replay_batch(model, batch_trees, options, max_batch);
    REQUIRE(got.size() == batch_trees.size());
    for (size_t i = 0; i < got.size(); ++i) {
      const ReplayResult want = replay(model, batch_trees[i], options[i]);
      CHECK(at::equal(got[i].logits, want.logits));
      CHECK(at::equal(got[i].distributions, want.distributions));
      REQUIRE(got[i].passes.size() == want.passes.size());
      for (size_t p = 0; p < want.passes.size(); ++p) {
        CHECK(got[i].passes[p].first_slot == want.passes[p].first_slot);
        REQUIRE(got[i].passes[p].layers.size() == want.passes[p].layers.size());
        for (size_t l = 0; l < want.passes[p].layers.size(); ++l) {
          CHECK(at::equal(got[i].passes[p].layers[l].scores, want.passes[p].layers[l].scores));
          CHECK(at::equal(got[i].passes[p].layers[l].probabilities,
                          want.passes[p].layers[l].probabilities));
        }
      }
    }
  }
  CHECK(trees[2].steps.front().members.size() > 16);
  // One capture for the batch; lengths must match; max_batch at least 1.
  std::vector<ReplayOptions> mixed = {options[0], options[1]};
  mixed[1].capture = CaptureSpec{};
  CHECK_THROWS_AS(replay_batch(model, {trees[0], trees[1]}, mixed), ConfigError);
  CHECK_THROWS_AS(replay_batch(model, {trees[0]}, {options[0], options[1]}), ConfigError);
  CHECK_THROWS_AS(replay_batch(model, {trees[0]}, {options[0]}, 0), ConfigError);
}
