#!/usr/bin/env python3
"""Train kiln's bundled small DeepSeek-V4 model (kiln issue 8) on one GPU in one 10-minute call.

    PYTHONUNBUFFERED=1 python3 tools/train/train_dsv4.py --out $OUT [--budget-s 545] [--steps N] [--smoke]

(the bundled model: --batch 64 --budget-s 545, which fixed 2632 steps on an H100; docs/model.md
has the exact command and its output).

Everything happens in this one command, with fixed seeds:
  1. corpus: every *.py under /usr/lib/python3*/ (sorted; then the running interpreter's
     site-packages until --corpus-mb), UTF-8-valid files only; a file is held out when
     sha1(its path relative to its root)[0] < 6 (about 2.3%) and is never trained on;
  2. tokenizer: byte-level BPE (HF tokenizers), vocab 4096 including three special tokens
     (BOS 0, EOS 1, PAD 2), with DeepSeek-V3's pre-tokenizer (three Split regexes, then
     ByteLevel without its own regex), trained on the training split only;
  3. model: transformers' DeepseekV4ForCausalLM (every V4 feature: mHC with Sinkhorn,
     SWA / CSA (ratio 4, lightning indexer) / HCA layers, a hash-routed first layer,
     sqrtsoftplus + bias routed MoE with a shared expert) plus one MTP block
     (make_fixtures.MTPReference: DeepSeek's MTPBlock on transformers' decoder layer),
     trained jointly: loss = CE(main, t+1) + MTP_WEIGHT * CE(mtp, t+2) (DeepSeek-V3 MTP: the
     block sees the main model's last-layer streams at t and the embedding of token t+1;
     its gradient flows into the trunk). Routing balance is DeepSeek's auxiliary-loss-free
     bias update (e_score_correction_bias += gamma * sign(mean load - load)).
     TF32 matmuls in training; the number of steps is fixed from the measured speed of the
     first steps so the run fits --budget-s (pass --steps to repeat a run exactly).
  4. export (into --out): DeepSeek-native BF16 checkpoint (make_fixtures' naming and
     dtypes: hc_*, attn_sink, ape, gate.bias F32 holding bf16-exact values), kiln/DeepSeek
     native config.json; fp32 training checkpoint shards (resume with
     --resume DIR: weights, routing biases and step; Adam moments are not saved, they do
     not fit the 64 MiB the GPU machine can hand back); bundle.tar.gz with the held-out
     fixture (tokens.npy, logits.npy, mtp_logits.npy: PyTorch fp32 on the CPU from the
     exported BF16 weights), tokenizer.json, config.json, the shard index, heldout.txt + heldout_ids.npy (HF tokenizer ids of it),
     PyTorch's held-out perplexity (fp32 math from the BF16 weights, windows of --ctx),
     meta.json and the training log.
"""
import argparse
import copy
import hashlib
import io
import json
import math
import os
import sys
import sysconfig
import tarfile
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import make_fixtures as mf  # noqa: E402  (hf_config, native_config, MTPReference, naming)

from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import DeepseekV4ForCausalLM  # noqa: E402
from transformers.models.deepseek_v4 import modeling_deepseek_v4 as mdv4  # noqa: E402

NAME = "kiln-dsv4-mini"
SEED = 20261122
MTP_WEIGHT = 0.3
BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"
# DeepSeek-V3's tokenizer.json pre-tokenizer regexes, verbatim.
DEEPSEEK_SPLITS = [
    '\\p{N}{1,3}',
    '[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+',
    '[!"#$%&\'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+'
    '| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+',
]

# The model. Sized so the BF16 checkpoint plus its deepseek-native (FP8 + MXFP4) flavour stay
# under 25 MB together (docs/model.md): embed/head stay BF16 in both, so the vocabulary is 4096
# and hidden 256; routed experts (MXFP4 in the quantized flavour) carry most of the rest.
SPEC = dict(
    name=NAME, seed=SEED, T=64,
    vocab_size=4096, hidden_size=256, num_attention_heads=4, head_dim=64, qk_rope_head_dim=16,
    q_lora_rank=128, o_lora_rank=64, o_groups=2, sliding_window=128,
    layers=["swa", "csa", "hca", "csa"], num_hash_layers=1, hca_rate=16,
    n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=96,
    index_n_heads=16, index_head_dim=32, index_topk=8,
    rope_theta=10000.0, compress_rope_theta=160000.0,
    yarn=dict(factor=4.0, original_max_position_embeddings=512, beta_fast=32, beta_slow=1),
    routed_scaling_factor=1.5, swiglu_limit=10.0, hc_sinkhorn_iters=20,
)


