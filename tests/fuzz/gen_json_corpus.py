#!/usr/bin/env python3
"""Write the seed corpora of fuzz_config, fuzz_index, fuzz_tokenizer_config,
fuzz_gguf_vocab and fuzz_opts into corpus/<parser>/.

Valid inputs (ok-*) give the fuzzer structure to mutate: the embedded
stories260K config, a `quantfs mkmodel` model's files (written by
QUANTFS, default build/mounts/quantfs) and the tokenizers of
../shared/data/tokenizers (QF_SHARED); one bad-* input per rule the
parsers enforce.  Existing files of the same name are overwritten, others
(crash reproducers added by hand) are left alone.
"""
import json
import os
import struct
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
SHARED = os.environ.get("QF_SHARED", os.path.join(ROOT, "..", "shared"))
QUANTFS = os.environ.get("QUANTFS", os.path.join(ROOT, "build", "mounts",
                                                 "quantfs"))


def write(parser, cases):
    out = os.path.join(HERE, "corpus", parser)
    os.makedirs(out, exist_ok=True)
    for name, data in cases.items():
        if isinstance(data, str):
            data = data.encode()
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def js(obj):
    return json.dumps(obj, ensure_ascii=False).encode()


MK = tempfile.mkdtemp(prefix="qfcorpus.")
subprocess.run([QUANTFS, "mkmodel", os.path.join(MK, "m")], check=True,
               stdout=subprocess.DEVNULL)
MK = os.path.join(MK, "m")
TOK = os.path.join(SHARED, "data", "tokenizers")

# ---------------------------------------------------------------- config
stories = json.loads(read(os.path.join(ROOT, "tests", "golden",
                                       "stories260K", "config.json")))


def cfg(**kw):
    c = dict(stories)
    for k, v in kw.items():
        if v is None:
            c.pop(k, None)
        else:
            c[k] = v
    return js(c)


