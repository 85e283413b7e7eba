#!/usr/bin/env python3
"""Train a DSpark drafter for kiln's bundled model (kiln issue 19) on one GPU, the backbone frozen.

    PYTHONUNBUFFERED=1 python3 tools/train/train_dspark.py --out $OUT [--budget-s 420] [--steps N] [--smoke]

As DeepSeek did for V4-Flash-DSpark (a "bolt-on" drafter trained against the frozen V4-Flash),
this trains the 3-stage DSpark drafter of ../shared/docs/dspark.md against the frozen
models/kiln-dsv4-mini, and writes models/kiln-dsv4-mini-dspark: the same backbone shard and a
drafter shard under mtp.0 .. mtp.2 in the 0731 layout (docs/model.md has the command and its
output). Fixed seeds throughout.

  1. corpus: train_dsv4.py's (every *.py under /usr/lib/python3*/, then site-packages, the same
     held-out rule), tokenized with the bundled tokenizer.json;
  2. backbone: transformers' DeepseekV4ForCausalLM with the bundled BF16 weights (DeepSeek-native
     names mapped back to transformers'); checked against the bundled held-out logits;
  3. drafter: tools/make_dspark_fixture.py's DSparkReference (each stage a transformers V4 decoder
     layer with DeepSeek's DSpark attention; main_proj/main_norm; norm, hc_head, the Markov and
     confidence heads), stages warm-started from the backbone's last layer (attention, MoE, mHC);
  4. training: per step, `--batch` windows of `--ctx` tokens go through the backbone (no grad),
     which gives the target features F[p] (mean over the hc streams of the target layers'
     outputs) and the target's logits. `--anchors` anchor positions N per window each draft one
     block [token N, noise x 4] at positions N..N+4 against the window's own context rows
     (the last sliding_window main-stream rows before N, as kiln's ring holds them). The block's
     slot k predicts position N+k+1: its Markov-adjusted logits (prev = the text's token N+k,
     teacher forcing) are fitted to the target's distribution at row N+k (soft cross-entropy,
     weight 0.8^k), and the confidence head (inputs detached) to whether the adjusted argmax
     equals the target's argmax (binary cross-entropy). The drafter's routers get DeepSeek's
     auxiliary-loss-free bias update. The batched attention here is checked against the
     fixture's one-round reference (make_dspark_fixture.draft_round) before training;
  5. export (into --out): kiln-dsv4-mini-dspark/ (config.json with the dspark_* keys, the index,
     model-00002-of-00002.safetensors = the drafter in native names and dtypes from bf16-rounded
     weights; the backbone shard is the bundled one, linked), and fixture/ for
     tests/data/trained/kiln-dsv4-mini-dspark: reference draft logits (greedy and teacher-forced
     Markov loops), drafts and confidences at a few anchors of the bundled held-out fixture's 64
     tokens, from make_dspark_fixture.draft_round on the CPU in fp32; meta.json with every number.
"""
import argparse
import json
import math
import os
import re
import sys
import time
import types

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)
import make_dspark_fixture as dsf  # noqa: E402  (DSparkReference, draft_round, drafter_native)
import make_fixtures as mf  # noqa: E402
import train_dsv4 as td  # noqa: E402  (SPEC, corpus, held-out rule, init, router loads)

from safetensors.torch import load_file  # noqa: E402
from transformers import DeepseekV4ForCausalLM  # noqa: E402
from transformers.models.deepseek_v4 import modeling_deepseek_v4 as mdv4  # noqa: E402

SEED = 20261207
BUNDLED = os.path.join(ROOT, "models", "kiln-dsv4-mini")
TRAINED = os.path.join(ROOT, "tests", "data", "trained", "kiln-dsv4-mini")
NAME = "kiln-dsv4-mini-dspark"
PAD = 2  # the bundled tokenizer's <｜▁pad▁｜>, never in text: the block's noise (mask) token
DSPEC = dict(td.SPEC, dspark_stages=3, dspark_block_size=5, dspark_noise_token_id=PAD,
             dspark_target_layer_ids=[1, 2, 3], dspark_markov_rank=64)
