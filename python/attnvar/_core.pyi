"""
attnvar's C++ core (LibTorch). Use the `attnvar` package, not this module.
"""
from __future__ import annotations

import collections.abc
import typing

import torch

__all__: list[str] = ['AttnvarError', 'ConfigError', 'FormatError', 'GenerationResult', 'KVCache', 'LayerCapture', 'Layout', 'Member', 'MissingError', 'Model', 'PassCapture', 'ReplayResult', 'SlotRecord', 'Tokenizer', 'Tree', 'TreeStep', 'causal_visibility', 'config_from_hf_json', 'encode', 'generate', 'generate_batch', 'generate_tempo2025', 'generate_tempo2025_batch', 'gguf_dequantize', 'gguf_metadata', 'gguf_tensor_infos', 'hook_point_names', 'kernel_info', 'load_model', 'load_weights', 'next_distribution', 'printed_set_starts', 'project', 'replay', 'replay_batch', 'rope_apply', 'rope_inv_freq', 'safetensors_read', 'select_set', 'set_visibility', 'tempo_bug_visibility', 'tempo_leak_mask']
class AttnvarError(RuntimeError):
    """
    Base of every error attnvar raises.
    """
class FormatError(AttnvarError, ValueError):
    """
    A malformed model, tokenizer, run or study file (names the file and field).
    """
class ConfigError(AttnvarError, ValueError):
    """
    An unsupported or inconsistent configuration or option.
    """
class MissingError(AttnvarError, FileNotFoundError):
    """
    A file or directory attnvar needs does not exist (names it).
    """
class KVCache:
    """
    Keys and values by slot; positions are metadata.
    """
    def keys(self, layer: typing.SupportsInt | typing.SupportsIndex) -> torch.Tensor:
        """
        (num_kv_heads, size, head_dim) copy of one layer's keys (after RoPE).
        """
    def remove_slots(self, slots: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex]) -> None:
        ...
    def truncate(self, num_slots: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    def values(self, layer: typing.SupportsInt | typing.SupportsIndex) -> torch.Tensor:
        ...
    @property
    def capacity(self) -> int:
        ...
    @property
    def positions(self) -> torch.Tensor:
        ...
    @property
    def size(self) -> int:
        ...
    @property
    def token_ids(self) -> list[int]:
        ...
class Model:
    """
    A Llama-family decoder on LibTorch.
    """
    @staticmethod
    def from_tensors(config_json: str, tensors: collections.abc.Mapping[str, torch.Tensor], dtype: torch.dtype = ..., origin: str = '<tensors>', device: str = 'cpu') -> Model:
        """
        Build from an HF config.json text and an HF-named state dict.
        """
    def forward(self, cache: KVCache, ids: torch.Tensor, positions: torch.Tensor, visibility: torch.Tensor, capture: bool = False, layers: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex] | None = None, heads: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex] | None = None, probabilities: bool = True, scores: bool = False, value_norms: bool = False, capture_dtype: str = 'float32', interventions: list = [], last_logits_only: bool = False, hooks: collections.abc.Sequence[str] | None = None, edits: list = [], hook_fns: typing.Any = None) -> dict:
        """
        One pass over T new tokens: returns {'logits', 'layers', 'attention', 'scores', 'value_norms', 'hooks'} and appends the tokens' slots to the cache. `hooks`: hook point names (hook_point_names()) to record; 'hooks' maps each to a tensor with the pass's tokens first. `edits`: interventions at hook points, dicts (kind='zero'|'set'|'add', hook, heads, slots, value); `hook_fns`: {name: fn(name, tensor) -> tensor or None}, called at that point (slow path).
        """
    def new_cache(self, initial_capacity: typing.SupportsInt | typing.SupportsIndex = 256) -> KVCache:
        ...
    @property
    def config(self) -> dict:
        """
        The model's configuration as a dict (config_from_hf_json's fields).
        """
    @property
    def context_length(self) -> int:
        """
        Positions the model was trained on (max_position_embeddings / context_length).
        """
    @property
    def device(self) -> str:
        """
        Where the weights and the KV cache live ('cpu', 'cuda:0').
        """
    @property
    def num_heads(self) -> int:
        ...
    @property
    def num_layers(self) -> int:
        ...
    @property
    def vocab_size(self) -> int:
        ...
    @property
    def weight_bytes(self) -> int:
        """
        Bytes the weights hold in memory.
        """
    @property
    def weights(self) -> str:
        """
        How the weights are held: 'quantized' (GGUF blocks) or 'float32' (dense tensors in the model's dtype).
        """
