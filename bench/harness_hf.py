"""The HF transformers baseline: the same weights (the bundled GGUF dequantized to f32 by
transformers itself), eager attention, a DynamicCache, one forward pass per set over the new
tokens with the explicit 4-D additive mask over cache + new tokens and the same position_ids,
output_attentions=True when capture is compared.

Loading the GGUF through transformers takes ~20 s (its Python dequantizer), so the harness
does it once and keeps the resulting f32 state dict and config (minus the GGUF quantization
entry) in a cache directory keyed by the GGUF's sha256 and the transformers version; worker
processes load that with ``from_pretrained(cache_dir)``. The weights are bit-identical to
``from_pretrained(dir, gguf_file=name, dtype=float32)`` (checked when the cache is written).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

NEG_INF = float("-inf")


# ---- the model --------------------------------------------------------------------------
def load_from_gguf(gguf_path: str | os.PathLike):
    import transformers

    p = Path(gguf_path)
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(p.parent), gguf_file=p.name, dtype=torch.float32, attn_implementation="eager"
    ).eval()


def ensure_cache(gguf_path: str | os.PathLike, sha256: str, cache_root: str | os.PathLike) -> Path:
    """The directory holding the GGUF-dequantized f32 weights as safetensors (made once)."""
    import transformers
    from safetensors.torch import save_file

    target = Path(cache_root) / f"hf-{sha256[:16]}-tf{transformers.__version__}"
    if (target / "model.safetensors").exists() and (target / "config.json").exists():
        return target
    print(f"[hf] dequantizing {Path(gguf_path).name} through transformers (once) -> {target}",
          flush=True)
    model = load_from_gguf(gguf_path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    tied = bool(model.config.tie_word_embeddings)
    tensors = {k: v.contiguous() for k, v in state.items() if not (tied and k == "lm_head.weight")}
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg["dtype"] = "float32"
    (tmp / "config.json").write_text(json.dumps(cfg, indent=1))
    (tmp / "SOURCE.txt").write_text(
        f"from_pretrained({Path(gguf_path).parent}, gguf_file={Path(gguf_path).name}, "
        f"dtype=float32) with transformers {transformers.__version__}; sha256 {sha256}\n")
    again = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp), dtype=torch.float32, attn_implementation="eager")
    s2 = again.state_dict()
    bad = [k for k in state if not torch.equal(state[k], s2[k])]
    if bad:
        raise RuntimeError(f"cached HF weights differ from the GGUF load: {bad[:5]}")
    os.replace(tmp, target)
    return target


def load_cached(cache_dir: str | os.PathLike):
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(cache_dir), dtype=torch.float32, attn_implementation="eager").eval()
    return model


def weight_bytes(model) -> int:
    """Bytes of distinct parameter storage (a tied embedding counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        key = p.untyped_storage().data_ptr()
        if key in seen:
            continue
        seen.add(key)
        total += p.numel() * p.element_size()
    return total


# ---- masks ----------------------------------------------------------------------------
def set_mask(k: int, s_prev: int, mode: str = "isolated") -> torch.Tensor:
    """HF's explicit 4-D additive mask for one parallel set: (1, 1, k, s_prev + k)."""
    m = torch.zeros(1, 1, k, s_prev + k)
    if mode == "visible":
        return m
    block = torch.full((k, k), NEG_INF)
    if mode == "isolated":
        block.fill_diagonal_(0.0)
    elif mode == "causal":
        block = torch.triu(block, diagonal=1)
    else:
        raise ValueError(mode)
    m[0, 0, :, s_prev:] = block
    return m


def additive_mask(visible: torch.Tensor) -> torch.Tensor:
    """(T, S) bool visibility -> (1, 1, T, S) additive mask."""
    m = torch.zeros(visible.shape, dtype=torch.float32)
    m.masked_fill_(~visible, NEG_INF)
    return m[None, None]


# ---- selection and next-step (docs/generation.md, mirrored) ----------------------------
def select_set(q: torch.Tensor, threshold: float, max_width: int) -> list[tuple[int, float]]:
    qd = q.double()
    vals, idx = torch.sort(qd, stable=True, descending=True)
    n = int((vals >= threshold).sum())
    n = min(max(n, 1), max_width)
    return list(zip(idx[:n].tolist(), vals[:n].tolist(), strict=True))


def mixture(logits: torch.Tensor, weights: list[float], temperature: float = 1.0) -> torch.Tensor:
    w = torch.tensor(weights, dtype=torch.float64).float().to(logits.device)
    w = w / w.sum()
    return (torch.softmax(logits.float() / temperature, -1) * w[:, None]).sum(0)


def entropy(q: torch.Tensor) -> float:
    p = q.double()
    return float(-(p * torch.log(p.clamp_min(1e-300))).sum())


# ---- the generation loop ----------------------------------------------------------------
def generate(model, prompt: list[int], threshold: float, max_steps: int, eos_ids: list[int],
             capture: bool, mode: str = "isolated", max_width: int = 32) -> dict:
    """Parallel generation done the best HF way: prefill, then per step S_t by threshold,
    every non-EOS member fed in ONE pass at position P + t with the 4-D mask, mixture q.
    On a GPU, inputs go to the model's device and captured attention comes back to the host
    after each pass (as attnvar's capture does)."""
    from transformers import DynamicCache

    dev = model.device
    kept = (lambda a: a) if dev.type == "cpu" else (lambda a: tuple(x.cpu() for x in a))
    eos = set(eos_ids)
    passes = []  # (step, first_slot, attentions tuple)
    steps = []
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        P = len(prompt)
        ids = torch.tensor([prompt], device=dev)
        out = model(input_ids=ids, position_ids=torch.arange(P, device=dev)[None],
                    past_key_values=cache, use_cache=True, output_attentions=capture,
                    logits_to_keep=1)
        if capture:
            passes.append((-1, 0, kept(out.attentions)))
        q = torch.softmax(out.logits[0, -1].float(), -1)
        for t in range(max_steps):
            members = select_set(q, threshold, max_width)
            ent = entropy(q)
            fed = [(tok, p) for tok, p in members if tok not in eos]
            stop = len(fed) < len(members)  # stop_on any_eos
            steps.append({"members": [tok for tok, _ in members], "entropy": ent})
            if fed:
                k = len(fed)
                s_prev = cache.get_seq_length()
                out = model(input_ids=torch.tensor([[tok for tok, _ in fed]], device=dev),
                            position_ids=torch.full((1, k), P + t, device=dev),
                            attention_mask=set_mask(k, s_prev, mode).to(dev),
                            past_key_values=cache, use_cache=True, output_attentions=capture)
                if capture:
                    passes.append((t, s_prev, kept(out.attentions)))
                if not stop:
                    q = mixture(out.logits[0], [p for _, p in fed])
            if stop or not fed:
                break
    return {"tree": [s["members"] for s in steps], "passes": passes,
            "slots": cache.get_seq_length()}


def save_generation(result: dict, path: str | os.PathLike, prompt: list[int]) -> None:
    """What a study would keep of an HF run: the per-pass attention tensors (safetensors,
    as attnvar stores them: (H, T, S) per pass and layer) and the tree as JSON."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for i, (_step, _first, atts) in enumerate(result["passes"]):
        for layer, a in enumerate(atts):
            tensors[f"pass{i:05d}.layer{layer:03d}.attention"] = a[0].contiguous()
    if tensors:
        save_file(tensors, str(path / "capture.safetensors"))
    (path / "run.json").write_text(json.dumps({
        "prompt": prompt, "steps": result["tree"],
        "passes": [{"step": s, "first_slot": f} for s, f, _ in result["passes"]],
    }))


# ---- replay -----------------------------------------------------------------------------
def replay(model, token_ids: torch.Tensor, positions: torch.Tensor, visible: torch.Tensor,
           step_begin: list[int], prompt_length: int, capture: bool = True) -> dict:
    """One teacher-forced pass over a laid-out tree with the 4-D mask and the same (possibly
    fractional) positions, output_attentions; then q_t per step (mixture, equal weights)."""
    with torch.inference_mode():
        out = model(input_ids=token_ids[None], position_ids=positions.float()[None],
                    attention_mask=additive_mask(visible), use_cache=False,
                    output_attentions=capture)
        logits = out.logits[0]
        dists = [torch.softmax(logits[prompt_length - 1].float(), -1)]
        for t in range(len(step_begin) - 2):  # q_1..q_{n-1}, as attnvar's replay
            b, e = step_begin[t], step_begin[t + 1]
            if e == b:
                break
            dists.append(mixture(logits[b:e], [1.0] * (e - b)))
        return {"logits": logits, "attentions": out.attentions if capture else None,
                "distributions": torch.stack(dists)}