def log(*a):
    print(f"[{time.time() - T0:7.1f}s]", *a, flush=True)


T0 = time.time()


# ------------------------------------------------------------------------------------------ data
def corpus_files(cap_bytes):
    """[(root, relpath, text)] in a fixed order: /usr/lib/python3*/ then site-packages."""
    roots = sorted(p for p in (os.path.join("/usr/lib", d) for d in os.listdir("/usr/lib"))
                   if os.path.basename(p).startswith("python3") and os.path.isdir(p))
    site = sysconfig.get_paths().get("purelib")
    if site and os.path.isdir(site) and site not in roots:
        roots.append(site)
    out, total = [], 0
    for root in roots:
        paths = []
        for dp, dns, fns in os.walk(root):
            dns.sort()
            for fn in sorted(fns):
                if fn.endswith(".py"):
                    paths.append(os.path.join(dp, fn))
        for p in paths:
            try:
                if os.path.islink(p) or os.path.getsize(p) > 1_000_000 or os.path.getsize(p) == 0:
                    continue
                with open(p, "rb") as f:
                    text = f.read().decode("utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            if "\x00" in text:
                continue
            out.append((root, os.path.relpath(p, root), text))
            total += len(text.encode())
            if total >= cap_bytes:
                return out, roots
    return out, roots


def held_out(root, rel):
    return hashlib.sha1(f"{os.path.basename(root.rstrip('/'))}/{rel}".encode()).digest()[0] < 6


def train_tokenizer(texts, vocab):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated", invert=False) for r in DEEPSEEK_SPLITS]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, min_frequency=2, special_tokens=[BOS, EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    assert tok.token_to_id(BOS) == 0 and tok.token_to_id(EOS) == 1 and tok.token_to_id(PAD) == 2
    assert tok.get_vocab_size() == vocab, tok.get_vocab_size()
    return tok


# ------------------------------------------------------------------------------------------ model
def init_(module, gen, n_layers):
    """Deterministic initialisation of every float parameter/buffer (sorted names)."""
    sd = module.state_dict(keep_vars=True)
    out_std = 0.02 / math.sqrt(2 * (n_layers + 1))
    for name in sorted(sd):
        t = sd[name]
        leaf = name.rsplit(".", 1)[-1]
        with torch.no_grad():
            if leaf == "tid2eid":
                E, K = SPEC["n_routed_experts"], SPEC["num_experts_per_tok"]
                rows = [torch.randperm(E, generator=gen)[:K] for _ in range(t.shape[0])]
                t.copy_(torch.stack(rows).to(t.dtype))
                continue

            def normal(std):
                return torch.randn(t.shape, generator=gen) * std

            if leaf == "weight" and t.dim() == 1:                     # RMSNorm
                v = torch.ones(t.shape)
            elif leaf in ("fn", "hc_fn"):
                v = normal(0.02)
            elif leaf in ("base", "hc_base", "sinks", "position_bias", "e_score_correction_bias"):
                v = torch.zeros(t.shape)
            elif leaf in ("scale", "hc_scale"):
                v = torch.ones(t.shape)
            elif leaf == "down_proj" and t.dim() == 3:
                v = normal(out_std)
            elif name.endswith(("o_b_proj.weight", "down_proj.weight")):
                v = normal(out_std)
            elif t.dim() >= 2:
                v = normal(0.02)
            else:
                raise RuntimeError(f"no init rule for {name} {tuple(t.shape)}")
            t.copy_(v.to(t.dtype))


class Trainee(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.cfg = mf.hf_config(SPEC)
        self.mcfg = mf.hf_config(SPEC, mtp=True)
        self.main = DeepseekV4ForCausalLM(self.cfg).float()
        try:
            self.main.set_experts_implementation("eager")
        except Exception as ex:  # noqa: BLE001
            log("set_experts_implementation:", ex)
        self.mtp = mf.MTPReference(self.mcfg).float()
        self._streams = None
        self.main.model.hc_head.register_forward_pre_hook(self._grab)

    def _grab(self, m, args):
        self._streams = args[0]

    def forward(self, x):
        """x [B, T]: main logits [B, T, V] and MTP logits [B, T-1, V] (row i predicts x[i+2])."""
        B, T = x.shape
        logits = self.main(input_ids=x, use_cache=False).logits
        streams = self._streams
        pos = torch.arange(T - 1, device=x.device).view(1, -1).expand(B, -1)
        mtp_logits = self.mtp(self.main, streams[:, :T - 1], x[:, 1:], pos)
        return logits, mtp_logits


class RouterLoads:
    """Expert loads per score-routed router, for the auxiliary-loss-free bias update."""

    def __init__(self, model):
        self.routers = [m for m in model.modules() if isinstance(m, mdv4.DeepseekV4TopKRouter)]
        self.loads = {}
        for r in self.routers:
            r.register_forward_hook(self._hook)

    def _hook(self, m, args, out):
        if m.training:
            self.loads[id(m)] = torch.bincount(out[2].reshape(-1), minlength=m.num_experts).float()

    @torch.no_grad()
    def update(self, gamma):
        for r in self.routers:
            load = self.loads.get(id(r))
            if load is not None:
                r.e_score_correction_bias += gamma * torch.sign(load.mean() - load)
        self.loads.clear()


def warmup_cosine(lr, warmup, floor):
    """Learning rate at a step of `total`: linear warm-up over `warmup` steps, then a cosine
    from lr down to floor * lr at the last step."""
    def at(step, total):
        if step < warmup:
            return lr * (step + 1) / warmup
        prog = min(1.0, (step - warmup) / max(1, total - warmup))
        return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * prog)))
    return at


