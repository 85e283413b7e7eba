#!/usr/bin/env python3
"""Oracle fixture for kiln's DSpark drafter: a tiny random DeepSeek-V4 in the V4-Flash-0731 /
-DSpark layout (backbone + a 3-stage DSpark drafter under mtp.0 .. mtp.2, dspark_* config keys),
with reference draft logits and Markov-adjusted logits.

Run (transformers 5.17, PyTorch, CPU fp32, fixed seeds; the output is deterministic):

    python3 tools/make_dspark_fixture.py OUT_DIR

and copy OUT_DIR/tiny_dspark/ to tests/data/fixtures/tiny_dspark/. Exits non-zero if a check
in meta.json "checks" exceeds 1e-5 relative.

What the reference is
=====================
The backbone is transformers' DeepseekV4ForCausalLM (the same oracle as tools/make_fixtures.py,
whose config, randomisation and naming helpers this script imports). The drafter is written here
from DeepSeek's code, not from kiln's:
  * DeepSeek's inference/model.py for V4-Flash-0731 (DSparkBlock, DSparkAttention,
    get_dspark_topk_idxs, DSparkMarkovHead, DSparkConfidenceHead; known through the ports that
    quote it, ../shared/docs/dspark.md sections 1.3-1.5) and vLLM's
    vllm/models/deepseek_v4/nvidia/dspark.py (DSparkDeepseekV4Model: main_proj/main_norm on the
    concatenated target features, per-stage context KV = kv_norm(wkv(main_x)) + RoPE, hc_head
    returning the PRE-norm hidden, logits = head(norm(hidden)));
  * DeepSpec (deepseek-ai/DeepSpec): deepspec/modeling/dspark/markov_head.py (VanillaMarkov:
    step logits = base + markov_w2(markov_w1[prev]), prev = the anchor, then each drawn draft),
    deepspec/eval/dspark/draft_ops.py (build_dspark_proposal: block = [anchor, mask x (B-1)],
    base logits of all B slots, then the sequential Markov loop; confidence from
    [hidden ; markov_w1[prev]]).
Each stage is one V4 block: transformers' DeepseekV4DecoderLayer (sliding attention, score-routed
MoE, mHC) whose attention is replaced by the DSpark attention below (same parameters).

One drafting round for anchor position N (positions 0..N-1 committed, a = the token at N):
    F[p]     = cat_l mean_hc(output streams of backbone layer l at p), l in dspark_target_layer_ids
    main_x   = main_norm(main_proj(F[p]))                            (stage 0's main_proj/main_norm)
    ctx_s[p] = rope(kv_norm_s(wkv_s(main_x[p])), p)  for p in max(0, N-W) .. N-1, W = sliding_window
               (each stage s its own wkv / kv_norm; DeepSeek's 128-slot ring = the last W rows)
    X        = embed([a, noise x (B-1)]) copied to the hc_mult streams, positions N .. N+B-1
    stage s: attention queries = the B block rows; keys = values = ctx_s ++ the block's own
             rope(kv_norm(wkv(x))) (no causal mask inside the block: bidirectional), a per-head
             sink in the softmax, the output's rope slice rotated back at the query position,
             grouped wo_a, wo_b; then mHC / MoE as any V4 block
    h        = hc_head(X) (pre-norm);   base[k] = head(norm(h[k]))   (the backbone's head)
    Markov   : prev_0 = a; adjusted[k] = base[k] + markov_w2(markov_w1[prev_k]);
               greedy: d_{k+1} = argmax adjusted[k] (ties to the lowest id), prev_{k+1} = d_{k+1}
    confidence[k] = sigmoid(proj([h[k] ; markov_w1[prev_k]]))  (no bias, as in the release)
Numerics: fp32 throughout from bf16-exact weights; DeepSeek's FP8 round trip of the KV
(act_quant) is not simulated, as kiln's exact precision and transformers do not simulate it.

Files (tests/data/fixtures/tiny_dspark/; T prompt tokens, A anchors, B block size, V vocab)
tokens.npy          int64   [T]        the prompt
logits.npy          float32 [T, V]     the backbone's logits (transformers, full forward)
target_hidden.npy   float32 [T, nT*H]  F[p] above (nT target layers)
anchors.npy         int64   [A]        anchor positions N (the anchor token is tokens[N])
draft_logits.npy    float32 [A, B, V]  base logits of the block
markov_logits.npy   float32 [A, B, V]  Markov-adjusted logits of the greedy loop
draft_tokens.npy    int64   [A, B]     the greedy drafts d_1 .. d_B
confidence.npy      float32 [A, B]     the confidences of the greedy loop
forced_logits.npy   float32 [A, B, V]  Markov-adjusted logits with prev_k = tokens[N + k] (the
                                       prompt's own continuation: the sampled path's arithmetic)
native/             config.json (DeepSeek form: compress_ratios L + 3 entries, the dspark_* keys,
                    num_nextn_predict_layers 1), model-00001-of-00002.safetensors (backbone),
                    model-00002-of-00002.safetensors (mtp.0 .. mtp.2 only), the index
meta.json           spec, seeds, versions, checks
"""
import argparse
import json
import math
import os
import shutil
import sys
import types

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402  (transformers' oracle helpers)

import transformers  # noqa: E402
from transformers import DeepseekV4ForCausalLM  # noqa: E402
from transformers.models.deepseek_v4 import modeling_deepseek_v4 as mdv4  # noqa: E402

TOL = 1e-5

SPEC = dict(
    name="tiny_dspark", seed=20261207, T=64,
    vocab_size=256, hidden_size=64, num_attention_heads=4, head_dim=32, qk_rope_head_dim=16,
    q_lora_rank=32, o_lora_rank=16, o_groups=2, sliding_window=8,
    layers=["csa", "hca", "swa", "csa", "swa"], num_hash_layers=1, hca_rate=8,
    n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
    index_n_heads=16, index_head_dim=16, index_topk=4,
    rope_theta=10000.0, compress_rope_theta=160000.0,
    yarn=dict(factor=16.0, original_max_position_embeddings=65536, beta_fast=32, beta_slow=1),
    routed_scaling_factor=1.5, swiglu_limit=10.0, hc_sinkhorn_iters=20,
    # the drafter (0731: 3 stages, block 5, noise 128799, targets [40, 41, 42], rank 256)
    dspark_stages=3, dspark_block_size=5, dspark_noise_token_id=255,
    dspark_target_layer_ids=[2, 3, 4], dspark_markov_rank=16,
)
ANCHORS = [1, 2, 5, 8, 9, 16, 23, 31, 40, 47, 58]


class DSparkReference(nn.Module):
    """The drafter's parameters: per stage a V4 decoder layer; main_proj/main_norm (stage 0);
    norm, hc_head, the Markov head and the confidence head (last stage)."""

    def __init__(self, mcfg, spec):
        super().__init__()
        H, V, r = mcfg.hidden_size, mcfg.vocab_size, spec["dspark_markov_rank"]
        nT = len(spec["dspark_target_layer_ids"])
        self.stages = nn.ModuleList([mdv4.DeepseekV4DecoderLayer(mcfg, 0) for _ in range(spec["dspark_stages"])])
        self.main_proj = nn.Linear(nT * H, H, bias=False)
        self.main_norm = mdv4.DeepseekV4RMSNorm(H, eps=mcfg.rms_norm_eps)
        self.norm = mdv4.DeepseekV4RMSNorm(H, eps=mcfg.rms_norm_eps)
        self.hc_head = mdv4.DeepseekV4HyperHead(mcfg)
        self.markov_w1 = nn.Embedding(V, r)
        self.markov_w2 = nn.Linear(r, V, bias=False)
        self.confidence = nn.Linear(H + r, 1, bias=False)
        self.rotary = mdv4.DeepseekV4RotaryEmbedding(mcfg)
        self.cfg = mcfg
        for layer in self.stages:  # DSpark attention on each stage's own parameters
            layer.self_attn.forward = types.MethodType(dspark_attention, layer.self_attn)
            layer.self_attn.dspark = {}


def dspark_attention(self, hidden_states, **kwargs):
    """DSparkAttention.forward (decode): queries are the block rows; keys = values = the context
    rows set in self.dspark["ctx"] ([C, D], normed and rotated) followed by the block's own rows.
    self.dspark["pos"]: the block's positions; self.dspark["causal"]: for the self-check only
    (causal within the block, as the stock attention)."""
    st = self.dspark
    x = hidden_states
    S = x.shape[1]
    nh, D = self.num_heads, self.head_dim
    pos = st["pos"].view(1, S)
    cos, sin = st["rotary"](x, position_ids=pos, layer_type="main")
    qres = self.q_a_norm(self.q_a_proj(x))
    q = self.q_b_norm(self.q_b_proj(qres).view(1, S, nh, D).transpose(1, 2))
    q = mdv4.apply_rotary_pos_emb(q, cos, sin)                                  # [1, nh, S, D]
    kv = self.kv_norm(self.kv_proj(x)).view(1, S, 1, D).transpose(1, 2)
    kv = mdv4.apply_rotary_pos_emb(kv, cos, sin)                                # [1, 1, S, D]
    ctx = st["ctx"]
    keys = torch.cat([ctx.view(1, 1, -1, D), kv], dim=2)                        # [1, 1, C+S, D]
    scores = torch.matmul(q, keys.transpose(-1, -2)) * self.scaling             # [1, nh, S, C+S]
    if st.get("causal"):
        C = ctx.shape[0]
        allowed = torch.ones(S, C + S, dtype=torch.bool)
        allowed[:, C:] = torch.tril(torch.ones(S, S, dtype=torch.bool))
        scores = scores.masked_fill(~allowed.to(scores.device), float("-inf"))
    sinks = self.sinks.reshape(1, nh, 1, 1).expand(1, nh, S, 1)
    logits = torch.cat([scores, sinks], dim=-1)
    logits = logits - logits.max(dim=-1, keepdim=True).values
    probs = F.softmax(logits, dim=-1)[..., :-1]
    o = torch.matmul(probs, keys)                                               # [1, nh, S, D]
    o = mdv4.apply_rotary_pos_emb(o, cos, -sin).transpose(1, 2)                 # [1, S, nh, D]
    grouped = self.o_a_proj(o.reshape(1, S, self.config.o_groups, -1)).flatten(2)
    return self.o_b_proj(grouped), None


def draft_round(ref, main, feats, tokens, N, spec, forced=None):
    """One round at anchor position N (see the module docstring). Returns base logits [B, V],
    adjusted logits [B, V], drafts [B], confidences [B]."""
    B, W = spec["dspark_block_size"], spec["sliding_window"]
    n = ref.cfg.hc_mult
    lo = max(0, N - W)
    main_x = ref.main_norm(ref.main_proj(feats[lo:N]))                          # [C, H]
    ctx_pos = torch.arange(lo, N).view(1, -1)
    blk_pos = torch.arange(N, N + B)
    ids = torch.full((1, B), spec["dspark_noise_token_id"], dtype=torch.long)
    ids[0, 0] = int(tokens[N])
    X = main.model.embed_tokens(ids).unsqueeze(2).repeat(1, 1, n, 1)           # [1, B, n, H]
    for layer in ref.stages:
        a = layer.self_attn
        cos, sin = ref.rotary(main_x, position_ids=ctx_pos, layer_type="main")
        ctx = a.kv_norm(a.kv_proj(main_x)).view(1, -1, 1, a.head_dim).transpose(1, 2)
        ctx = mdv4.apply_rotary_pos_emb(ctx, cos, sin)[0, 0]                     # [C, D]
        a.dspark = {"ctx": ctx, "pos": blk_pos, "rotary": ref.rotary}
        X = layer(X, input_ids=ids)
    h = ref.hc_head(X)[0]                                                       # [B, H] pre-norm
    base = main.lm_head(ref.norm(h))                                            # [B, V]
    adjusted, drafts, conf = [], [], []
    prev = int(tokens[N])
    for k in range(B):
        e = ref.markov_w1(torch.tensor([prev]))[0]
        row = base[k] + ref.markov_w2(e)
        adjusted.append(row)
        conf.append(torch.sigmoid(ref.confidence(torch.cat([h[k], e]))).squeeze())
        d = mf.argmax_low(row)
        drafts.append(d)
        prev = d if forced is None else int(forced[k])
    return base, torch.stack(adjusted), drafts, torch.stack(conf)


def stock_attention_check(ref, main, spec):
    """Self-check of the attention plumbing: with no context rows and a causal mask, a stage's
    DSpark attention must equal transformers' own DeepseekV4Attention on the same rows."""
    layer = ref.stages[0]
    a = layer.self_attn
    S, H = 6, ref.cfg.hidden_size
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, S, H, generator=g)
    pos = torch.arange(3, 3 + S)
    a.dspark = {"ctx": torch.zeros(0, a.head_dim), "pos": pos, "rotary": ref.rotary, "causal": True}
    mine = a.forward(x)[0]
    pe = {k: ref.rotary(x, position_ids=pos.view(1, -1), layer_type=k) for k in ("main", "compress")}
    allowed = torch.tril(torch.ones(S, S, dtype=torch.bool))
    mask = torch.zeros(S, S).masked_fill(~allowed, torch.finfo(torch.float32).min)[None, None]
    stock = mdv4.DeepseekV4Attention.forward(a, x, position_embeddings=pe, position_ids=pos.view(1, -1),
                                             attention_mask=mask)[0]
    return mf.rel(mine, stock)