write("config", {
    "ok-stories260k": read(os.path.join(ROOT, "tests", "golden",
                                        "stories260K", "config.json")),
    "ok-mkmodel": read(os.path.join(MK, "config.json")),
    "ok-qwen3": cfg(model_type="qwen3", head_dim=16, num_key_value_heads=2,
                    rope_theta=1000000.0, max_window_layers=28),
    "ok-qwen2-no-head-dim": cfg(model_type="qwen2", head_dim=None),
    "ok-mistral-window": cfg(model_type="mistral", sliding_window=4096),
    "ok-llama3-rope": cfg(rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    "ok-rope-parameters": cfg(rope_theta=None, rope_parameters={
        "rope_theta": 500000.0, "rope_type": "default"}),
    "ok-no-kv-heads": cfg(num_key_value_heads=None, bos_token_id=[1, 2]),
    "bad-not-object": "[1, 2]",
    "bad-json": read(os.path.join(MK, "config.json"))[:100],
    "bad-model-type": cfg(model_type="gpt2"),
    "bad-no-model-type": cfg(model_type=None),
    "bad-hidden-act": cfg(hidden_act="gelu"),
    "bad-heads-kv": cfg(num_key_value_heads=3),
    "bad-head-dim-odd": cfg(head_dim=7),
    "bad-hidden-fraction": cfg(hidden_size=64.5),
    "bad-huge-dim": cfg(vocab_size=1e30),
    "bad-negative-layers": cfg(num_hidden_layers=-5),
    "bad-inf": b'{"model_type": "llama", "hidden_size": 1e999}',
    "bad-rms-eps": cfg(rms_norm_eps=-1),
    "bad-rope-theta": cfg(rope_theta=0),
    "bad-rope-type": cfg(rope_scaling={"rope_type": "yarn", "factor": 4}),
    "bad-rope-params": cfg(rope_scaling={
        "type": "llama3", "factor": 8.0, "low_freq_factor": 4.0,
        "high_freq_factor": 1.0, "original_max_position_embeddings": 8192}),
    "bad-rope-not-object": cfg(rope_scaling=[1]),
})

# ----------------------------------------------------------------- index
def index(wm):
    return js({"metadata": {"total_size": 1234}, "weight_map": wm})


write("index", {
    "ok-two-shards": index({
        "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
        "model.norm.weight": "model-00002-of-00002.safetensors",
        "lm_head.weight": "model-00002-of-00002.safetensors"}),
    "ok-one-shard": index({"a": "model.safetensors"}),
    "ok-unsorted": index({"x": "c.safetensors", "y": "a.safetensors",
                          "z": "b.safetensors", "w": "a.safetensors"}),
    "bad-json": b'{"weight_map": {"a": "model.safe',
    "bad-not-object": b'["model.safetensors"]',
    "bad-no-map": js({"metadata": {}}),
    "bad-map-list": js({"weight_map": ["model.safetensors"]}),
    "bad-empty-map": index({}),
    "bad-slash": index({"a": "sub/model.safetensors"}),
    "bad-dotdot": index({"a": "../model.safetensors"}),
    "bad-suffix": index({"a": "model.bin"}),
    "bad-bare-suffix": index({"a": ".safetensors"}),
    "bad-number": index({"a": 3}),
    "bad-long-name": index({"a": "x" * 300 + ".safetensors"}),
    "bad-empty": b"",
})

# ------------------------------------------------------ tokenizer_config
tc = {"ok-mkmodel-0": b"\x00" + read(os.path.join(MK,
                                                  "tokenizer_config.json"))}
for name in ("tok512", "llama2", "mistral", "qwen3"):
    p = os.path.join(TOK, name, "tokenizer_config.json")
    if os.path.exists(p):
        tc["ok-%s-0" % name] = b"\x00" + read(p)
        tc["ok-%s-1" % name] = b"\x01" + read(p)
tc.update({
    "ok-objects-1": b"\x01" + js({
        "bos_token": {"content": "<|endoftext|>", "lstrip": False},
        "eos_token": {"content": "<|im_start|>"}, "add_bos_token": False,
        "add_eos_token": True, "add_prefix_space": False,
        "chat_template": "{% for m in messages %}{{ m.content }}"
                         "{% endfor %}"}),
    "ok-unknown-token-0": b"\x00" + js({"bos_token": "<zz>", "unk_token": 3,
                                        "pad_token": None}),
    "ok-empty-0": b"\x00{}",
    "bad-not-object-0": b"\x00[]",
    "bad-json-1": b"\x01{\"bos_token\": ",
    "bad-empty-1": b"\x01",
})
write("tokenizer_config", tc)

# ------------------------------------------------------------ gguf_vocab
def gv(arch, n, tj, tcfg=None, config=None):
    b = bytes([arch]) + struct.pack("<H", n - 1) + tj
    if tcfg is not None or config is not None:
        b += b"\x00" + (tcfg or b"")
    if config is not None:
        b += b"\x00" + config
    return b


mk_tj = read(os.path.join(MK, "tokenizer.json"))
mk_tc = read(os.path.join(MK, "tokenizer_config.json"))
mk_cfg = read(os.path.join(MK, "config.json"))
cases = {
    "ok-mkmodel-qwen2": gv(1, 512, mk_tj, mk_tc, mk_cfg),
    "ok-mkmodel-llama-no-config": gv(0, 512, mk_tj),
    "ok-mkmodel-gaps": gv(2, 600, mk_tj, mk_tc),
}
p = os.path.join(TOK, "tok512")
if os.path.exists(p):
    cases["ok-tok512-llama"] = gv(0, 512, read(os.path.join(
        p, "tokenizer.json")), read(os.path.join(p, "tokenizer_config.json")),
        read(os.path.join(ROOT, "tests", "golden", "stories260K",
                          "config.json")))
    cases["ok-tok512-qwen2"] = gv(1, 512, read(os.path.join(
        p, "tokenizer.json")))   # byte fallback: "llama" for any arch
for name in ("json_bytelevel", "json_gpt2", "json_metaspace", "json_sp",
             "json_wordpiece"):
    src = os.path.join(HERE, "corpus", "tokenizer", name)
    if os.path.exists(src):
        cases["seed-" + name] = gv(0, 64, read(src)[1:])
small = {"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2},
                   "merges": ["a b"]},
         "pre_tokenizer": {"type": "ByteLevel"}}
