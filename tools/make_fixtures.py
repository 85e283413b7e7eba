#!/usr/bin/env python3
"""Oracle fixtures for kiln: tiny random DeepSeek-V4 models built with transformers, with
reference logits (full forward), an MTP-block reference, and a greedy continuation.

Run (transformers 5.17, PyTorch; CPU fp32 by default, deterministic, fixed seeds):

    python3 tools/make_fixtures.py OUT_DIR [--device cpu|cuda] [--only NAME] [--keep-hf-saved]

and copy OUT_DIR/<name>/ to tests/data/fixtures/<name>/. The output is byte-identical from run
to run (checked with md5sum on the GPU machine's CPU). The script exits non-zero if any check in
meta.json "checks" exceeds 1e-5 relative.

Fixtures (SPECS below; "HCA16" = heavily compressed, rate 16; CSA rate is always 4)
  tiny_a: T=110, V=256, H=64, layers [HCA16, CSA, SWA, CSA] + MTP, 1 hash layer, 4 heads x
          head_dim 64 (rope 16), q_lora 32, o_groups 2 x o_lora 16, window 8, 4 experts top-2
          (I=32), index 16 heads x 32, index_topk 4, rope_theta 1e4, compress_rope_theta 1.6e5,
          YaRN factor 16 / original 65536 / beta 32,1, route scale 1.5, swiglu_limit 10,
          sinkhorn 20.
  tiny_b: T=123, V=384, H=80, layers [SWA, CSA, HCA8, CSA, HCA8] + MTP, 2 hash layers, 8 heads x
          head_dim 32 (rope 8), q_lora 48, o_groups 4 x o_lora 24, window 16, 8 experts top-3
          (I=16), index 32 heads x 16, index_topk 6, rope_theta 5e4, compress_rope_theta 4e4,
          YaRN factor 4 / original 64 / beta 32,1, route scale 2.5, swiglu_limit 1.5 (the clamp
          is active: ~8% of gate, ~16% of up pre-activations), sinkhorn 12.
  T is not a multiple of any compress rate, so the prompt ends inside open windows.
  max_position_embeddings = factor * original_max_position_embeddings in both forms: transformers'
  YaRN uses max_position_embeddings / original_max_position_embeddings as the factor whenever
  original_max_position_embeddings is given (DeepSeek's model.py uses rope_scaling.factor); the
  script checks transformers' inv_freq tables against DeepSeek's formula.

Fixture format (one directory per fixture, tests/data/fixtures/<name>/)
=========================================================================
T = prompt length, V = vocab_size, H = hidden_size, n = hc_mult (4), L = num_hidden_layers,
E = n_routed_experts, I = moe_intermediate_size. All .npy files are NumPy format 1.0,
little-endian, C order.

tokens.npy        int64   [T]        prompt token ids (uniform random in [0, V), fixed seed).
logits.npy        float32 [T, V]     transformers' full forward (no cache) of the prompt, fp32,
                                     logits at every position.
streams.npy       float32 [T, n, H]  the main model's last-layer residual streams BEFORE
                                     hc_head (input of `model.hc_head`), i.e. the MTP input.
mtp_logits.npy    float32 [T-1, V]   MTP block reference (see "MTP reference" below): row i is
                                     the draft logits from streams[i] and token tokens[i+1],
                                     computed at position i.
greedy.npy        int64   [32]       greedy continuation of the full T-token prompt with
                                     transformers' cached decode: argmax of the logits, ties to
                                     the lowest id; greedy[0] = argmax(logits[T-1]).
greedy_logits.npy float32 [32, V]    the logits each greedy token was chosen from (row k = logits
                                     at position T-1+k).
meta.json                            config summary, seeds, library versions, every agreement
                                     check that was run with its measured max relative error
                                     (max|a-b| / max|b| over the whole array), min top-k gaps.

hf/config.json          the transformers-form config exactly as `save_pretrained` writes it
                        (layer_types, mlp_layer_types, compress_rates, nested rope_parameters
                        {main, compress}, partial_rotary_factor, dtype bfloat16, ...).
hf/model.safetensors    transformers' IN-MEMORY module names (`model.state_dict()` keys), all
                        BF16 except `...mlp.gate.tid2eid` (I64 [V, top_k]):
      model.embed_tokens.weight [V,H], lm_head.weight [V,H], model.norm.weight [H],
      model.hc_head.hc_fn [n, nH], model.hc_head.hc_base [n], model.hc_head.hc_scale [1],
      model.layers.N.input_layernorm.weight, .post_attention_layernorm.weight,
      model.layers.N.attn_hc.{fn [(2+n)n, nH], base [(2+n)n], scale [3]}, .ffn_hc.{fn,base,scale},
      model.layers.N.self_attn.{q_a_proj, q_a_norm, q_b_proj, kv_proj, kv_norm, o_a_proj,
        o_b_proj}.weight, model.layers.N.self_attn.sinks [heads],
      CSA/HCA: model.layers.N.self_attn.compressor.{kv_proj,gate_proj,kv_norm}.weight,
        .compressor.position_bias [rate, c*head_dim] (c = 2 for CSA, 1 for HCA),
      CSA: model.layers.N.self_attn.compressor.indexer.{kv_proj,gate_proj,kv_norm,q_b_proj}.weight,
        .indexer.position_bias [4, 2*index_head_dim], .indexer.scorer.weights_proj.weight,
      model.layers.N.mlp.gate.weight [E,H]; score layers: mlp.gate.e_score_correction_bias [E];
        hash layers: mlp.gate.tid2eid (I64 [V, top_k], distinct ids per row),
      model.layers.N.mlp.experts.gate_up_proj [E, 2I, H] (rows 0..I-1 = gate (w1), I..2I-1 = up
        (w3)), model.layers.N.mlp.experts.down_proj [E, H, I],
      model.layers.N.mlp.shared_experts.{gate_proj,up_proj,down_proj}.weight.
    The MTP block is stored in the same file as model.layers.{L}.*: its decoder-layer part uses
    the same names as a `sliding_attention` + `moe` layer (input_layernorm, attn_hc, self_attn.*
    without compressor, mlp.* with e_score_correction_bias, ...), plus
      model.layers.{L}.e_proj.weight [H,H], .h_proj.weight [H,H], .enorm.weight [H],
      .hnorm.weight [H], .norm.weight [H], .hc_head.hc_fn [n,nH], .hc_head.hc_base [n],
      .hc_head.hc_scale [1].
    (transformers itself ignores model.layers.{L}.* on load: it has no MTP.)
hf_saved/ (only with --keep-hf-saved; not in the repo, for size) what transformers' `save_pretrained` writes for the same bf16 model
                        (its reverse-converted naming: model.layers.N.attn.wq_a.weight,
                        attn.norm.weight for kv_norm, head.weight, ffn.experts.E.w1.weight, ...;
                        no MTP). Always written to a temporary place and reloaded with
                        from_pretrained to check it reproduces logits.npy; its tensors are also
                        compared with native/ (transformers' own name conversion vs ours).

native/config.json      DeepSeek's official config form: compress_ratios (L+1 entries, last = 0
                        for the MTP; 4 = CSA, other non-zero = HCA with that rate, 0 = sliding
                        only), num_hash_layers, qk_rope_head_dim, rope_scaling {type: yarn,
                        factor, original_max_position_embeddings, beta_fast, beta_slow},
                        rope_theta, compress_rope_theta, index_*, o_groups, o_lora_rank,
                        sliding_window, num_nextn_predict_layers = 1, torch_dtype bfloat16, ...
native/model-00001-of-00002.safetensors   main model, DeepSeek native names:
      embed.weight, head.weight, norm.weight (BF16), hc_head_fn, hc_head_base, hc_head_scale (F32),
      layers.N.attn_norm.weight, layers.N.ffn_norm.weight (BF16),
      layers.N.hc_attn_{fn,base,scale}, layers.N.hc_ffn_{fn,base,scale} (F32),
      layers.N.attn.{wq_a,q_norm,wq_b,wkv,kv_norm,wo_a,wo_b}.weight (BF16), layers.N.attn.attn_sink (F32),
      layers.N.attn.compressor.{wkv,wgate,norm}.weight (BF16), layers.N.attn.compressor.ape (F32),
      layers.N.attn.indexer.{wq_b,weights_proj}.weight (BF16),
      layers.N.attn.indexer.compressor.{wkv,wgate,norm}.weight (BF16), .indexer.compressor.ape (F32),
      layers.N.ffn.gate.weight (BF16); layers.N.ffn.gate.bias (F32, score layers) or
      layers.N.ffn.gate.tid2eid (I64 [V, top_k], hash layers = the first num_hash_layers),
      layers.N.ffn.experts.E.{w1,w2,w3}.weight (BF16; w1 = gate [I,H], w3 = up [I,H], w2 = down [H,I]),
      layers.N.ffn.shared_experts.{w1,w2,w3}.weight (BF16).
native/model-00002-of-00002.safetensors   the MTP block as mtp.0.* with the same per-layer
      names (no compressor/indexer/tid2eid; ffn.gate.bias present) plus mtp.0.e_proj.weight,
      mtp.0.h_proj.weight, mtp.0.enorm.weight, mtp.0.hnorm.weight, mtp.0.norm.weight (BF16),
      mtp.0.hc_head_fn, mtp.0.hc_head_base, mtp.0.hc_head_scale (F32).
native/model.safetensors.index.json       {"metadata": {"total_size": bytes}, "weight_map": {name: file}}.
All float values in every file are the same numbers: every parameter was rounded to bf16 once and
the reference was computed in fp32 from the rounded values (F32 tensors hold bf16-exact values).

Weights
=======
transformers zero/one-initialises many parameters; here EVERY parameter is drawn at random
(torch.Generator, fixed seed, parameters visited in sorted-name order): linears N(0, 1/fan_in),
embedding N(0,1), lm_head N(0, 4/H), RMSNorm weights 1 + N(0, 0.25^2), mHC fn N(0, 1/(nH)),
mHC base N(0, 0.5^2), mHC scale U(0.5, 1.5), attention sinks N(0,1), compressor/indexer
position_bias N(0, 0.5^2), e_score_correction_bias N(0, 0.1^2), tid2eid = top_k distinct random
experts per token. Then every float tensor is rounded to bf16 and back.

MTP reference (not in transformers)
===================================
Written from DeepSeek's inference/model.py (vendored byte-identical in AI-Hypercomputer/maxtext,
tests/utils/deepseek4_reference/model.py): `MTPBlock.forward`, `Block.forward`,
`ParallelHead.forward/hc_head`, `Transformer.__init__` (mtp[i].embed = self.embed,
mtp[i].head = self.head). For the sequence of T-1 inputs i = 0..T-2 at positions 0..T-2:
    e  = enorm(embed(tokens[i+1]))                      # MTPBlock.forward: e = self.enorm(self.embed(input_ids))
    h  = hnorm(streams[i])                              # RMSNorm over H, per stream ([T-1, n, H])
    x0 = h_proj(h) + e_proj(e)[:, None, :]              # x = e_proj(e).unsqueeze(2) + h_proj(x)
    x1 = Block(x0)                                      # super().forward(x, start_pos, input_ids)
    logits = head(norm(hc_head(x1)))                    # self.head(x, hc_head_fn, hc_head_scale, hc_head_base, self.norm)
Block = transformers' own DeepseekV4DecoderLayer built from a copy of the config with one layer,
layer_types=["sliding_attention"] (the MTP's compress ratio is compress_ratios[L] = 0: sliding
window only, rope base rope_theta without YaRN) and mlp_layer_types=["moe"] (Gate with bias:
layer_id = L >= n_hash_layers, so score routing with e_score_correction_bias), run causally with
the sliding-window mask over the T-1 inputs (no cache). hc_head = transformers'
DeepseekV4HyperHead (same math as ParallelHead.hc_head), norm/enorm/hnorm = DeepseekV4RMSNorm,
e_proj/h_proj = bias-free linears. embed and head are the main model's (shared, as in
Transformer.__init__). The embedding row is NOT zeroed at position 0 (vLLM does; DeepSeek's
model.py does not). The reference computes logits for every position (model.py: last only).
The same MTP block fed one input at a time through a DynamicCache is checked against the full run.
"""
import argparse
import copy
import json
import math
import os
import shutil
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import transformers
from safetensors.torch import save_file
from transformers import DeepseekV4Config, DeepseekV4ForCausalLM
from transformers.cache_utils import DynamicCache
from transformers.models.deepseek_v4 import modeling_deepseek_v4 as mdv4