class Tokenizer:
    """
    Text <-> token ids: byte-level BPE (GPT-2 family) and SentencePiece-style BPE with byte
    fallback, loaded from an HF tokenizer.json or GGUF metadata; identical to HF tokenizers
    configured as the file declares (see docs/tokenizers.md).
    """
    @staticmethod
    def from_file(path: str) -> Tokenizer:
        """
        Load an HF tokenizer.json (tokenizer_config.json and generation_config.json next to it are read for BOS/EOS when present).
        """
    @staticmethod
    def from_gguf(path: str) -> Tokenizer:
        """
        Load from the tokenizer.ggml.* metadata of a GGUF file.
        """
    @staticmethod
    def from_json(json: str, origin: str = '<string>') -> Tokenizer:
        """
        Load from the text of a tokenizer.json.
        """
    def __len__(self) -> int:
        ...
    def __repr__(self) -> str:
        ...
    def decode(self, ids: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex], skip_special: bool = False) -> str:
        """
        Text of `ids` through the declared decoder (skip_special leaves out special tokens).
        """
    def encode(self, text: str, add_special: bool = True) -> list[int]:
        """
        Token ids of `text` (str, or bytes: ill-formed UTF-8 is replaced by U+FFFD as errors='replace' does). add_special adds BOS/EOS as the model declares.
        """
    def id_to_token(self, id: typing.SupportsInt | typing.SupportsIndex) -> str:
        """
        The token string as stored (byte alphabet for byte-level BPE). A byte that is not part of well-formed UTF-8 (some GGUF vocabularies hold such tokens) is written as the four characters \\xNN, as gguf_metadata does.
        """
    def is_special(self, id: typing.SupportsInt | typing.SupportsIndex) -> bool:
        ...
    def piece(self, id: typing.SupportsInt | typing.SupportsIndex) -> str:
        """
        One token as shown in a parallel set: leading space kept, bytes of an incomplete UTF-8 sequence as <0xNN>.
        """
    def token_to_id(self, token: str) -> int | None:
        """
        The id of a stored token string, or None.
        """
    @property
    def add_bos(self) -> bool:
        """
        Whether encode(add_special=True) starts with BOS; assign to override.
        """
    @add_bos.setter
    def add_bos(self, arg1: bool) -> None:
        ...
    @property
    def bos_id(self) -> int | None:
        ...
    @property
    def eos_ids(self) -> list[int]:
        ...
    @eos_ids.setter
    def eos_ids(self, arg1: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex]) -> None:
        ...
    @property
    def family(self) -> str:
        ...
    @property
    def origin(self) -> str:
        ...
    @property
    def vocab_size(self) -> int:
        ...