def native_dspark_config(spec):
    c = mf.native_config(spec)
    ratio = {"swa": 0, "csa": 4, "hca": spec["hca_rate"]}
    c["compress_ratios"] = [ratio[k] for k in spec["layers"]] + [0] * spec["dspark_stages"]
    c["num_nextn_predict_layers"] = 1  # as the release: not the stage count
    for k in ("dspark_block_size", "dspark_noise_token_id", "dspark_target_layer_ids", "dspark_markov_rank"):
        c[k] = spec[k]
    return c


def min_rel_margin(adj_all):
    """The smallest gap between the two largest logits of any greedy row, relative to the row's
    largest magnitude: how far the drafts are from an argmax tie."""
    margins = []
    for adj in adj_all:
        for row in adj:
            s = row.double().sort(descending=True).values
            margins.append(float((s[0] - s[1]) / s.abs().max()))
    return min(margins)


def save_drafts(out, base_all, adj_all, tok_all, conf_all, forced_all):
    """The reference drafts of the anchors' rounds, as the C++ oracle tests read them."""
    np.save(os.path.join(out, "draft_logits.npy"), torch.stack(base_all).numpy().astype(np.float32))
    np.save(os.path.join(out, "markov_logits.npy"), torch.stack(adj_all).numpy().astype(np.float32))
    np.save(os.path.join(out, "draft_tokens.npy"), np.array(tok_all, dtype=np.int64))
    np.save(os.path.join(out, "confidence.npy"), torch.stack(conf_all).numpy().astype(np.float32))
    np.save(os.path.join(out, "forced_logits.npy"), torch.stack(forced_all).numpy().astype(np.float32))