TOL = 1e-5
N_GREEDY = 32

# --------------------------------------------------------------------------------------------
# Fixture specs. Layer kinds: "swa" (sliding only), "csa" (ratio 4 + indexer), "hca".
# --------------------------------------------------------------------------------------------
SPECS = [
    dict(
        name="tiny_a", seed=20261122, T=110,
        vocab_size=256, hidden_size=64, num_attention_heads=4, head_dim=64, qk_rope_head_dim=16,
        q_lora_rank=32, o_lora_rank=16, o_groups=2, sliding_window=8,
        layers=["hca", "csa", "swa", "csa"], num_hash_layers=1, hca_rate=16,
        n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
        index_n_heads=16, index_head_dim=32, index_topk=4,
        rope_theta=10000.0, compress_rope_theta=160000.0,
        yarn=dict(factor=16.0, original_max_position_embeddings=65536, beta_fast=32, beta_slow=1),
        routed_scaling_factor=1.5, swiglu_limit=10.0, hc_sinkhorn_iters=20,
    ),
    dict(
        name="tiny_b", seed=31415926, T=123,
        vocab_size=384, hidden_size=80, num_attention_heads=8, head_dim=32, qk_rope_head_dim=8,
        q_lora_rank=48, o_lora_rank=24, o_groups=4, sliding_window=16,
        layers=["swa", "csa", "hca", "csa", "hca"], num_hash_layers=2, hca_rate=8,
        n_routed_experts=8, num_experts_per_tok=3, moe_intermediate_size=16,
        index_n_heads=32, index_head_dim=16, index_topk=6,
        rope_theta=50000.0, compress_rope_theta=40000.0,
        yarn=dict(factor=4.0, original_max_position_embeddings=64, beta_fast=32, beta_slow=1),
        routed_scaling_factor=2.5, swiglu_limit=1.5, hc_sinkhorn_iters=12,
    ),
]