class Member:
    """
    One token of a set S_t.
    """
    is_eos: bool
    def __init__(self) -> None:
        ...
    @property
    def probability(self) -> float:
        ...
    @probability.setter
    def probability(self, arg0: typing.SupportsFloat | typing.SupportsIndex) -> None:
        ...
    @property
    def rank(self) -> int:
        ...
    @rank.setter
    def rank(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    @property
    def slot(self) -> int | None:
        ...
    @slot.setter
    def slot(self, arg0: typing.SupportsInt | typing.SupportsIndex | None) -> None:
        ...
    @property
    def token_id(self) -> int:
        ...
    @token_id.setter
    def token_id(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
class TreeStep:
    """
    A set S_t: members in rank order.
    """
    def __init__(self) -> None:
        ...
    @property
    def entropy(self) -> float:
        ...
    @entropy.setter
    def entropy(self, arg0: typing.SupportsFloat | typing.SupportsIndex) -> None:
        ...
    @property
    def members(self) -> list[Member]:
        ...
    @members.setter
    def members(self, arg0: collections.abc.Sequence[Member]) -> None:
        ...
class Tree:
    """
    The prompt plus every set: everything needed to replay a run.
    """
    @staticmethod
    def __repr__(tree: Tree) -> str:
        """
        ``repr`` of a tree: prompt length, steps and the width of each set.
        """
    @staticmethod
    def _repr_html_(tree: Tree) -> str:
        """
        The notebook view of a tree: its prompt ids, then one row per set (step, width,
            members as id:probability, EOS marked; a tree built by hand has no probabilities).
            Token ids only: a tree carries no tokenizer (a Run shows the text).
        """
    @staticmethod
    def build(prompt: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex], steps: collections.abc.Sequence[collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex]], eos_ids: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex] = []) -> Tree:
        """
        A tree built by hand from token ids (steps[t] = S_t in rank order).
        """
    def __init__(self) -> None:
        ...
    @property
    def num_steps(self) -> int:
        ...
    @property
    def prompt(self) -> list[int]:
        ...
    @prompt.setter
    def prompt(self, arg0: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex]) -> None:
        ...
    @property
    def prompt_length(self) -> int:
        ...
    @property
    def steps(self) -> list[TreeStep]:
        ...
    @steps.setter
    def steps(self, arg0: collections.abc.Sequence[TreeStep]) -> None:
        ...
class SlotRecord:
    """
    What one slot holds.
    """
    @property
    def member(self) -> int:
        ...
    @property
    def position(self) -> float:
        ...
    @property
    def step(self) -> int:
        ...
    @property
    def token_id(self) -> int:
        ...
class LayerCapture:
    @property
    def layer(self) -> int:
        ...
    @property
    def probabilities(self) -> torch.Tensor:
        ...
    @property
    def scores(self) -> torch.Tensor:
        ...
    @property
    def value_norms(self) -> torch.Tensor:
        ...
class PassCapture:
    """
    What one forward pass recorded.
    """
    @property
    def first_slot(self) -> int:
        ...
    @property
    def hooks(self) -> dict[str, torch.Tensor]:
        """
        Hook points by name, (T, ...) each.
        """
    @property
    def layers(self) -> list[LayerCapture]:
        ...
    @property
    def num_queries(self) -> int:
        ...
    @property
    def step(self) -> int:
        ...
class GenerationResult:
    def dense(self, field: str = 'probabilities') -> torch.Tensor:
        """
        [L', H', N, N] f32 lower-block view.
        """
    def value_norms(self) -> torch.Tensor:
        ...
    @property
    def distributions(self) -> torch.Tensor:
        ...
    @property
    def generate_seconds(self) -> float:
        ...
    @property
    def passes(self) -> list[PassCapture]:
        ...
    @property
    def prefill_seconds(self) -> float:
        ...
    @property
    def slots(self) -> list[SlotRecord]:
        ...
    @property
    def stop_reason(self) -> str:
        ...
    @property
    def tree(self) -> Tree:
        ...
    @property
    def visibility(self) -> torch.Tensor:
        """
        [N, N] bool: the mask each slot's query was given (filled by generate_tempo2025; None for generate()).
        """
class Layout:
    """
    A tree laid out under an encoding.
    """
    @property
    def encoding(self) -> str:
        ...
    @property
    def positions(self) -> torch.Tensor:
        ...
    @property
    def slots(self) -> list[SlotRecord]:
        ...
    @property
    def step_begin(self) -> list[int]:
        ...
    @property
    def token_ids(self) -> torch.Tensor:
        ...
    @property
    def visibility(self) -> torch.Tensor:
        ...