FIXTURE_ANCHORS = [3, 11, 20, 33, 45, 57]
T0 = time.time()


def log(*a):
    print(f"[{time.time() - T0:7.1f}s]", *a, flush=True)


# ------------------------------------------------------------------------------------ backbone
def read_native(d):
    nat = {}
    for f in sorted(os.listdir(d)):
        if f.endswith(".safetensors"):
            nat.update(load_file(os.path.join(d, f)))
    return nat


def copy_from_native(module, nat, native_of, what):
    """Sets every tensor of module from DeepSeek-native tensors (the inverse of make_fixtures'
    naming): native_of(key) gives (prefix of a V4 layer, the key inside the layer) or (None,
    the native name). Returns the native names used."""
    used = set()

    def take(name):
        if name not in nat:
            raise RuntimeError(f"{what}: no tensor {name}")
        used.add(name)
        return nat[name]

    for k, t in module.state_dict().items():
        pre, rest = native_of(k)
        if pre is None:
            v = take(rest)
        elif rest == "mlp.experts.gate_up_proj":
            v = torch.stack([torch.cat([take(f"{pre}ffn.experts.{e}.w1.weight"),
                                        take(f"{pre}ffn.experts.{e}.w3.weight")]) for e in range(t.shape[0])])
        elif rest == "mlp.experts.down_proj":
            v = torch.stack([take(f"{pre}ffn.experts.{e}.w2.weight") for e in range(t.shape[0])])
        else:
            v = take(pre + mf.LAYER_RENAME[rest])
        if tuple(v.shape) != tuple(t.shape):
            raise RuntimeError(f"{what} {k}: stored shape {tuple(v.shape)}, module expects {tuple(t.shape)}")
        with torch.no_grad():
            t.copy_(v.to(t.dtype))
    return used


def load_backbone(main, d):
    """The bundled BF16 checkpoint into transformers' module; every backbone tensor used."""
    def native_of(k):
        if k in mf.TOP_RENAME:
            return None, mf.TOP_RENAME[k]
        m = re.fullmatch(r"model\.layers\.(\d+)\.(.*)", k)
        if not m:
            raise RuntimeError(f"no native name for backbone tensor {k}")
        return f"layers.{m[1]}.", m[2]

    nat = read_native(d)
    used = copy_from_native(main, nat, native_of, d)
    left = sorted(k for k in nat if k not in used and not k.startswith("mtp."))
    if left:
        raise RuntimeError(f"bundled tensors not used: {left[:5]}")


def load_drafter(ref, d):
    """A drafter exported by this script (--init-from): every mtp.* tensor of d used."""
    extra = dsf.drafter_extra_names(DSPEC["dspark_stages"])

    def native_of(k):
        m = re.fullmatch(r"stages\.(\d+)\.(.*)", k)
        if m:
            return f"mtp.{m[1]}.", m[2]
        if k not in extra:
            raise RuntimeError(f"no native name for drafter tensor {k}")
        return None, extra[k]

    nat = read_native(d)
    used = copy_from_native(ref, nat, native_of, d)
    left = sorted(k for k in nat if k.startswith("mtp.") and k not in used)
    if left:
        raise RuntimeError(f"drafter tensors of {d} not used: {left[:5]}")


def warm_start(ref, main):
    """Each stage starts from the backbone's last layer where names and shapes agree (attention,
    MoE and mHC; the last layer's compressor and indexer have no counterpart in an SWA stage)."""
    src = main.model.layers[-1].state_dict()
    n = 0
    for stage in ref.stages:
        dst = stage.state_dict()
        take = {k: v for k, v in src.items() if k in dst and dst[k].shape == v.shape}
        stage.load_state_dict(take, strict=False)
        n = len(take)
    return n


