#!/usr/bin/env python3
"""Build a tiny DeepseekV4ForCausalLM with transformers and save it exactly as
transformers saves it (HF naming, BF16). The result is the oracle for kiln's
HF-name rules and transformers-form config parsing.

Run on the GPU machine (transformers 5.17):
    python3 tools/hf_reference_artifact.py OUT_DIR
Writes OUT_DIR/hf_tiny_bf16/{config.json,model.safetensors}, OUT_DIR/names.json
(tensor name -> [dtype, shape]) and OUT_DIR/default_config.json (the
transformers default config, i.e. the V4-Flash shapes in transformers' form).
Fixed seed; deterministic.
"""
import inspect
import json
import os
import sys

import torch
import transformers
from transformers import DeepseekV4Config, DeepseekV4ForCausalLM

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
torch.manual_seed(0)

sig = inspect.signature(DeepseekV4Config.__init__)
with open(os.path.join(out, "config_signature.txt"), "w") as f:
    f.write(f"transformers {transformers.__version__}\n")
    for name, p in sig.parameters.items():
        f.write(f"{name} = {p.default!r}\n")

default = DeepseekV4Config()
with open(os.path.join(out, "default_config.json"), "w") as f:
    f.write(default.to_json_string())

# Tiny dims, with the layer schedule [HCA, CSA, SWA, CSA] and 1 hash layer.
# Written through the documented constructor arguments; whatever the config
# derives (layer_types ...) comes from transformers itself.
params = sig.parameters
want = dict(
    vocab_size=256, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=1, head_dim=64, qk_rope_head_dim=16, q_lora_rank=32,
    o_lora_rank=16, o_groups=2, sliding_window=8, n_routed_experts=4,
    num_experts_per_tok=2, n_shared_experts=1, moe_intermediate_size=32,
    num_hash_layers=1, index_n_heads=16, index_head_dim=16, index_topk=4,
    hc_mult=4, num_nextn_predict_layers=1, max_position_embeddings=512,
)
kw = {k: v for k, v in want.items() if k in params}
missing = sorted(set(want) - set(kw))
if "compress_ratios" in params:
    kw["compress_ratios"] = [16, 4, 0, 4, 0]
if "compress_rates" in params:
    kw["compress_rates"] = default.to_dict().get("compress_rates")
if "layer_types" in params:
    lt = default.to_dict().get("layer_types")
    if lt:
        names = sorted(set(lt))
        kw["layer_types"] = None
print("constructor args not found:", missing)
try:
    cfg = DeepseekV4Config(**kw)
except Exception as e:  # report and retry with fewer overrides
    print("config with layer args failed:", repr(e))
    kw.pop("compress_ratios", None); kw.pop("layer_types", None); kw.pop("compress_rates", None)
    cfg = DeepseekV4Config(**kw)
print(cfg)
model = DeepseekV4ForCausalLM(cfg).to(torch.bfloat16)
sd = model.state_dict()
with open(os.path.join(out, "names.json"), "w") as f:
    json.dump({k: [str(v.dtype), list(v.shape)] for k, v in sd.items()}, f, indent=1)
model.save_pretrained(os.path.join(out, "hf_tiny_bf16"))
print("saved", len(sd), "tensors")