class ReplayResult:
    def dense(self, field: str = 'probabilities') -> torch.Tensor:
        ...
    def value_norms(self) -> torch.Tensor:
        ...
    @property
    def distributions(self) -> torch.Tensor:
        ...
    @property
    def layout(self) -> Layout:
        ...
    @property
    def logits(self) -> torch.Tensor:
        ...
    @property
    def passes(self) -> list[PassCapture]:
        ...
def causal_visibility(num_new: typing.SupportsInt | typing.SupportsIndex, num_prev: typing.SupportsInt | typing.SupportsIndex = 0) -> torch.Tensor:
    """
    (T, S_prev + T) bool: every earlier slot, causal among the new tokens.
    """
def config_from_hf_json(text: str, origin: str = '<config>') -> dict:
    """
    Parse the text of an HF config.json into a dict of the fields attnvar uses.
    """
def encode(tree: Tree, encoding: str) -> Layout:
    """
    Lay a tree out under an encoding.
    """
def generate(model: Model, prompt: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex], threshold: typing.SupportsFloat | typing.SupportsIndex = 0.1, max_steps: typing.SupportsInt | typing.SupportsIndex = 30, mode: str = 'isolated', policy: str = 'mixture', max_width: typing.SupportsInt | typing.SupportsIndex = 32, temperature: typing.SupportsFloat | typing.SupportsIndex = 1.0, sample: bool = False, seed: typing.SupportsInt | typing.SupportsIndex = 0, stop_on: str = 'any_eos', eos_ids: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex] = [], min_new_steps: typing.SupportsInt | typing.SupportsIndex = 0, keep_distributions: bool = False, capture: bool = False, layers: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex] | None = None, heads: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex] | None = None, probabilities: bool = True, scores: bool = False, value_norms: bool = False, capture_dtype: str = 'float32', hooks: collections.abc.Sequence[str] | None = None, edits: list = [], hook_fns: typing.Any = None, sink: typing.Any = None) -> GenerationResult:
    """
    Parallel generation: every member of S_t fed in one pass at position P + t. With `sink`, each pass's capture is handed to sink(PassCapture) as it is computed and the result keeps none.
    """
def generate_batch(model: Model, prompts: collections.abc.Sequence[collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex]], options: collections.abc.Sequence[dict], max_batch: typing.SupportsInt | typing.SupportsIndex = 8, capture: bool = False, layers: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex] | None = None, heads: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex] | None = None, probabilities: bool = True, scores: bool = False, value_norms: bool = False, capture_dtype: str = 'float32', hooks: collections.abc.Sequence[str] | None = None, edits: list = [], hook_fns: typing.Any = None) -> list[GenerationResult]:
    """
    Several generations at once (one pass per step for all active sequences); options[i]: generate()'s keyword arguments for prompts[i]. Each result is bit for bit generate() of that prompt alone.
    """
def generate_tempo2025(model: Model, prompt: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex], threshold: typing.SupportsFloat | typing.SupportsIndex = 0.15, max_steps: typing.SupportsInt | typing.SupportsIndex = 30, emulate_isolation_bug: bool = False, eos_ids: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex] | None = None, leaked_masks: collections.abc.Sequence[torch.Tensor] = [], capture: bool = False, layers: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex] | None = None, heads: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex] | None = None, probabilities: bool = True, scores: bool = False, value_norms: bool = False, capture_dtype: str = 'float32', hooks: collections.abc.Sequence[str] | None = None, edits: list = [], hook_fns: typing.Any = None) -> GenerationResult:
    """
    The compat preset `tempo-2025` (the prototype's bookkeeping, not the mechanism). eos_ids: None = the model config's; [] = never stop on EOS. leaked_masks: the tempo_leak_mask of every earlier isolated-mode run of the emulated process, oldest first; [] = a clean start.
    """