def param_groups(model, wd):
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


# ------------------------------------------------------------------------------------------ export
def native_tensors(trainee):
    """DeepSeek-native names and dtypes (make_fixtures' mapping): (main dict, mtp dict)."""
    main_sd = {k: v.detach().cpu() for k, v in trainee.main.state_dict().items()}
    mtp_sd = {k: v.detach().cpu() for k, v in trainee.mtp.state_dict().items()}
    L, I = len(SPEC["layers"]), SPEC["moe_intermediate_size"]
    main_nat, mtp_nat = {}, {}
    for k, v in main_sd.items():
        if k in mf.TOP_RENAME:
            main_nat[mf.TOP_RENAME[k]] = v
    for li in range(L):
        pre = f"model.layers.{li}."
        main_nat.update(mf.native_layer(f"layers.{li}.", {k[len(pre):]: v for k, v in main_sd.items()
                                                           if k.startswith(pre)}, I))
    covered = set(mf.TOP_RENAME) | {k for k in main_sd if k.startswith("model.layers.")}
    assert covered == set(main_sd), set(main_sd) - covered
    mtp_nat.update(mf.native_layer("mtp.0.", {k[len("layer."):]: v for k, v in mtp_sd.items()
                                              if k.startswith("layer.")}, I))
    for k, v in mtp_sd.items():
        if not k.startswith("layer."):
            mtp_nat["mtp.0." + mf.MTP_EXTRA_RENAME[k]] = v
    main_nat = {k: v.to(mf.native_dtype(k, v)) for k, v in main_nat.items()}
    mtp_nat = {k: v.to(mf.native_dtype(k, v)) for k, v in mtp_nat.items()}
    return main_nat, mtp_nat


def round_bf16_(module):
    with torch.no_grad():
        for t in module.state_dict().values():
            if t.dtype.is_floating_point:
                t.copy_(t.to(torch.bfloat16).to(t.dtype))


def save_ckpt(trainee, step, out, max_bytes=15_500_000):
    """fp32 training state in shards of at most max_bytes (the GPU machine returns <= 16 MiB a file)."""
    sd = {k: v.detach().float().cpu().contiguous() if v.dtype.is_floating_point else v.detach().cpu().contiguous()
          for k, v in trainee.state_dict().items()}
    shards, cur, size = [], {}, 0
    for k in sorted(sd):
        n = sd[k].numel() * sd[k].element_size()
        if cur and size + n > max_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[k], size = sd[k], size + n
    shards.append(cur)
    for f in os.listdir(out):
        if f.startswith("ckpt-"):
            os.remove(os.path.join(out, f))
    for i, s in enumerate(shards):
        save_file(s, os.path.join(out, f"ckpt-{i + 1}-of-{len(shards)}.safetensors"),
                  metadata={"step": str(step), "spec": json.dumps(SPEC)})