def drafter_extra_names(stages):
    """DSparkReference's tensors outside the stages -> their native names (stage 0 and the last)."""
    last = f"mtp.{stages - 1}."
    return {"main_proj.weight": "mtp.0.main_proj.weight", "main_norm.weight": "mtp.0.main_norm.weight",
            "norm.weight": last + "norm.weight", "hc_head.hc_fn": last + "hc_head_fn",
            "hc_head.hc_base": last + "hc_head_base", "hc_head.hc_scale": last + "hc_head_scale",
            "markov_w1.weight": last + "markov_head.markov_w1.weight",
            "markov_w2.weight": last + "markov_head.markov_w2.weight",
            "confidence.weight": last + "confidence_head.proj.weight"}


def drafter_native(ref, stages, inter):
    """The drafter's tensors under DeepSeek-native names (mtp.0 .. mtp.{stages-1}), dtypes as trained."""
    rsd = ref.state_dict()
    dsp = {}
    for s in range(stages):
        pre = f"stages.{s}."
        dsp.update(mf.native_layer(f"mtp.{s}.", {k[len(pre):]: v for k, v in rsd.items() if k.startswith(pre)}, inter))
    extra = drafter_extra_names(stages)
    for k, v in rsd.items():
        if k.startswith("stages."):
            continue
        if k not in extra:
            raise RuntimeError(f"no native name for drafter tensor {k}")
        dsp[extra[k]] = v
    return dsp