def generate_tempo2025_batch(model: Model, prompts: collections.abc.Sequence[collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex]], options: collections.abc.Sequence[dict], max_batch: typing.SupportsInt | typing.SupportsIndex = 8, capture: bool = False, layers: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex] | None = None, heads: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex] | None = None, probabilities: bool = True, scores: bool = False, value_norms: bool = False, capture_dtype: str = 'float32', hooks: collections.abc.Sequence[str] | None = None, edits: list = [], hook_fns: typing.Any = None) -> list[GenerationResult]:
    """
    Several compat runs at once (one pass per round for the active runs' one-token passes); options[i]: generate_tempo2025()'s keyword arguments for prompts[i] (threshold, max_steps, emulate_isolation_bug, eos_ids). Each result is bit for bit generate_tempo2025() of that prompt alone. leaked_masks are refused: leaking runs depend on the runs before them and go one after another.
    """
def gguf_dequantize(path: str, name: str) -> torch.Tensor:
    """
    One GGUF tensor dequantized to f32, in the file's row order with torch's dimension order (GGUF shape reversed), before any q/k un-permutation: what gguf.quants.dequantize returns.
    """
def gguf_metadata(path: str) -> dict:
    """
    GGUF metadata as {key: value} in file order (ints, floats, bools, strings, lists). Keys and strings that are not valid UTF-8 come back with each ill-formed byte as \\xNN.
    """
def gguf_tensor_infos(path: str) -> list:
    """
    Tensor infos in file order: name, shape (GGUF order, ne[0] first), type (ggml number), type_name, offset (absolute, bytes), nbytes. A name that is not valid UTF-8 comes back with each ill-formed byte as \\xNN.
    """
def hook_point_names(num_layers: typing.SupportsInt | typing.SupportsIndex) -> list[str]:
    """
    Every hook point name of a model with num_layers layers, in forward order (TransformerLens names: blocks.{l}.hook_resid_pre, ..., ln_final.hook_normalized).
    """
def kernel_info() -> dict:
    """
    How the engine's own kernels run here: the projection kernel picked for this CPU and how many threads attnvar's parallel loops use now (torch.get_num_threads() when the build links torch's OpenMP runtime).
    """
def load_model(path: str, dtype: torch.dtype = ..., device: str = 'cpu', weights: str = 'quantized') -> dict:
    """
    Load a .gguf file or an HF directory onto a device ('cpu', 'cuda', 'cuda:1'): {'model', 'tokenizer', 'identity', 'eos_ids'}. weights: 'quantized' keeps a GGUF file's quantized weights in their blocks (float32 on the CPU; bit for bit the float32 results), 'float32' decodes them at load.
    """
def load_weights(path: str, dtype: torch.dtype = ..., device: torch.device = ...) -> tuple[dict, dict, dict]:
    """
    Load an HF directory or a GGUF file: (config dict, {HF name: tensor}, identity dict).
    """
def next_distribution(member_logits: torch.Tensor, weights: collections.abc.Sequence[typing.SupportsFloat | typing.SupportsIndex], policy: str = 'mixture', temperature: typing.SupportsFloat | typing.SupportsIndex = 1.0) -> torch.Tensor:
    ...
def printed_set_starts(tree: Tree) -> list[int]:
    """
    Printed-sequence index of each set's first member (compat bookkeeping).
    """
def project(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """
    The engine's projection y = x wᵀ (+ b): up to 16 f32 CPU rows through gemv_rows, which reads w once for all rows; anything else through torch's linear. For tests and the benchmark's read-bandwidth probe.
    """
def replay(model: Model, tree: Tree, encoding: str = 'shared_isolated', interventions: list = [], chunk_size: typing.SupportsInt | typing.SupportsIndex = 0, policy: str = 'mixture', temperature: typing.SupportsFloat | typing.SupportsIndex = 1.0, capture: bool = False, layers: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex] | None = None, heads: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex] | None = None, probabilities: bool = True, scores: bool = False, value_norms: bool = False, capture_dtype: str = 'float32', hooks: collections.abc.Sequence[str] | None = None, edits: list = [], hook_fns: typing.Any = None, logits: bool = True) -> ReplayResult:
    """
    Teacher-force a tree under an encoding (one pass, or chunks of whole steps). logits=False skips the output projection: no logits, no distributions.
    """