cases.update({
    "ok-small": gv(1, 3, js(small)),
    "bad-id-beyond-rows": gv(1, 2, js(small)),
    "bad-two-tokens-one-id": gv(1, 3, js(dict(small, model=dict(
        small["model"], vocab={"a": 0, "b": 0})))),
    "bad-merge": gv(1, 3, js(dict(small, model=dict(small["model"],
                                                    merges=[1])))),
    "bad-merges-not-list": gv(1, 3, js(dict(small, model=dict(
        small["model"], merges={"a": "b"})))),
    "bad-added-token": gv(1, 3, js(dict(small, added_tokens=[
        {"id": -7, "content": "<x>"}]))),
    # past the embedding rows: left out, as gemma-3-1b's image token
    "ok-added-beyond-rows": gv(1, 3, js(dict(small, added_tokens=[
        {"id": 7, "content": "<x>"}]))),
    # Gemma: no dummy prefix (add_space_prefix false), a literal split
    "ok-gemma-no-prefix": gv(2, 6, js({
        "normalizer": {"type": "Replace", "pattern": {"String": " "},
                       "content": "\u2581"},
        "pre_tokenizer": {"type": "Split", "pattern": {"String": " "},
                          "behavior": "MergedWithPrevious", "invert": False},
        "added_tokens": [{"id": 5, "content": "<image>", "special": True}],
        "model": {"type": "BPE", "byte_fallback": True, "vocab": {
            "<unk>": 0, "<0x41>": 1, "a": 2, "\u2581": 3, "\u2581a": 4},
            "merges": [["\u2581", "a"]]}})),
    "ok-metaspace-never": gv(0, 4, js({
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Metaspace", "replacement": "\u2581",
             "prepend_scheme": "never"}]},
        "model": {"type": "BPE", "byte_fallback": True, "vocab": {
            "<unk>": 0, "a": 1, "\u2581": 2, "\u2581a": 3},
            "merges": ["\u2581 a"]}})),
    "bad-wordpiece": gv(1, 3, js({"model": {"type": "WordPiece",
                                            "vocab": {"a": 0}}})),
    "bad-config-not-object": gv(1, 3, js(small), b"[1]"),
    "bad-not-json": gv(1, 3, b"{\"model\": "),
})
write("gguf_vocab", cases)

# ------------------------------------------------------------------ opts
write("opts", {
    "ok-cache": "cache=/var/cache/quantfs,allow_other",
    "ok-relative": "cache=rel/./c//,calib=t.txt,calib_dir=../sets",
    "ok-fstab": "ro,noauto,nofail,_netdev,x-systemd.automount,"
                "x-systemd.idle-timeout=60,comment=x,allow_other,"
                "cache=/var/cache/quantfs,max_jobs=1",
    "ok-numbers": "cache_map=256M,cache_max=4GB,timeout=2.5e3,threads=8,"
                  "calib_n=16,calib_len=128,calib_seed=42,brecq_iters=0,"
                  "brecq_batch=4,max_jobs=2,max_read=131072",
    "ok-words": "io=direct,backend=cuda,debug,rw,default_permissions,"
                "auto_unmount,fsname=models,subtype=q,user=alice",
    "ok-mixed": "mixed_table=attn=8:mlp=4:other=8,"
                "mixed_roles=*.o_proj=attn:lm_head=head,"
                "mixed_ratio=high=0.2:low=0.4:bits_high=16:bits_mid=8:"
                "bits_low=4",
    "bad-timeout-nan": "timeout=nan",
    "bad-timeout-inf": "timeout=inf",
    "bad-timeout-negative": "timeout=-1",
    "bad-calib-n-suffix": "calib_n=12abc",
    "bad-threads-exponent": "threads=1e3",
    "bad-threads-zero": "threads=0",
    "bad-calib-len-huge": "calib_len=99999999999",
    "bad-cache-map-unit": "cache_map=12Q",
    "bad-brecq-iters-word": "brecq_iters=x",
    "bad-max-jobs-negative": "max_jobs=-3",
    "bad-cache-max-overflow": "cache_max=16777216T",
    "bad-empty-value": "cache=",
    "bad-no-value": "calib_n",
    "bad-flag-value": "allow_other=1",
    "bad-unknown": "blkdev",
    "bad-mixed": "mixed_table=attn=5",
    "bad-control": "io=\n\x7f",
})