def build(out_root):
    spec = SPEC
    name = spec["name"]
    out = os.path.join(out_root, name)
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)
    torch.manual_seed(spec["seed"])
    gen = torch.Generator().manual_seed(spec["seed"])
    cfg = mf.hf_config(spec)
    main = DeepseekV4ForCausalLM(cfg).float().eval()
    try:
        main.set_experts_implementation("eager")
    except Exception as ex:  # noqa: BLE001
        print("set_experts_implementation:", ex)
    H, V, L, T = cfg.hidden_size, cfg.vocab_size, cfg.num_hidden_layers, spec["T"]
    I, E, K = cfg.moe_intermediate_size, cfg.n_routed_experts, cfg.num_experts_per_tok
    mf.randomise_(main, gen, H, K, E)
    mcfg = mf.hf_config(spec, mtp=True)
    ref = DSparkReference(mcfg, spec).float().eval()
    mf.randomise_(ref, gen, H, K, E)
    tokens = torch.randint(0, V - 1, (T,), generator=gen)  # the noise id (V-1) never in the prompt
    meta = {"name": name, "T": T, "seed": spec["seed"], "transformers": transformers.__version__,
            "torch": torch.__version__, "dtype": "float32", "spec": spec, "anchors": ANCHORS, "checks": {}}
    failures = []

    def check(key, value):
        meta["checks"][key] = value
        print(f"  {key}: {value:.3e} {'ok' if value <= TOL else 'FAIL'}", flush=True)
        if value > TOL:
            failures.append(f"{key} = {value:.3e}")

    targets = spec["dspark_target_layer_ids"]
    captured = {}
    hooks = [main.model.layers[l].register_forward_hook(
        lambda m, args, o, l=l: captured.__setitem__(l, (o[0] if isinstance(o, tuple) else o).detach()))
        for l in targets]
    with torch.no_grad():
        full = main(input_ids=tokens.view(1, T), use_cache=False).logits[0].float()
        feats = torch.cat([captured[l][0].mean(dim=1) for l in targets], dim=-1)   # [T, nT*H]
        assert feats.shape == (T, len(targets) * H)
        # the features of a prefix are the prefix's features (causal)
        full_p = main(input_ids=tokens[:37].view(1, 37), use_cache=False).logits
        feats_p = torch.cat([captured[l][0].mean(dim=1) for l in targets], dim=-1)
        check("target_hidden_prefix_vs_full", mf.rel(feats_p, feats[:37]))
        del full_p
        for h in hooks:
            h.remove()
        check("dspark_attention_vs_stock_causal", stock_attention_check(ref, main, spec))
        B = spec["dspark_block_size"]
        base_all, adj_all, tok_all, conf_all, forced_all = [], [], [], [], []
        for N in ANCHORS:
            base, adj, drafts, conf = draft_round(ref, main, feats, tokens, N, spec)
            forced = tokens[N + 1:N + 1 + B] if N + B < T else None
            if forced is None or forced.numel() < B:
                raise RuntimeError(f"anchor {N} too close to the end of the prompt")
            _, fadj, _, _ = draft_round(ref, main, feats, tokens, N, spec, forced=forced.tolist())
            base_all.append(base)
            adj_all.append(adj)
            tok_all.append(drafts)
            conf_all.append(conf)
            forced_all.append(fadj)
        # the forced path's first row is the greedy path's (prev_0 = a in both)
        check("forced_row0_vs_greedy_row0", mf.rel(torch.stack(forced_all)[:, 0], torch.stack(adj_all)[:, 0]))
        meta["greedy_draft_min_rel_margin"] = min_rel_margin(adj_all)

    np.save(os.path.join(out, "tokens.npy"), tokens.numpy().astype(np.int64))
    np.save(os.path.join(out, "logits.npy"), full.numpy().astype(np.float32))
    np.save(os.path.join(out, "target_hidden.npy"), feats.numpy().astype(np.float32))
    np.save(os.path.join(out, "anchors.npy"), np.array(ANCHORS, dtype=np.int64))
    save_drafts(out, base_all, adj_all, tok_all, conf_all, forced_all)

    # native/: the backbone as make_fixtures writes it, the drafter as mtp.0 .. mtp.{S-1}
    nat = os.path.join(out, "native")
    os.makedirs(nat)
    with open(os.path.join(nat, "config.json"), "w") as f:
        json.dump(native_dspark_config(spec), f, indent=2)
        f.write("\n")
    sd = main.state_dict()
    main_nat = {mf.TOP_RENAME[k]: v for k, v in sd.items() if k in mf.TOP_RENAME}
    for li in range(L):
        pre = f"model.layers.{li}."
        main_nat.update(mf.native_layer(f"layers.{li}.", {k[len(pre):]: v for k, v in sd.items() if k.startswith(pre)}, I))
    dsp = drafter_native(ref, spec["dspark_stages"], I)
    main_nat = {k: v.to(mf.native_dtype(k, v)) for k, v in main_nat.items()}
    dsp = {k: v.to(mf.native_dtype(k, v)) for k, v in dsp.items()}
    for k, v in list(main_nat.items()) + list(dsp.items()):
        if v.dtype.is_floating_point:
            assert mf.is_bf16_exact(v.float()), k
    f1, f2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    meta["bytes"] = {f1: mf.save_st(main_nat, os.path.join(nat, f1)), f2: mf.save_st(dsp, os.path.join(nat, f2))}
    total = sum(v.numel() * v.element_size() for v in list(main_nat.values()) + list(dsp.values()))
    wmap = {k: f1 for k in sorted(main_nat)}
    wmap.update({k: f2 for k in sorted(dsp)})
    with open(os.path.join(nat, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": wmap}, f, indent=2)
        f.write("\n")
    meta["drafter_tensors"] = len(dsp)
    meta["failures"] = failures
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    return failures


def main_():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    args = ap.parse_args()
    torch.set_default_dtype(torch.float32)
    print("transformers", transformers.__version__, "torch", torch.__version__, flush=True)
    failures = build(args.out_dir)
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures), flush=True)
        sys.exit(1)
    print("all checks passed", flush=True)


if __name__ == "__main__":
    main_()