def load_ckpt(trainee, d):
    sd, step = {}, 0
    for f in sorted(os.listdir(d)):
        if f.startswith("ckpt-") and f.endswith(".safetensors"):
            sd.update(load_file(os.path.join(d, f)))
            from safetensors import safe_open
            with safe_open(os.path.join(d, f), "pt") as h:
                step = int(h.metadata()["step"])
    trainee.load_state_dict(sd)
    return step


@torch.no_grad()
def heldout_nll(trainee, ids, ctx, device):
    """Sum of NLL and count over non-overlapping windows of ctx tokens (each from a fresh state;
    the first token of a window is not predicted): the definition `kiln perplexity` uses."""
    tot, n, mtp_hit, mtp_n = 0.0, 0, 0, 0
    for p in range(0, len(ids), ctx):
        w = torch.tensor(ids[p:p + ctx], device=device).view(1, -1)
        if w.shape[1] < 2:
            continue
        logits, mtp_logits = trainee(w)
        tot += float(F.cross_entropy(logits[0, :-1].double(), w[0, 1:], reduction="sum"))
        n += w.shape[1] - 1
        if w.shape[1] >= 3:
            mtp_hit += int((mtp_logits[0, :-1].argmax(-1) == w[0, 2:]).sum())
            mtp_n += w.shape[1] - 2
    return tot, n, mtp_hit, mtp_n