# ------------------------------------------------------------------------------------ drafter
def batched_attention(self, hidden_states, **kwargs):
    """DeepSeek's DSpark attention for many blocks at once: hidden_states [A, S, H] (A blocks of S
    rows); self.dspark holds ctx [A, C, D] (each block's context rows, normed and rotated), mask
    [A, C] (which of them exist) and the block positions' cos/sin. Falls back to the fixture's
    one-block reference when given its inputs."""
    st = self.dspark
    if "mask" not in st:
        return dsf.dspark_attention(self, hidden_states, **kwargs)
    x = hidden_states
    A, S, _ = x.shape
    nh, D = self.num_heads, self.head_dim
    cos, sin = st["cos"], st["sin"]
    q = self.q_b_norm(self.q_b_proj(self.q_a_norm(self.q_a_proj(x))).view(A, S, nh, D).transpose(1, 2))
    q = mdv4.apply_rotary_pos_emb(q, cos, sin)                                   # [A, nh, S, D]
    kv = self.kv_norm(self.kv_proj(x)).view(A, S, 1, D).transpose(1, 2)
    kv = mdv4.apply_rotary_pos_emb(kv, cos, sin)                                 # [A, 1, S, D]
    keys = torch.cat([st["ctx"].unsqueeze(1), kv], dim=2)                        # [A, 1, C+S, D]
    scores = torch.matmul(q, keys.transpose(-1, -2)) * self.scaling              # [A, nh, S, C+S]
    allowed = torch.cat([st["mask"], torch.ones(A, S, dtype=torch.bool, device=x.device)], dim=1)
    scores = scores.masked_fill(~allowed[:, None, None, :], float("-inf"))
    sinks = self.sinks.reshape(1, nh, 1, 1).expand(A, nh, S, 1)
    probs = F.softmax(torch.cat([scores, sinks], dim=-1), dim=-1)[..., :-1]
    o = torch.matmul(probs, keys)                                                # [A, nh, S, D]
    o = mdv4.apply_rotary_pos_emb(o, cos, -sin).transpose(1, 2)
    grouped = self.o_a_proj(o.reshape(A, S, self.config.o_groups, -1)).flatten(2)
    return self.o_b_proj(grouped), None


def draft_blocks(ref, main, feats, x, seq_of, N):
    """Blocks at anchors (seq_of[a], N[a]) of the windows x [Bs, T] with target features feats
    [Bs, T, nT*H]: returns h [A, B, H] (pre-norm) and base logits [A, B, V]."""
    B, W, n = DSPEC["dspark_block_size"], DSPEC["sliding_window"], ref.cfg.hc_mult
    Bs, T = x.shape
    dev = x.device
    main_x = ref.main_norm(ref.main_proj(feats))                                 # [Bs, T, H]
    pos_all = torch.arange(T, device=dev).view(1, -1).expand(Bs, -1)
    cos_all, sin_all = ref.rotary(main_x, position_ids=pos_all, layer_type="main")
    idx = N.view(-1, 1) - W + torch.arange(W, device=dev).view(1, -1)            # [A, W]
    mask = idx >= 0
    idx = idx.clamp(min=0)
    blk_pos = N.view(-1, 1) + torch.arange(B, device=dev).view(1, -1)           # [A, B]
    ids = torch.full_like(blk_pos, DSPEC["dspark_noise_token_id"])
    ids[:, 0] = x[seq_of, N]
    X = main.model.embed_tokens(ids).unsqueeze(2).repeat(1, 1, n, 1)            # [A, B, n, H]
    cos, sin = ref.rotary(X[:, :, 0], position_ids=blk_pos, layer_type="main")
    for layer in ref.stages:
        a = layer.self_attn
        D = a.head_dim
        ctx_all = a.kv_norm(a.kv_proj(main_x)).view(Bs, T, 1, D).transpose(1, 2)
        ctx_all = mdv4.apply_rotary_pos_emb(ctx_all, cos_all, sin_all)[:, 0]     # [Bs, T, D]
        a.dspark = {"ctx": ctx_all[seq_of.view(-1, 1), idx], "mask": mask, "cos": cos, "sin": sin}
        X = layer(X, input_ids=ids)
    h = ref.hc_head(X)                                                          # [A, B, H]
    return h, main.lm_head(ref.norm(h))


