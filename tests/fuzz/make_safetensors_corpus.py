#!/usr/bin/env python3
"""Regenerates the seed corpus for fuzz_safetensors_header: small safetensors file images,
valid ones and one per validation rule. Usage: make_safetensors_corpus.py [OUT_DIR]
(default: corpus/safetensors_header next to this script). Deterministic output."""
import json
import os
import struct
import sys

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "corpus", "safetensors_header")

SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "U16": 2, "I16": 2, "U32": 4, "I32": 4, "U64": 8, "I64": 8,
         "F16": 2, "BF16": 2, "F32": 4, "F64": 8, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1}


def image(header, data=b"", pad=True):
    """header: str or bytes of JSON; padded with spaces to a multiple of 8."""
    h = header.encode() if isinstance(header, str) else header
    if pad:
        h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def pattern(n):
    return bytes((i * 37 + 11) & 0xFF for i in range(n))


def contiguous(tensors, metadata=None):
    """tensors: list of (name, dtype, shape); laid out in order."""
    hdr, off = {}, 0
    if metadata is not None:
        hdr["__metadata__"] = metadata
    for name, dt, shape in tensors:
        n = SIZES[dt]
        for d in shape:
            n *= d
        hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + n]}
        off += n
    return json.dumps(hdr, separators=(",", ":")), off


def main():
    os.makedirs(OUT, exist_ok=True)
    seeds = {}

    # --- valid ---------------------------------------------------------------
    seeds["valid_empty"] = image("{}")
    h, n = contiguous([("model.embed_tokens.weight", "BF16", [4, 8])])
    seeds["valid_one_bf16"] = image(h, pattern(n))
    h, n = contiguous([(f"t.{dt.lower()}", dt, [2, 3]) for dt in SIZES], {"format": "pt", "kiln": "seed"})
    seeds["valid_all_dtypes_metadata"] = image(h, pattern(n))
    h, n = contiguous([("scalar", "F32", []), ("empty", "BF16", [0, 3]), ("after", "I64", [2])])
    seeds["valid_scalar_and_empty"] = image(h, pattern(n))
    # JSON order != offset order, a hole, trailing bytes, an ignored extra field.
    seeds["valid_unsorted_holes_trailing"] = image(
        '{"b":{"dtype":"F16","shape":[4],"data_offsets":[16,24],"extra":{"x":[1,{}]}},'
        '"a":{"dtype":"U8","shape":[2,2],"data_offsets":[0,4]}}', pattern(40))
    # FP8 block-quantised linear with an E8M0 scale (DeepSeek-V4 style), escaped name.
    h, n = contiguous([("layers.0.attn.wq_a.weight", "F8_E4M3", [8, 16]),
                       ("layers.0.attn.wq_a.scale", "F8_E8M0", [1, 1]),
                       ("caf\u00e9.\u00fcber", "F32", [2])], {})
    seeds["valid_fp8_scale_unicode"] = image(h, pattern(n))
    seeds["valid_unpadded_whitespace"] = image(
        ' \n{ "x" : { "shape" : [ 1 ] , "data_offsets" : [ 0 , 2 ] , "dtype" : "I16" } }\t', pattern(2), pad=False)

    # --- invalid -------------------------------------------------------------
    seeds["bad_short_file"] = b"\x05\x00\x00"
    seeds["bad_header_len_zero"] = struct.pack("<Q", 0) + b"{}"
    seeds["bad_header_len_huge"] = struct.pack("<Q", 100_000_001) + b"{}      "
    seeds["bad_header_past_eof"] = struct.pack("<Q", 64) + b'{"a":{}}'
    seeds["bad_malformed_json"] = image('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]', pattern(4))
    seeds["bad_nul_padding"] = image(b"{}\0\0\0\0\0\0", pad=False)
    seeds["bad_top_level_array"] = image("[1,2,3]")
    seeds["bad_duplicate_names"] = image(
        '{"w":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},'
        '"w":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}}', pattern(4))
    seeds["bad_unknown_dtype"] = image('{"w":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}}', pattern(1))
    seeds["bad_negative_dim"] = image('{"w":{"dtype":"F32","shape":[-1,4],"data_offsets":[0,0]}}')
    seeds["bad_numel_overflow"] = image(
        '{"w":{"dtype":"U8","shape":[4294967296,4294967296,4],"data_offsets":[0,0]}}')
    seeds["bad_offsets_reversed"] = image('{"w":{"dtype":"U8","shape":[4],"data_offsets":[8,4]}}', pattern(8))
    seeds["bad_truncated"] = image('{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}', pattern(10))
    seeds["bad_bytes_mismatch"] = image('{"w":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,10]}}', pattern(12))
    seeds["bad_overlap"] = image(
        '{"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},'
        '"b":{"dtype":"U8","shape":[8],"data_offsets":[4,12]}}', pattern(12))
    seeds["bad_metadata_not_string"] = image('{"__metadata__":{"format":1}}')
    seeds["bad_entry_missing_field"] = image('{"w":{"dtype":"F32","data_offsets":[0,4]}}', pattern(4))

    for name, data in sorted(seeds.items()):
        assert len(data) < 4096, name
        with open(os.path.join(OUT, name + ".safetensors"), "wb") as f:
            f.write(data)
    print(f"wrote {len(seeds)} seeds to {OUT}")


if __name__ == "__main__":
    main()