HF_LAYER_TYPE = {"swa": "sliding_attention", "csa": "compressed_sparse_attention",
                 "hca": "heavily_compressed_attention"}


def hf_config(spec, mtp=False):
    """transformers-form config. max_position_embeddings = factor * original_max_position_embeddings
    because transformers' YaRN replaces `factor` by max_position_embeddings / original_max_... when
    the latter is given (DeepSeek's model.py uses rope_factor directly): this keeps both equal."""
    y = spec["yarn"]
    layers = ["swa"] if mtp else spec["layers"]
    n = len(layers)
    mlp = ["moe"] if mtp else (["hash_moe"] * spec["num_hash_layers"] + ["moe"] * (n - spec["num_hash_layers"]))
    cfg = DeepseekV4Config(
        vocab_size=spec["vocab_size"], hidden_size=spec["hidden_size"], num_hidden_layers=n,
        num_attention_heads=spec["num_attention_heads"], num_key_value_heads=1, head_dim=spec["head_dim"],
        partial_rotary_factor=spec["qk_rope_head_dim"] / spec["head_dim"], q_lora_rank=spec["q_lora_rank"],
        o_lora_rank=spec["o_lora_rank"], o_groups=spec["o_groups"], sliding_window=spec["sliding_window"],
        n_routed_experts=spec["n_routed_experts"], num_experts_per_tok=spec["num_experts_per_tok"],
        n_shared_experts=1, moe_intermediate_size=spec["moe_intermediate_size"],
        index_n_heads=spec["index_n_heads"], index_head_dim=spec["index_head_dim"], index_topk=spec["index_topk"],
        hc_mult=4, hc_sinkhorn_iters=spec["hc_sinkhorn_iters"], hc_eps=1e-6, rms_norm_eps=1e-6,
        num_nextn_predict_layers=1, routed_scaling_factor=spec["routed_scaling_factor"],
        swiglu_limit=spec["swiglu_limit"], scoring_func="sqrtsoftplus", norm_topk_prob=True,
        rope_theta=spec["rope_theta"], compress_rope_theta=spec["compress_rope_theta"],
        max_position_embeddings=int(y["factor"] * y["original_max_position_embeddings"]),
        layer_types=[HF_LAYER_TYPE[k] for k in layers], mlp_layer_types=mlp,
        compress_rates={"compressed_sparse_attention": 4, "heavily_compressed_attention": spec["hca_rate"]},
        rope_parameters={"rope_type": "yarn", "factor": float(y["factor"]),
                         "original_max_position_embeddings": int(y["original_max_position_embeddings"]),
                         "beta_fast": float(y["beta_fast"]), "beta_slow": float(y["beta_slow"])},
        tie_word_embeddings=False, bos_token_id=0, eos_token_id=1,
    )
    for attr, val in (("_attn_implementation", "eager"), ("_experts_implementation", "eager")):
        try:
            setattr(cfg, attr, val)
        except Exception:  # noqa: BLE001 - older/newer config classes
            pass
    return cfg