# ------------------------------------------------------------------------------------------ main
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget-s", type=float, default=545.0, help="whole run, start to last file written")
    ap.add_argument("--reserve-s", type=float, default=60.0, help="kept for export and evaluation")
    ap.add_argument("--steps", type=int, default=0, help="0 = as many as fit the budget")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--corpus-mb", type=float, default=48.0)
    ap.add_argument("--heldout-kb", type=float, default=96.0, help="held-out text for perplexity")
    ap.add_argument("--resume", default="")
    ap.add_argument("--smoke", action="store_true", help="small corpus, 30 steps: checks the pipeline")
    args = ap.parse_args()
    if args.smoke:
        args.corpus_mb, args.steps, args.heldout_kb = 6.0, 30, 16.0
    os.makedirs(args.out, exist_ok=True)
    stage = os.path.join("/tmp", "kiln_train_stage")
    if os.path.exists(stage):
        import shutil
        shutil.rmtree(stage)
    os.makedirs(stage)
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    dev = "cuda"
    import tokenizers
    import transformers
    log("torch", torch.__version__, "transformers", transformers.__version__, "tokenizers", tokenizers.__version__,
        torch.cuda.get_device_name(0))
    meta = {"name": NAME, "seed": SEED, "spec": SPEC, "args": vars(args), "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
            "device": torch.cuda.get_device_name(0), "mtp_weight": MTP_WEIGHT}

    # ---- corpus and tokenizer
    files, roots = corpus_files(int(args.corpus_mb * 1e6))
    train = [t for r, p, t in files if not held_out(r, p)]
    held = [(r, p, t) for r, p, t in files if held_out(r, p)]
    listing = "\n".join(f"{'H' if held_out(r, p) else 'T'} {os.path.basename(r.rstrip('/'))}/{p}" for r, p, _ in files)
    meta["corpus"] = {"roots": roots, "files": len(files), "train_files": len(train), "heldout_files": len(held),
                      "train_bytes": sum(len(t.encode()) for t in train),
                      "heldout_bytes": sum(len(t.encode()) for _, _, t in held),
                      "file_list_sha1": hashlib.sha1(listing.encode()).hexdigest()}
    log("corpus", meta["corpus"])
    tok = train_tokenizer(train[::2], SPEC["vocab_size"])
    tok.save(os.path.join(stage, "tokenizer.json"))
    log("tokenizer trained")
    enc = tok.encode_batch(train, add_special_tokens=False)
    stream = []
    for e in enc:
        stream.extend(e.ids)
        stream.append(1)
    data = torch.tensor(stream, dtype=torch.int64, device=dev)
    meta["corpus"]["train_tokens"] = len(stream)
    meta["corpus"]["train_bytes_per_token"] = meta["corpus"]["train_bytes"] / len(stream)
    # held-out text: whole held-out files in listing order up to --heldout-kb, joined by blank lines
    parts, size = [], 0
    for _, _, t in held:
        if size >= args.heldout_kb * 1000:
            break
        parts.append(t)
        size += len(t.encode())
    heldout_text = "\n\n".join(parts)
    heldout_ids = tok.encode(heldout_text, add_special_tokens=False).ids
    meta["heldout"] = {"bytes": len(heldout_text.encode()), "tokens": len(heldout_ids)}
    log("tokens: train", len(stream), "held-out", len(heldout_ids))

    # ---- model
    trainee = Trainee()
    gen = torch.Generator().manual_seed(SEED)
    init_(trainee.main, gen, len(SPEC["layers"]))
    init_(trainee.mtp, gen, len(SPEC["layers"]))
    start_step = load_ckpt(trainee, args.resume) if args.resume else 0
    trainee.to(dev)
    n_main = sum(p.numel() for p in trainee.main.parameters())
    n_mtp = sum(p.numel() for p in trainee.mtp.parameters())
    n_exp = sum(p.numel() for n, p in trainee.named_parameters() if ".experts." in n)
    meta["params"] = {"main": n_main, "mtp": n_mtp, "routed_experts": n_exp}
    log("params", meta["params"])
    loads = RouterLoads(trainee)
    opt = torch.optim.AdamW(param_groups(trainee, 0.1), lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=True)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    bgen = torch.Generator(device=dev).manual_seed(SEED + 1)
    B, C = args.batch, args.ctx
    warmup = 100 if not args.smoke else 5
    lr_at = warmup_cosine(args.lr, warmup, 0.1)

    total = args.steps if args.steps else 10 ** 9
    history = []
    trainee.train()
    t_train = time.time()
    last_ckpt = time.time()
    step = start_step
    while step < total:
        if step == start_step + 20 and not args.steps:
            torch.cuda.synchronize()
            per = (time.time() - t_meas) / 15
            left = args.budget_s - (time.time() - T0) - args.reserve_s
            total = step + max(1, int(left / per))
            log(f"{per * 1000:.1f} ms/step -> total steps {total}")
        if step == start_step + 5:
            torch.cuda.synchronize()
            t_meas = time.time()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total if total < 10 ** 9 else 5000)
        off = torch.randint(0, data.numel() - C - 1, (B,), device=dev, generator=bgen)
        seq = data[off.view(-1, 1) + torch.arange(C + 1, device=dev).view(1, -1)]
        x = seq[:, :C]
        logits, mtp_logits = trainee(x)
        loss_main = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), seq[:, 1:].reshape(-1))
        loss_mtp = F.cross_entropy(mtp_logits.reshape(-1, logits.shape[-1]), seq[:, 2:].reshape(-1))
        loss = loss_main + MTP_WEIGHT * loss_mtp
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(trainee.parameters(), 1.0)
        opt.step()
        loads.update(1e-3)
        if step % 50 == 0 or step == total - 1:
            rec = {"step": step, "loss": loss_main.item(), "mtp_loss": loss_mtp.item(), "grad_norm": gn.item(),
                   "lr": opt.param_groups[0]["lr"], "t": round(time.time() - T0, 1)}
            history.append(rec)
            log(json.dumps(rec))
            if not math.isfinite(rec["loss"]):
                raise SystemExit("loss is not finite")
        step += 1
        if time.time() - last_ckpt > 120:
            save_ckpt(trainee, step, args.out)
            last_ckpt = time.time()
    torch.cuda.synchronize()
    meta["train"] = {"steps": step, "start_step": start_step, "batch": B, "ctx": C, "lr": args.lr,
                     "warmup": warmup, "seconds": time.time() - t_train,
                     "tokens_seen": (step - start_step) * B * C, "history": history}
    log("training done", meta["train"]["seconds"], "s")
    trainee.eval()
    save_ckpt(trainee, step, args.out)

    # ---- export BF16 (native names) from the bf16-rounded weights
    trainee.cpu()
    round_bf16_(trainee)
    main_nat, mtp_nat = native_tensors(trainee)
    f1, f2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    mf.save_st(main_nat, os.path.join(args.out, f1))
    mf.save_st(mtp_nat, os.path.join(args.out, f2))
    tsize = sum(v.numel() * v.element_size() for v in list(main_nat.values()) + list(mtp_nat.values()))
    wmap = {k: f1 for k in sorted(main_nat)}
    wmap.update({k: f2 for k in sorted(mtp_nat)})
    with open(os.path.join(stage, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": tsize}, "weight_map": wmap}, f, indent=2)
        f.write("\n")
    with open(os.path.join(stage, "config.json"), "w") as f:
        json.dump(mf.native_config(SPEC), f, indent=2)
        f.write("\n")
    meta["bf16_bytes"] = tsize
    log("exported BF16", tsize, "bytes")

    # ---- held-out fixture: PyTorch fp32 on the CPU from the bf16 weights
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    T = SPEC["T"]
    fx_ids = torch.tensor(heldout_ids[:T]).view(1, T)
    probes = mf.Probes()
    probes.attach(trainee.main, SPEC["num_experts_per_tok"])
    probes.attach(trainee.mtp, SPEC["num_experts_per_tok"])
    with torch.no_grad():
        probes.on = True
        logits, mtp_logits = trainee(fx_ids)
        probes.on = False
        # the same on the GPU (fp32, no TF32): the fixture must not hinge on summation order
        trainee.to(dev)
        g_logits, g_mtp = trainee(fx_ids.to(dev))
        meta["fixture_cpu_vs_gpu_rel"] = [mf.rel(g_logits.cpu()[0], logits[0]), mf.rel(g_mtp.cpu()[0], mtp_logits[0])]
    ig = [mf.topk_gap(s, SPEC["index_topk"]) for s in probes.indexer]
    rg = [mf.topk_gap(s, SPEC["num_experts_per_tok"]) for s in probes.router]
    meta["fixture"] = {"T": T, "indexer_min_rel_gap": min((g for g, r in ig if r), default=None),
                       "indexer_rows_selecting": sum(r for _, r in ig),
                       "router_min_rel_gap": min((g for g, r in rg if r), default=None)}
    log("fixture", meta["fixture"], "cpu vs gpu", meta["fixture_cpu_vs_gpu_rel"])
    np.save(os.path.join(stage, "tokens.npy"), fx_ids[0].numpy().astype(np.int64))
    np.save(os.path.join(stage, "logits.npy"), logits[0].float().numpy().astype(np.float32))
    np.save(os.path.join(stage, "mtp_logits.npy"), mtp_logits[0].float().numpy().astype(np.float32))

    # ---- held-out perplexity (fp32 math from the bf16 weights, GPU without TF32)
    tot, n, hit, mn = heldout_nll(trainee, heldout_ids, C, dev)
    meta["heldout"].update({"ctx": C, "nll_sum": tot, "scored_tokens": n, "perplexity": math.exp(tot / n),
                            "mtp_top1_accuracy_t_plus_2": hit / max(1, mn)})
    log("held-out", meta["heldout"])
    with open(os.path.join(stage, "heldout.txt"), "w", encoding="utf-8", newline="") as f:
        f.write(heldout_text)
    np.save(os.path.join(stage, "heldout_ids.npy"), np.array(heldout_ids, dtype=np.int64))
    with open(os.path.join(stage, "corpus_files.txt"), "w") as f:
        f.write(listing + "\n")
    meta["seconds_total"] = time.time() - T0
    with open(os.path.join(stage, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    if os.environ.get("KILN_TRAIN_LOG") and os.path.exists(os.environ["KILN_TRAIN_LOG"]):
        with open(os.environ["KILN_TRAIN_LOG"], "rb") as f_in, open(os.path.join(stage, "train.log"), "wb") as f_out:
            f_out.write(f_in.read())
    with tarfile.open(os.path.join(args.out, "bundle.tar.gz"), "w:gz") as tf:
        for fn in sorted(os.listdir(stage)):
            tf.add(os.path.join(stage, fn), arcname=fn)
    log("done; files:", sorted(os.listdir(args.out)))


if __name__ == "__main__":
    main()