def markov(ref, base, prev):
    """Adjusted logits [A, B, V] and the Markov embeddings e [A, B, r] for previous tokens prev [A, B]."""
    e = ref.markov_w1(prev)
    return base + ref.markov_w2(e), e


class Target:
    """Frozen backbone: logits and target features of windows (hooks on the target layers)."""

    def __init__(self, main):
        self.main = main
        self.cap = {}
        for l in DSPEC["dspark_target_layer_ids"]:
            main.model.layers[l].register_forward_hook(
                lambda m, args, o, l=l: self.cap.__setitem__(l, o[0] if isinstance(o, tuple) else o))

    @torch.no_grad()
    def __call__(self, x):
        logits = self.main(input_ids=x, use_cache=False).logits
        feats = torch.cat([self.cap[l].mean(dim=2) for l in DSPEC["dspark_target_layer_ids"]], dim=-1)
        self.cap.clear()
        return logits, feats


def anchors_for(Bs, T, per, gen, dev):
    """per anchors per window, N in 1 .. T-B (so the target rows N .. N+B-1 exist)."""
    B = DSPEC["dspark_block_size"]
    N = torch.randint(1, T - B + 1, (Bs, per), device=dev, generator=gen).view(-1)
    seq_of = torch.arange(Bs, device=dev).view(-1, 1).expand(-1, per).reshape(-1)
    return seq_of, N


def block_loss(ref, main, target_logits, feats, x, seq_of, N):
    """Soft cross-entropy to the target per slot (weight 0.8^k), confidence BCE; per-slot top-1 match."""
    B = DSPEC["dspark_block_size"]
    dev = x.device
    h, base = draft_blocks(ref, main, feats, x, seq_of, N)
    rows = N.view(-1, 1) + torch.arange(B, device=dev).view(1, -1)              # target rows N+k
    prev = x[seq_of.view(-1, 1), rows]                                           # token N+k: prev of slot k
    adj, e = markov(ref, base, prev)
    teacher = target_logits[seq_of.view(-1, 1), rows].float()                    # [A, B, V]
    pt = F.softmax(teacher, dim=-1)
    ce = -(pt * F.log_softmax(adj, dim=-1)).sum(-1)                              # [A, B]
    w = 0.8 ** torch.arange(B, device=dev, dtype=torch.float32)
    loss_draft = (ce.mean(0) * w).sum() / w.sum()
    hit = (adj.argmax(-1) == teacher.argmax(-1)).float()                         # [A, B]
    conf_logit = ref.confidence(torch.cat([h.detach(), e.detach()], dim=-1)).squeeze(-1)
    loss_conf = F.binary_cross_entropy_with_logits(conf_logit, hit)
    chain = torch.cumprod(hit, dim=1)                                            # drafts 1..k+1 all right
    return loss_draft, loss_conf, hit.mean(0), chain.mean(0)


# ------------------------------------------------------------------------------------ export
def export(ref, out, meta):
    d = os.path.join(out, NAME)
    os.makedirs(d, exist_ok=True)
    cfg = dsf.native_dspark_config(DSPEC)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    dsp = dsf.drafter_native(ref, DSPEC["dspark_stages"], DSPEC["moe_intermediate_size"])
    dsp = {k: v.detach().cpu().to(mf.native_dtype(k, v)) for k, v in dsp.items()}
    for k, v in dsp.items():
        if v.dtype.is_floating_point:
            assert mf.is_bf16_exact(v.float()), k
    f1, f2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    meta["drafter_bytes"] = mf.save_st(dsp, os.path.join(d, f2))
    with open(os.path.join(BUNDLED, "model.safetensors.index.json")) as f:
        bundled = json.load(f)["weight_map"]
    wmap = {k: v for k, v in bundled.items() if v == f1}
    nat_main = load_file(os.path.join(BUNDLED, f1))
    total = sum(t.numel() * t.element_size() for t in nat_main.values())
    total += sum(v.numel() * v.element_size() for v in dsp.values())
    wmap.update({k: f2 for k in sorted(dsp)})
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(wmap.items()))}, f, indent=2)
        f.write("\n")
    meta["drafter_tensors"] = len(dsp)
    return d