def native_config(spec):
    y = spec["yarn"]
    ratio = {"swa": 0, "csa": 4, "hca": spec["hca_rate"]}
    return {
        "architectures": ["DeepseekV4ForCausalLM"],
        "model_type": "deepseek_v4",
        "vocab_size": spec["vocab_size"],
        "hidden_size": spec["hidden_size"],
        "num_hidden_layers": len(spec["layers"]),
        "num_nextn_predict_layers": 1,
        "num_attention_heads": spec["num_attention_heads"],
        "num_key_value_heads": 1,
        "head_dim": spec["head_dim"],
        "qk_rope_head_dim": spec["qk_rope_head_dim"],
        "q_lora_rank": spec["q_lora_rank"],
        "o_lora_rank": spec["o_lora_rank"],
        "o_groups": spec["o_groups"],
        "sliding_window": spec["sliding_window"],
        "compress_ratios": [ratio[k] for k in spec["layers"]] + [0],
        "compress_rope_theta": spec["compress_rope_theta"],
        "rope_theta": spec["rope_theta"],
        "rope_scaling": {"type": "yarn", "factor": y["factor"],
                         "original_max_position_embeddings": y["original_max_position_embeddings"],
                         "beta_fast": y["beta_fast"], "beta_slow": y["beta_slow"]},
        "max_position_embeddings": int(y["factor"] * y["original_max_position_embeddings"]),
        "index_n_heads": spec["index_n_heads"],
        "index_head_dim": spec["index_head_dim"],
        "index_topk": spec["index_topk"],
        "n_routed_experts": spec["n_routed_experts"],
        "num_experts_per_tok": spec["num_experts_per_tok"],
        "n_shared_experts": 1,
        "moe_intermediate_size": spec["moe_intermediate_size"],
        "scoring_func": "sqrtsoftplus",
        "topk_method": "noaux_tc",
        "norm_topk_prob": True,
        "routed_scaling_factor": spec["routed_scaling_factor"],
        "num_hash_layers": spec["num_hash_layers"],
        "swiglu_limit": spec["swiglu_limit"],
        "hidden_act": "silu",
        "hc_mult": 4,
        "hc_sinkhorn_iters": spec["hc_sinkhorn_iters"],
        "hc_eps": 1e-6,
        "rms_norm_eps": 1e-6,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }


# --------------------------------------------------------------------------------------------
# Randomisation
# --------------------------------------------------------------------------------------------
def randomise_(module, gen, hidden, num_experts_per_tok, n_experts):
    """Draw every persistent float tensor and tid2eid of `module` (sorted-name order), then round
    every float tensor to bf16 and back."""
    sd = module.state_dict(keep_vars=True)
    for name in sorted(sd):
        t = sd[name]
        leaf = name.rsplit(".", 1)[-1]
        with torch.no_grad():
            if leaf == "tid2eid":
                rows = [torch.randperm(n_experts, generator=gen)[:num_experts_per_tok] for _ in range(t.shape[0])]
                t.copy_(torch.stack(rows).to(t.dtype))
                continue
            if not t.dtype.is_floating_point:
                raise RuntimeError(f"unexpected non-float tensor {name} {t.dtype}")

            def normal(std, mean=0.0):
                return torch.randn(t.shape, generator=gen) * std + mean

            if name.endswith("embed_tokens.weight"):
                v = normal(1.0)
            elif name == "lm_head.weight":
                v = normal(2.0 / math.sqrt(hidden))
            elif leaf == "weight" and t.dim() == 1:  # every RMSNorm weight
                v = normal(0.25, 1.0)
            elif leaf in ("fn", "hc_fn"):
                v = normal(1.0 / math.sqrt(t.shape[1]))
            elif leaf in ("base", "hc_base"):
                v = normal(0.5)
            elif leaf in ("scale", "hc_scale"):
                v = torch.rand(t.shape, generator=gen) + 0.5
            elif leaf == "sinks":
                v = normal(1.0)
            elif leaf == "position_bias":
                v = normal(0.5)
            elif leaf == "e_score_correction_bias":
                v = normal(0.1)
            elif leaf == "gate_up_proj":  # [E, 2I, H]
                v = normal(1.0 / math.sqrt(t.shape[2]))
            elif leaf == "down_proj" and t.dim() == 3:  # [E, H, I]
                v = normal(1.0 / math.sqrt(t.shape[2]))
            elif leaf == "weight" and t.dim() == 2:  # nn.Linear [out, in]
                v = normal(1.0 / math.sqrt(t.shape[1]))
            else:
                raise RuntimeError(f"no randomisation rule for {name} {tuple(t.shape)}")
            t.copy_(v.to(torch.bfloat16).to(t.dtype))


def is_bf16_exact(t):
    return torch.equal(t, t.to(torch.bfloat16).to(t.dtype))


# --------------------------------------------------------------------------------------------
# MTP block (see module docstring)
# --------------------------------------------------------------------------------------------
class MTPReference(nn.Module):
    def __init__(self, mcfg):
        super().__init__()
        H = mcfg.hidden_size
        self.layer = mdv4.DeepseekV4DecoderLayer(mcfg, 0)
        self.e_proj = nn.Linear(H, H, bias=False)
        self.h_proj = nn.Linear(H, H, bias=False)
        self.enorm = mdv4.DeepseekV4RMSNorm(H, eps=mcfg.rms_norm_eps)
        self.hnorm = mdv4.DeepseekV4RMSNorm(H, eps=mcfg.rms_norm_eps)
        self.norm = mdv4.DeepseekV4RMSNorm(H, eps=mcfg.rms_norm_eps)
        self.hc_head = mdv4.DeepseekV4HyperHead(mcfg)
        self.rotary = mdv4.DeepseekV4RotaryEmbedding(mcfg)
        self.window = mcfg.sliding_window

    def forward(self, main, streams, next_ids, position_ids, cache=None):
        """streams [1,S,n,H], next_ids [1,S], position_ids [1,S]; cache None = causal full run."""
        e = self.enorm(main.model.embed_tokens(next_ids))
        h = self.hnorm(streams)
        x = self.h_proj(h) + self.e_proj(e).unsqueeze(2)
        pe = {k: self.rotary(e, position_ids=position_ids, layer_type=k) for k in ("main", "compress")}
        S = next_ids.shape[1]
        mask = None
        if cache is None and S > 1:
            q = position_ids[0].view(-1, 1)
            k = position_ids[0].view(1, -1)
            allowed = (k <= q) & (q - k < self.window)
            mask = torch.zeros(S, S, dtype=x.dtype, device=x.device)
            mask = mask.masked_fill(~allowed, torch.finfo(x.dtype).min)[None, None]
        elif cache is not None and S != 1:
            raise ValueError("cached MTP run is one token at a time")
        x = self.layer(x, position_embeddings=pe, position_ids=position_ids, attention_mask=mask,
                       input_ids=next_ids, past_key_values=cache)
        return main.lm_head(self.norm(self.hc_head(x)))


