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

# Tiny dims with the layer schedule [HCA, CSA, SWA, CSA], one hash-routed layer, HCA
# rate 16, rope on 16 of 64 dims, YaRN on the compressed layers: written through the
# config's own fields (layer_types, mlp_layer_types, compress_rates, rope_parameters).
cfg = DeepseekV4Config(
    vocab_size=256, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=1, head_dim=64, partial_rotary_factor=0.25, q_lora_rank=32,
    o_lora_rank=16, o_groups=2, sliding_window=8, n_routed_experts=4,
    num_experts_per_tok=2, n_shared_experts=1, moe_intermediate_size=32,
    index_n_heads=16, index_head_dim=16, index_topk=4, hc_mult=4,
    num_nextn_predict_layers=1, max_position_embeddings=4096,
    layer_types=["heavily_compressed_attention", "compressed_sparse_attention",
                 "sliding_attention", "compressed_sparse_attention"],
    mlp_layer_types=["hash_moe", "moe", "moe", "moe"],
    compress_rates={"compressed_sparse_attention": 4, "heavily_compressed_attention": 16},
    rope_parameters={"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 65536,
                     "beta_fast": 32.0, "beta_slow": 1.0},
)
print(cfg)
model = DeepseekV4ForCausalLM(cfg)
with torch.no_grad():  # transformers zero/one-initialises many parameters: randomise all
    for name, p in model.named_parameters():
        if p.dtype.is_floating_point:
            p.normal_(0.0, 0.05)
model = model.to(torch.bfloat16)
sd = model.state_dict()
with open(os.path.join(out, "names.json"), "w") as f:
    json.dump({k: [str(v.dtype), list(v.shape)] for k, v in sd.items()}, f, indent=1)
model.save_pretrained(os.path.join(out, "hf_tiny_bf16"))
print("saved", len(sd), "tensors")