def fixture(ref, main, target, out, meta):
    """Reference drafts on the bundled held-out fixture's tokens (CPU, fp32, bf16-exact weights);
    target: the Target hooked on main."""
    fx = os.path.join(out, "fixture")
    os.makedirs(fx, exist_ok=True)
    tokens = torch.from_numpy(np.load(os.path.join(TRAINED, "tokens.npy"))).long()
    T, B = tokens.numel(), DSPEC["dspark_block_size"]
    logits, feats = target(tokens.view(1, T))
    meta["fixture_backbone_vs_bundled_logits"] = mf.rel(logits[0], np.load(os.path.join(TRAINED, "logits.npy")))
    feats = feats[0]
    spec = dict(DSPEC)
    base_all, adj_all, tok_all, conf_all, forced_all = [], [], [], [], []
    with torch.no_grad():
        for N in FIXTURE_ANCHORS:
            base, adj, drafts, conf = dsf.draft_round(ref, main, feats, tokens, N, spec)
            forced = tokens[N + 1:N + 1 + B].tolist()
            _, fadj, _, _ = dsf.draft_round(ref, main, feats, tokens, N, spec, forced=forced)
            base_all.append(base)
            adj_all.append(adj)
            tok_all.append(drafts)
            conf_all.append(conf)
            forced_all.append(fadj)
        # the batched training path on the same anchors: one arithmetic with the reference
        N = torch.tensor(FIXTURE_ANCHORS)
        seq_of = torch.zeros_like(N)
        _, b_base = draft_blocks(ref, main, feats.view(1, T, -1), tokens.view(1, T), seq_of, N)
    meta["fixture_batched_vs_reference"] = mf.rel(b_base, torch.stack(base_all))
    meta["fixture_greedy_min_rel_margin"] = dsf.min_rel_margin(adj_all)
    np.save(os.path.join(fx, "tokens.npy"), tokens.numpy().astype(np.int64))
    np.save(os.path.join(fx, "anchors.npy"), np.array(FIXTURE_ANCHORS, dtype=np.int64))
    dsf.save_drafts(fx, base_all, adj_all, tok_all, conf_all, forced_all)


@torch.no_grad()
def heldout_acceptance(ref, main, target, ids, ctx, per, dev, windows):
    """Teacher-forced top-1 agreement with the target per slot, on up to `windows` held-out windows."""
    gen = torch.Generator(device=dev).manual_seed(SEED + 7)
    hits, chains, n = 0, 0, 0
    for p in range(0, min(len(ids) - ctx, windows * ctx), ctx):
        x = torch.tensor(ids[p:p + ctx], device=dev).view(1, -1)
        logits, feats = target(x)
        seq_of, N = anchors_for(1, ctx, per, gen, dev)
        _, _, hit, chain = block_loss(ref, main, logits, feats, x, seq_of, N)
        hits, chains, n = hits + hit, chains + chain, n + 1
    return (hits / n).tolist(), (chains / n).tolist()