# --------------------------------------------------------------------------------------------
# Naming
# --------------------------------------------------------------------------------------------
LAYER_RENAME = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "attn_hc.fn": "hc_attn_fn", "attn_hc.base": "hc_attn_base", "attn_hc.scale": "hc_attn_scale",
    "ffn_hc.fn": "hc_ffn_fn", "ffn_hc.base": "hc_ffn_base", "ffn_hc.scale": "hc_ffn_scale",
    "self_attn.q_a_proj.weight": "attn.wq_a.weight",
    "self_attn.q_a_norm.weight": "attn.q_norm.weight",
    "self_attn.q_b_proj.weight": "attn.wq_b.weight",
    "self_attn.kv_proj.weight": "attn.wkv.weight",
    "self_attn.kv_norm.weight": "attn.kv_norm.weight",
    "self_attn.o_a_proj.weight": "attn.wo_a.weight",
    "self_attn.o_b_proj.weight": "attn.wo_b.weight",
    "self_attn.sinks": "attn.attn_sink",
    "self_attn.compressor.kv_proj.weight": "attn.compressor.wkv.weight",
    "self_attn.compressor.gate_proj.weight": "attn.compressor.wgate.weight",
    "self_attn.compressor.position_bias": "attn.compressor.ape",
    "self_attn.compressor.kv_norm.weight": "attn.compressor.norm.weight",
    "self_attn.compressor.indexer.kv_proj.weight": "attn.indexer.compressor.wkv.weight",
    "self_attn.compressor.indexer.gate_proj.weight": "attn.indexer.compressor.wgate.weight",
    "self_attn.compressor.indexer.position_bias": "attn.indexer.compressor.ape",
    "self_attn.compressor.indexer.kv_norm.weight": "attn.indexer.compressor.norm.weight",
    "self_attn.compressor.indexer.q_b_proj.weight": "attn.indexer.wq_b.weight",
    "self_attn.compressor.indexer.scorer.weights_proj.weight": "attn.indexer.weights_proj.weight",
    "mlp.gate.weight": "ffn.gate.weight",
    "mlp.gate.e_score_correction_bias": "ffn.gate.bias",
    "mlp.gate.tid2eid": "ffn.gate.tid2eid",
    "mlp.shared_experts.gate_proj.weight": "ffn.shared_experts.w1.weight",
    "mlp.shared_experts.up_proj.weight": "ffn.shared_experts.w3.weight",
    "mlp.shared_experts.down_proj.weight": "ffn.shared_experts.w2.weight",
}
MTP_EXTRA_RENAME = {
    "e_proj.weight": "e_proj.weight", "h_proj.weight": "h_proj.weight",
    "enorm.weight": "enorm.weight", "hnorm.weight": "hnorm.weight", "norm.weight": "norm.weight",
    "hc_head.hc_fn": "hc_head_fn", "hc_head.hc_base": "hc_head_base", "hc_head.hc_scale": "hc_head_scale",
}
TOP_RENAME = {
    "model.embed_tokens.weight": "embed.weight", "lm_head.weight": "head.weight",
    "model.norm.weight": "norm.weight", "model.hc_head.hc_fn": "hc_head_fn",
    "model.hc_head.hc_base": "hc_head_base", "model.hc_head.hc_scale": "hc_head_scale",
}


def native_layer(prefix, layer_sd, inter):
    out = {}
    for k, v in layer_sd.items():
        if k == "mlp.experts.gate_up_proj":
            for e in range(v.shape[0]):
                out[f"{prefix}ffn.experts.{e}.w1.weight"] = v[e, :inter]
                out[f"{prefix}ffn.experts.{e}.w3.weight"] = v[e, inter:]
        elif k == "mlp.experts.down_proj":
            for e in range(v.shape[0]):
                out[f"{prefix}ffn.experts.{e}.w2.weight"] = v[e]
        elif k in LAYER_RENAME:
            out[prefix + LAYER_RENAME[k]] = v
        else:
            raise RuntimeError(f"no native name for layer tensor {k}")
    return out


def native_dtype(name, t):
    if not t.dtype.is_floating_point:
        return torch.int64
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ("ape", "attn_sink") or name.endswith("gate.bias") or leaf.startswith("hc_"):
        return torch.float32
    return torch.bfloat16


def hf_dtype(t):
    return torch.bfloat16 if t.dtype.is_floating_point else torch.int64


def save_st(tensors, path):
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, path,
              metadata={"format": "pt"})
    return os.path.getsize(path)


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------
def rel(a, b):
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).abs().max() / b.abs().max())


def deepseek_inv_freq(dim, base, factor, L0, beta_fast, beta_slow):
    """DeepSeek's precompute_freqs_cis frequencies (model.py), written out independently."""
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    if L0 > 0:
        def corr(n):
            return dim * math.log(L0 / (n * 2 * math.pi)) / (2 * math.log(base))
        low = max(math.floor(corr(beta_fast)), 0)
        high = min(math.ceil(corr(beta_slow)), dim - 1)
        if low == high:
            high += 0.001
        ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
        freqs = freqs / factor * ramp + freqs * (1 - ramp)
    return freqs


def topk_gap(scores, k):
    """min over rows of (k-th largest - (k+1)-th largest) / max|row| over finite entries; rows
    with <= k finite entries are skipped. Returns (min_gap, rows_considered)."""
    best, rows = float("inf"), 0
    for row in scores.reshape(-1, scores.shape[-1]):
        fin = row[torch.isfinite(row)]
        if fin.numel() <= k:
            continue
        rows += 1
        s = fin.double().sort(descending=True).values
        best = min(best, float((s[k - 1] - s[k]) / s.abs().max().clamp_min(1e-30)))
    return best, rows


