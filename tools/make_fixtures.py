#!/usr/bin/env python3
"""Oracle fixtures for kiln: tiny random DeepSeek-V4 models built with transformers, with
reference logits (full forward), an MTP-block reference, and a greedy continuation.

Run (transformers 5.17, PyTorch; CPU fp32 by default, deterministic, fixed seeds):

    python3 tools/make_fixtures.py OUT_DIR [--device cpu|cuda] [--only NAME] [--keep-hf-saved]

and copy OUT_DIR/<name>/ to tests/data/fixtures/<name>/. The output is byte-identical from run
to run (checked with md5sum on the GPU machine's CPU). The script exits non-zero if any check in
meta.json "checks" exceeds 1e-5 relative.

The fixtures' format, weights and the MTP reference: docs/fixtures.md.
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
