// Bindings for the tokenizer area: attnvar._core.Tokenizer over attnvar::Tokenizer.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "attnvar/error.h"
#include "attnvar/tokenizer/tokenizer.h"
#include "bindings.h"

namespace py = pybind11;

namespace attnvar::python {

void bind_tokenizer(py::module_& m) {
  py::class_<Tokenizer>(m, "Tokenizer", R"doc(
Text <-> token ids: byte-level BPE (GPT-2 family) and SentencePiece-style BPE with byte
fallback, loaded from an HF tokenizer.json or GGUF metadata; identical to HF tokenizers
configured as the file declares (see docs/tokenizers.md).
)doc")
      .def_static(
          "from_file", [](const std::string& path) { return Tokenizer::from_json_file(path); },
          py::arg("path"),
          "Load an HF tokenizer.json (tokenizer_config.json and generation_config.json next to "
          "it are read for BOS/EOS when present).")
      .def_static(
          "from_json",
          [](const std::string& json, const std::string& origin) {
            return Tokenizer::from_json(json, origin);
          },
          py::arg("json"), py::arg("origin") = "<string>",
          "Load from the text of a tokenizer.json.")
      .def_static(
          "from_gguf", [](const std::string& path) { return Tokenizer::from_gguf_file(path); },
          py::arg("path"), "Load from the tokenizer.ggml.* metadata of a GGUF file.")
      .def(
          "encode",
          [](const Tokenizer& t, const std::string& text, bool add_special) {
            py::gil_scoped_release release;
            return t.encode(text, add_special);
          },
          py::arg("text"), py::arg("add_special") = true,
          "Token ids of `text` (str, or bytes: ill-formed UTF-8 is replaced by U+FFFD as "
          "errors='replace' does). add_special adds BOS/EOS as the model declares.")
      .def(
          "decode",
          [](const Tokenizer& t, const std::vector<int32_t>& ids, bool skip_special) {
            return t.decode(ids, skip_special);
          },
          py::arg("ids"), py::arg("skip_special") = false,
          "Text of `ids` through the declared decoder (skip_special leaves out special tokens).")
      .def("piece", &Tokenizer::piece, py::arg("id"),
           "One token as shown in a parallel set: leading space kept, bytes of an incomplete "
           "UTF-8 sequence as <0xNN>.")
      .def_property_readonly("vocab_size", &Tokenizer::vocab_size)
      .def_property_readonly("bos_id", &Tokenizer::bos_id)
      .def_property("eos_ids", &Tokenizer::eos_ids, &Tokenizer::set_eos_ids)
      .def_property("add_bos", &Tokenizer::add_bos, &Tokenizer::set_add_bos,
                    "Whether encode(add_special=True) starts with BOS; assign to override.")
      .def_property_readonly("family",
                             [](const Tokenizer& t) {
                               return t.family() == TokenizerFamily::kByteLevelBpe
                                          ? "byte_level_bpe"
                                          : "sentencepiece_bpe";
                             })
      .def_property_readonly("origin", &Tokenizer::origin)
      .def(
          "id_to_token",
          [](const Tokenizer& t, int32_t id) { return utf8_message(t.id_to_token(id)); },
          py::arg("id"),
          "The token string as stored (byte alphabet for byte-level BPE). A byte that is not "
          "part of well-formed UTF-8 (some GGUF vocabularies hold such tokens) is written as "
          "the four characters \\xNN, as gguf_metadata does.")
      .def("token_to_id", &Tokenizer::token_to_id, py::arg("token"),
           "The id of a stored token string, or None.")
      .def("is_special", &Tokenizer::is_special, py::arg("id"))
      .def("__len__", &Tokenizer::vocab_size)
      .def("__repr__", [](const Tokenizer& t) {
        return "<attnvar.Tokenizer " +
               std::string(t.family() == TokenizerFamily::kByteLevelBpe ? "byte_level_bpe"
                                                                        : "sentencepiece_bpe") +
               " vocab_size=" + std::to_string(t.vocab_size()) + " from " + t.origin() + ">";
      });
}

}  // namespace attnvar::python