class Probes:
    """Forward hooks recording indexer scores and router scores (full forward only)."""

    def __init__(self):
        self.on = False
        self.indexer = []   # (layer, scores [S, Tc] with invisible = -inf)
        self.router = []    # scores + bias [S, E]
        self.clamp = []     # shared expert: fraction of gate > limit, of |up| > limit

    def attach(self, model_or_layer, topk_experts):
        for mod in model_or_layer.modules():
            if isinstance(mod, mdv4.DeepseekV4Indexer):
                mod.register_forward_hook(self._indexer_hook(mod))
            if isinstance(mod, mdv4.DeepseekV4TopKRouter):
                mod.register_forward_hook(self._router_hook(mod))
            if isinstance(mod, mdv4.DeepseekV4MLP):
                mod.register_forward_hook(self._clamp_hook(mod))

    def _clamp_hook(self, mod):
        probes = self

        def hook(m, args, out):
            if probes.on:
                g, u = m.gate_proj(args[0]), m.up_proj(args[0])
                probes.clamp.append((float((g > m.limit).float().mean()), float((u.abs() > m.limit).float().mean())))
        return hook

    def _indexer_hook(self, mod):
        probes = self

        def scorer_hook(m, args, out):
            if probes.on:
                probes._last_scores = out.detach()[0]
        mod.scorer.register_forward_hook(scorer_hook)

        def idx_hook(m, args, out):
            if probes.on:
                position_ids = args[2]
                sc = probes._last_scores.clone()
                thr = (position_ids[0] + 1) // m.compress_rate
                ent = torch.arange(sc.shape[-1], device=sc.device)
                sc[ent.view(1, -1) >= thr.view(-1, 1)] = float("-inf")
                probes.indexer.append(sc.cpu())
        return idx_hook

    def _router_hook(self, mod):
        probes = self

        def hook(m, args, out):
            if probes.on:
                logits = out[0].detach()
                s = m.score_fn(logits) + m.e_score_correction_bias
                probes.router.append(s.cpu())
        return hook


def argmax_low(row):
    m = row.max()
    return int(torch.nonzero(row == m)[0, 0])