# ------------------------------------------------------------------------------------ main
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget-s", type=float, default=420.0, help="whole run, start to last file written")
    ap.add_argument("--reserve-s", type=float, default=50.0, help="kept for export and evaluation")
    ap.add_argument("--steps", type=int, default=0, help="0 = as many as fit the budget")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--anchors", type=int, default=96, help="anchor positions per window")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--conf-weight", type=float, default=0.1)
    ap.add_argument("--corpus-mb", type=float, default=48.0)
    ap.add_argument("--smoke", action="store_true", help="small corpus, 12 steps: checks the pipeline")
    ap.add_argument("--device", default="cuda", help="cuda (the drafter's training) or cpu (pipeline checks)")
    ap.add_argument("--init-from", default="", help="continue from a drafter this script exported (its directory)")
    ap.add_argument("--stages", type=int, default=3,
                    help="drafter stages (V4-Flash-DSpark: 3, against 43 backbone layers; the bundled backbone has 4)")
    args = ap.parse_args()
    if args.stages < 1:
        raise SystemExit(f"--stages {args.stages}: at least 1")
    DSPEC["dspark_stages"] = args.stages
    if args.smoke:
        args.corpus_mb, args.steps = 3.0, 12
        if args.device == "cpu":
            args.batch, args.ctx, args.anchors = 2, 160, 8
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(SEED)
    dev = args.device
    cuda = dev == "cuda"
    import tokenizers
    import transformers
    meta = {"name": NAME, "seed": SEED, "spec": DSPEC, "args": vars(args), "torch": torch.__version__,
            "transformers": transformers.__version__, "device": torch.cuda.get_device_name(0) if cuda else "cpu"}
    log(meta["device"], "torch", torch.__version__, "transformers", transformers.__version__)

    # ---- corpus (train_dsv4's split), the bundled tokenizer
    files, _ = td.corpus_files(int(args.corpus_mb * 1e6))
    train = [t for r, p, t in files if not td.held_out(r, p)]
    tok = tokenizers.Tokenizer.from_file(os.path.join(BUNDLED, "tokenizer.json"))
    stream = []
    for e in tok.encode_batch(train, add_special_tokens=False):
        stream.extend(e.ids)
        stream.append(1)
    data = torch.tensor(stream, dtype=torch.int64, device=dev)
    heldout_ids = np.load(os.path.join(TRAINED, "heldout_ids.npy")).tolist()
    meta["corpus"] = {"files": len(files), "train_files": len(train), "train_tokens": len(stream),
                      "heldout_tokens": len(heldout_ids)}
    log("corpus", meta["corpus"])

    # ---- frozen backbone, drafter
    main_m = DeepseekV4ForCausalLM(mf.hf_config(td.SPEC)).float()
    try:
        main_m.set_experts_implementation("eager")
    except Exception as ex:  # noqa: BLE001
        log("set_experts_implementation:", ex)
    load_backbone(main_m, BUNDLED)
    main_m.eval().requires_grad_(False)
    ref = dsf.DSparkReference(mf.hf_config(td.SPEC, mtp=True), DSPEC).float()
    gen = torch.Generator().manual_seed(SEED)
    td.init_(ref, gen, len(td.SPEC["layers"]))
    if args.init_from:
        load_drafter(ref, args.init_from)
        meta["warm_start_tensors_per_stage"] = 0
        meta["init_from"] = args.init_from
    else:
        meta["warm_start_tensors_per_stage"] = warm_start(ref, main_m)
    for layer in ref.stages:
        layer.self_attn.forward = types.MethodType(batched_attention, layer.self_attn)
    main_m.to(dev)
    ref.to(dev)
    target = Target(main_m)
    torch.backends.cuda.matmul.allow_tf32 = False
    with torch.no_grad():
        fx_tokens = torch.from_numpy(np.load(os.path.join(TRAINED, "tokens.npy"))).long().to(dev)
        lg, _ = target(fx_tokens.view(1, -1))
        meta["backbone_vs_bundled_logits"] = mf.rel(lg[0].cpu(), np.load(os.path.join(TRAINED, "logits.npy")))
    log("backbone vs bundled held-out logits", meta["backbone_vs_bundled_logits"])
    if meta["backbone_vs_bundled_logits"] > 1e-3:
        raise SystemExit("the backbone does not reproduce the bundled logits")
    n_params = sum(p.numel() for p in ref.parameters())
    meta["drafter_params"] = n_params
    log("drafter params", n_params, "warm-started tensors per stage", meta["warm_start_tensors_per_stage"])

    # ---- training
    loads = td.RouterLoads(ref)
    opt = torch.optim.AdamW(td.param_groups(ref, 0.1), lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=cuda)
    torch.backends.cuda.matmul.allow_tf32 = True
    bgen = torch.Generator(device=dev).manual_seed(SEED + 1)
    agen = torch.Generator(device=dev).manual_seed(SEED + 2)
    Bs, C = args.batch, args.ctx
    warmup = 50 if not args.smoke else 3
    lr_at = td.warmup_cosine(args.lr, warmup, 0.05)

    total = args.steps if args.steps else 10 ** 9
    history = []
    ref.train()
    t_train = time.time()
    step = 0
    t_meas = None
    while step < total:
        if step == 20 and not args.steps:
            if cuda:
                torch.cuda.synchronize()
            per = (time.time() - t_meas) / 15
            left = args.budget_s - (time.time() - T0) - args.reserve_s
            total = step + max(1, int(left / per))
            log(f"{per * 1000:.1f} ms/step -> total steps {total}")
        if step == 5:
            if cuda:
                torch.cuda.synchronize()
            t_meas = time.time()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total if total < 10 ** 9 else 2000)
        off = torch.randint(0, data.numel() - C - 1, (Bs,), device=dev, generator=bgen)
        x = data[off.view(-1, 1) + torch.arange(C, device=dev).view(1, -1)]
        logits, feats = target(x)
        seq_of, N = anchors_for(Bs, C, args.anchors, agen, dev)
        loss_draft, loss_conf, hit, chain = block_loss(ref, main_m, logits, feats, x, seq_of, N)
        loss = loss_draft + args.conf_weight * loss_conf
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        opt.step()
        loads.update(1e-3)
        if step % 50 == 0 or step == total - 1:
            rec = {"step": step, "loss": loss_draft.item(), "conf_loss": loss_conf.item(), "grad_norm": gn.item(),
                   "lr": opt.param_groups[0]["lr"], "top1": [round(v, 4) for v in hit.tolist()],
                   "chain": [round(v, 4) for v in chain.tolist()], "t": round(time.time() - T0, 1)}
            history.append(rec)
            log(json.dumps(rec))
            if not math.isfinite(rec["loss"]):
                raise SystemExit("loss is not finite")
        step += 1
    if cuda:
        torch.cuda.synchronize()
    meta["train"] = {"steps": step, "batch": Bs, "ctx": C, "anchors_per_window": args.anchors, "lr": args.lr,
                     "warmup": warmup, "seconds": time.time() - t_train, "history": history}
    log("training done", meta["train"]["seconds"], "s")

    # ---- bf16 weights, held-out agreement, export, fixture
    ref.eval()
    td.round_bf16_(ref)
    torch.backends.cuda.matmul.allow_tf32 = False
    top1, chain = heldout_acceptance(ref, main_m, target, heldout_ids, C, 64, dev, 4 if args.smoke else 10 ** 6)
    meta["heldout"] = {"teacher_forced_top1_per_slot": top1, "chain_per_slot": chain,
                       "expected_tokens_per_round_k5": 1 + sum(chain)}
    log("held-out", meta["heldout"])
    d = export(ref, args.out, meta)
    main_m.cpu()
    ref.cpu()
    for layer in ref.stages:
        layer.self_attn.dspark = {}
    fixture(ref, main_m, target, args.out, meta)
    log("fixture: batched vs reference", meta["fixture_batched_vs_reference"], "backbone vs bundled",
        meta["fixture_backbone_vs_bundled_logits"], "min greedy margin", meta["fixture_greedy_min_rel_margin"])
    meta["seconds_total"] = time.time() - T0
    with open(os.path.join(args.out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    log("done:", d)


if __name__ == "__main__":
    main()