def replay_batch(model: Model, trees: collections.abc.Sequence[Tree], encodings: collections.abc.Sequence[str], interventions: collections.abc.Sequence[list], edit_lists: collections.abc.Sequence[list], max_batch: typing.SupportsInt | typing.SupportsIndex = 8, policy: str = 'mixture', temperature: typing.SupportsFloat | typing.SupportsIndex = 1.0, capture: bool = False, layers: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex] | None = None, heads: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex] | None = None, probabilities: bool = True, scores: bool = False, value_norms: bool = False, capture_dtype: str = 'float32', hooks: collections.abc.Sequence[str] | None = None, hook_fns: typing.Any = None, logits: bool = True) -> list[ReplayResult]:
    """
    Several replays (one pass each), up to max_batch per forward pass; trees[i] under encodings[i] with interventions[i] and edits[i]. Each result is bit for bit replay() of that tree alone.
    """
def rope_apply(x: torch.Tensor, positions: torch.Tensor, theta: typing.SupportsFloat | typing.SupportsIndex = 10000.0, scaling: str = 'default', factor: typing.SupportsFloat | typing.SupportsIndex = 1.0, low_freq_factor: typing.SupportsFloat | typing.SupportsIndex = 1.0, high_freq_factor: typing.SupportsFloat | typing.SupportsIndex = 4.0, original_max_position_embeddings: typing.SupportsInt | typing.SupportsIndex = 8192) -> torch.Tensor:
    """
    Rotate x (..., T, head_dim) by RoPE at float logical positions (T,), HF rotate_half layout. Positions may repeat and be fractional.
    """
def rope_inv_freq(head_dim: typing.SupportsInt | typing.SupportsIndex, theta: typing.SupportsFloat | typing.SupportsIndex = 10000.0, scaling: str = 'default', factor: typing.SupportsFloat | typing.SupportsIndex = 1.0, low_freq_factor: typing.SupportsFloat | typing.SupportsIndex = 1.0, high_freq_factor: typing.SupportsFloat | typing.SupportsIndex = 4.0, original_max_position_embeddings: typing.SupportsInt | typing.SupportsIndex = 8192) -> torch.Tensor:
    """
    RoPE inverse frequencies (head_dim/2,) f32, computed as transformers does.
    """
def safetensors_read(path: str) -> dict:
    """
    All tensors of one .safetensors file, in their own dtypes.
    """
def select_set(q: torch.Tensor, threshold: typing.SupportsFloat | typing.SupportsIndex = 0.1, max_width: typing.SupportsInt | typing.SupportsIndex = 32, sample: bool = False, seed: typing.SupportsInt | typing.SupportsIndex = 0) -> list[tuple[int, float]]:
    """
    S_t from q_t: [(token_id, probability)] in rank order.
    """
def set_visibility(num_members: typing.SupportsInt | typing.SupportsIndex, num_prev: typing.SupportsInt | typing.SupportsIndex, mode: str = 'isolated') -> torch.Tensor:
    """
    (k, S_prev + k) bool for one parallel set: every earlier slot; siblings per mode (isolated | visible | causal).
    """
def tempo_bug_visibility(tree: Tree, query_slot: typing.SupportsInt | typing.SupportsIndex) -> torch.Tensor:
    ...
def tempo_leak_mask(tree: Tree) -> torch.Tensor:
    """
    [S, S] bool mask a finished isolated-mode compat run leaves behind (the stale-mask leak): causal plus holes between members of S_0 .. S_{T-2}, S = P + sum of their sizes, in printed-index space.
    """