# --------------------------------------------------------------------------------------------
def build_fixture(spec, out_root, device, keep_hf_saved):
    name = spec["name"]
    print(f"==== {name}", flush=True)
    out = os.path.join(out_root, name)
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)
    torch.manual_seed(spec["seed"])
    gen = torch.Generator().manual_seed(spec["seed"])

    cfg = hf_config(spec)
    model = DeepseekV4ForCausalLM(cfg).float().eval()
    try:
        model.set_experts_implementation("eager")
    except Exception as ex:  # noqa: BLE001
        print("set_experts_implementation:", ex)
    H, V, L, T = cfg.hidden_size, cfg.vocab_size, cfg.num_hidden_layers, spec["T"]
    I, E, K = cfg.moe_intermediate_size, cfg.n_routed_experts, cfg.num_experts_per_tok
    randomise_(model, gen, H, K, E)

    mcfg = hf_config(spec, mtp=True)
    mtp = MTPReference(mcfg).float().eval()
    randomise_(mtp, gen, H, K, E)
    tokens = torch.randint(0, V, (T,), generator=gen)

    # every float in the state dicts is bf16-exact; tid2eid rows distinct and in range
    for mod in (model, mtp):
        for k, v in mod.state_dict().items():
            if v.dtype.is_floating_point:
                assert is_bf16_exact(v), k
            else:
                assert v.min() >= 0 and v.max() < E and all(len(set(r.tolist())) == K for r in v), k

    model.to(device)
    mtp.to(device)
    ids = tokens.view(1, T).to(device)
    meta = {"name": name, "T": T, "seed": spec["seed"], "transformers": transformers.__version__,
            "torch": torch.__version__, "device": device, "dtype": "float32", "tolerance_rel": TOL,
            "spec": spec, "checks": {}}
    checks = meta["checks"]
    failures = []

    def check(key, value, tol=TOL):
        checks[key] = value
        flag = "ok" if value <= tol else "FAIL"
        print(f"  {key}: {value:.3e} {flag}", flush=True)
        if value > tol:
            failures.append(f"{name}: {key} = {value:.3e} > {tol:.1e}")

    # rope tables vs DeepSeek's formula
    rot = model.model.rotary_emb
    r = spec["qk_rope_head_dim"]
    y = spec["yarn"]
    want_c = deepseek_inv_freq(r, spec["compress_rope_theta"], y["factor"], y["original_max_position_embeddings"],
                               y["beta_fast"], y["beta_slow"])
    want_m = deepseek_inv_freq(r, spec["rope_theta"], 1.0, 0, 32, 1)
    check("rope_compress_inv_freq_vs_deepseek", rel(rot.compress_inv_freq.cpu(), want_c))
    check("rope_main_inv_freq_vs_deepseek", rel(rot.main_inv_freq.cpu(), want_m))
    assert float(rot.compress_attention_scaling) == 1.0 and float(rot.main_attention_scaling) == 1.0
    meta["rope_compress_inv_freq"] = [float(x) for x in want_c]

    probes = Probes()
    probes.attach(model, K)
    probes.attach(mtp, K)

    captured = {}

    def hc_head_pre(m, args):
        captured["streams"] = args[0].detach().clone()
    hook = model.model.hc_head.register_forward_pre_hook(hc_head_pre)

    with torch.no_grad():
        # 1. full forward, no cache
        probes.on = True
        full = model(input_ids=ids, use_cache=False).logits[0].float().cpu()
        probes.on = False
        streams = captured["streams"]  # [1, T, n, H]
        assert streams.shape == (1, T, cfg.hc_mult, H)

        # cache layer classes
        cache = DynamicCache(config=model.config)
        meta["cache_layers"] = [type(l).__name__ for l in cache.layers]
        print("  cache layers:", meta["cache_layers"])

        # 2. incremental decode, one token at a time
        cache, rows = None, []
        for t in range(T):
            o = model(input_ids=ids[:, t:t + 1], past_key_values=cache, use_cache=True)
            cache = o.past_key_values
            rows.append(o.logits[0, -1].float().cpu())
        check("incremental_vs_full", rel(torch.stack(rows), full))

        # 3. chunked continuation (multi-token calls on a warm cache)
        for label, sizes in (("chunked7_vs_full", [7]), ("chunked_mixed_vs_full", [5, 1, 12, 3, 9, 16, 2])):
            try:
                cache, rows, p, i = None, [], 0, 0
                while p < T:
                    n = min(sizes[i % len(sizes)], T - p)
                    o = model(input_ids=ids[:, p:p + n], past_key_values=cache, use_cache=True)
                    cache = o.past_key_values
                    rows.append(o.logits[0].float().cpu())
                    p, i = p + n, i + 1
                check(label, rel(torch.cat(rows), full))
            except Exception as ex:  # noqa: BLE001
                checks[label] = f"unsupported: {type(ex).__name__}: {ex}"
                failures.append(f"{name}: {label} raised {ex!r}")

        # 4. prefill with cache, then greedy decode
        o = model(input_ids=ids, use_cache=True)
        check("prefill_with_cache_vs_full", rel(o.logits[0].float().cpu(), full))
        cache = o.past_key_values
        last = o.logits[0, -1].float().cpu()
        greedy, greedy_logits, margins = [], [], []
        for step in range(N_GREEDY):
            greedy_logits.append(last)
            nxt = argmax_low(last)
            s = last.double().sort(descending=True).values
            margins.append(float((s[0] - s[1]) / s.abs().max()))
            greedy.append(nxt)
            o = model(input_ids=torch.tensor([[nxt]], device=device), past_key_values=cache, use_cache=True)
            cache = o.past_key_values
            last = o.logits[0, -1].float().cpu()
        greedy_logits = torch.stack(greedy_logits)
        # the same logits from one full forward over prompt + generated tokens
        ext = torch.cat([ids, torch.tensor([greedy[:-1]], device=device)], dim=1)
        full_ext = model(input_ids=ext, use_cache=False).logits[0].float().cpu()
        check("greedy_cached_vs_full_forward", rel(greedy_logits, full_ext[T - 1:]))
        meta["greedy_min_rel_margin_top1_top2"] = min(margins)

        # 5. MTP reference
        S = T - 1
        pos = torch.arange(S, device=device).view(1, S)
        probes.on = True
        n_router_before = len(probes.router)
        mtp_logits = mtp(model, streams[:, :S], ids[:, 1:], pos)[0].float().cpu()
        probes.on = False
        mtp_router = probes.router[n_router_before:]
        mcache = DynamicCache(config=mcfg)
        rows = []
        for t in range(S):
            rows.append(mtp(model, streams[:, t:t + 1], ids[:, t + 1:t + 2], pos[:, t:t + 1], cache=mcache)[0, -1]
                        .float().cpu())
        check("mtp_incremental_vs_full", rel(torch.stack(rows), mtp_logits))
    hook.remove()

    # top-k robustness: min relative gap between k-th and (k+1)-th score
    ig = [topk_gap(s, cfg.index_topk) for s in probes.indexer]
    meta["indexer_topk"] = {"layers_probed": len(ig), "rows_selecting": sum(r for _, r in ig),
                            "min_rel_gap": min(g for g, _ in ig) if ig else None}
    rg = [topk_gap(s, K) for s in probes.router]
    meta["router_topk_min_rel_gap"] = min(g for g, _ in rg) if rg else None
    meta["shared_expert_swiglu_clamped_fraction_gate_up"] = [max(c[0] for c in probes.clamp),
                                                             max(c[1] for c in probes.clamp)]
    meta["mtp_router_topk_min_rel_gap"] = min(topk_gap(s, K)[0] for s in mtp_router) if mtp_router else None
    print("  indexer:", meta["indexer_topk"], "router gap:", meta["router_topk_min_rel_gap"],
          "greedy margin:", meta["greedy_min_rel_margin_top1_top2"], flush=True)

    # ---------------------------------------------------------------- write arrays
    np.save(os.path.join(out, "tokens.npy"), tokens.numpy().astype(np.int64))
    np.save(os.path.join(out, "logits.npy"), full.numpy().astype(np.float32))
    np.save(os.path.join(out, "streams.npy"), streams[0].float().cpu().numpy().astype(np.float32))
    np.save(os.path.join(out, "mtp_logits.npy"), mtp_logits.numpy().astype(np.float32))
    np.save(os.path.join(out, "greedy.npy"), np.array(greedy, dtype=np.int64))
    np.save(os.path.join(out, "greedy_logits.npy"), greedy_logits.numpy().astype(np.float32))

    model.cpu()
    mtp.cpu()
    main_sd = model.state_dict()
    mtp_sd = mtp.state_dict()

    # ---------------------------------------------------------------- hf_saved (save_pretrained)
    saved_dir = os.path.join(out, "hf_saved")
    m16 = copy.deepcopy(model).to(torch.bfloat16)
    m16.save_pretrained(saved_dir)
    del m16

    # ---------------------------------------------------------------- hf/
    hf_dir = os.path.join(out, "hf")
    os.makedirs(hf_dir)
    shutil.copy(os.path.join(saved_dir, "config.json"), os.path.join(hf_dir, "config.json"))
    hf_t = {k: v.to(hf_dtype(v)) for k, v in main_sd.items()}
    for k, v in mtp_sd.items():
        kk = k[len("layer."):] if k.startswith("layer.") else k
        if not k.startswith("layer.") and k not in MTP_EXTRA_RENAME:
            raise RuntimeError(f"unexpected MTP tensor {k}")
        hf_t[f"model.layers.{L}.{kk}"] = v.to(hf_dtype(v))
    meta["bytes"] = {"hf/model.safetensors": save_st(hf_t, os.path.join(hf_dir, "model.safetensors"))}

    # ---------------------------------------------------------------- native/
    nat_dir = os.path.join(out, "native")
    os.makedirs(nat_dir)
    with open(os.path.join(nat_dir, "config.json"), "w") as f:
        json.dump(native_config(spec), f, indent=2)
        f.write("\n")
    main_nat, mtp_nat = {}, {}
    for k, v in main_sd.items():
        if k in TOP_RENAME:
            main_nat[TOP_RENAME[k]] = v
    for li in range(L):
        pre = f"model.layers.{li}."
        layer_sd = {k[len(pre):]: v for k, v in main_sd.items() if k.startswith(pre)}
        main_nat.update(native_layer(f"layers.{li}.", layer_sd, I))
    covered = set(TOP_RENAME) | {k for k in main_sd if k.startswith("model.layers.")}
    assert covered == set(main_sd), set(main_sd) - covered
    layer_sd = {k[len("layer."):]: v for k, v in mtp_sd.items() if k.startswith("layer.")}
    mtp_nat.update(native_layer("mtp.0.", layer_sd, I))
    for k, v in mtp_sd.items():
        if not k.startswith("layer."):
            mtp_nat["mtp.0." + MTP_EXTRA_RENAME[k]] = v
    main_nat = {k: v.to(native_dtype(k, v)) for k, v in main_nat.items()}
    mtp_nat = {k: v.to(native_dtype(k, v)) for k, v in mtp_nat.items()}
    f1, f2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    meta["bytes"]["native/" + f1] = save_st(main_nat, os.path.join(nat_dir, f1))
    meta["bytes"]["native/" + f2] = save_st(mtp_nat, os.path.join(nat_dir, f2))
    total = sum(v.numel() * v.element_size() for v in list(main_nat.values()) + list(mtp_nat.values()))
    wmap = {k: f1 for k in sorted(main_nat)}
    wmap.update({k: f2 for k in sorted(mtp_nat)})
    with open(os.path.join(nat_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": wmap}, f, indent=2)
        f.write("\n")

    # ---------------------------------------------------------------- native/ vs transformers' naming
    # save_pretrained applies transformers' reverse conversion (towards DeepSeek's names); map its
    # remaining differences and require every tensor to equal ours.
    from safetensors.torch import load_file
    saved = load_file(os.path.join(saved_dir, "model.safetensors"))
    nat = dict(main_nat)
    unmatched, compared = [], 0
    for k, v in saved.items():
        n_ = {"model.embed_tokens.weight": "embed.weight"}.get(k, k)
        n_ = n_.replace("model.hc_head.hc_", "hc_head_")
        n_ = n_[len("model."):] if n_.startswith("model.") else n_
        n_ = n_.replace(".attn.norm.weight", ".attn.kv_norm.weight")
        if n_ not in nat:
            unmatched.append(k)
            continue
        compared += 1
        if not torch.equal(v.float(), nat[n_].float()) or list(v.shape) != list(nat[n_].shape):
            failures.append(f"{name}: native {n_} differs from save_pretrained's {k}")
    meta["native_vs_save_pretrained"] = {"compared": compared, "saved_tensors": len(saved),
                                         "native_main_tensors": len(nat), "unmatched_saved_names": unmatched}
    print(f"  native vs save_pretrained: {compared}/{len(saved)} compared, unmatched {unmatched}", flush=True)
    if unmatched or compared != len(nat):
        failures.append(f"{name}: native/save_pretrained name sets differ: {unmatched}, {compared} vs {len(nat)}")

    # ---------------------------------------------------------------- reload checks
    with torch.no_grad():
        for label, d in (("reload_hf_saved_vs_full", saved_dir), ("reload_hf_dir_vs_full", hf_dir)):
            try:
                kw = dict(dtype=torch.float32, output_loading_info=True)
                try:
                    m2, info = DeepseekV4ForCausalLM.from_pretrained(d, experts_implementation="eager", **kw)
                except TypeError:
                    m2, info = DeepseekV4ForCausalLM.from_pretrained(d, **kw)
                m2.eval().to(device)
                got = m2(input_ids=ids, use_cache=False).logits[0].float().cpu()
                if isinstance(info, dict):
                    meta[label + "_loading_info"] = {k: sorted(map(str, v))[:40] if isinstance(v, (set, list))
                                                     else str(v) for k, v in info.items()}
                check(label, rel(got, full))
                del m2
            except Exception as ex:  # noqa: BLE001
                checks[label] = f"error: {type(ex).__name__}: {ex}"
                print(f"  {label}: error {ex!r}")
                if label == "reload_hf_saved_vs_full":
                    failures.append(f"{name}: {label} raised {ex!r}")
    if not keep_hf_saved:
        shutil.rmtree(saved_dir)

    meta["hf_config"] = json.loads(cfg.to_json_string())
    meta["native_config"] = native_config(spec)
    meta["files"] = sorted(os.path.relpath(os.path.join(dp, fn), out)
                           for dp, _, fns in os.walk(out) for fn in fns) + ["meta.json"]
    meta["failures"] = failures
    meta["fixture_bytes"] = sum(os.path.getsize(os.path.join(dp, fn)) for dp, _, fns in os.walk(out) for fn in fns)
    print(f"  fixture bytes (without meta.json): {meta['fixture_bytes']}", flush=True)
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    return failures


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", action="append", help="fixture name(s) to build")
    ap.add_argument("--keep-hf-saved", action="store_true", help="keep hf_saved/ (save_pretrained output)")
    args = ap.parse_args()
    torch.set_default_dtype(torch.float32)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    print("transformers", transformers.__version__, "torch", torch.__version__, flush=True)
    failures = []
    for spec in SPECS:
        if args.only and spec["name"] not in args.only:
            continue
        failures += build_fixture(spec, args.out_dir, args.device, args.keep_hf_saved)
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures), flush=True)
        sys.exit(1)
    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()
