// tok_expected.mjs - reference ids for test_tokenizer: every line of a
// corpus.jsonl encoded by npm @huggingface/tokenizers (the implementation
// that made shared/data/tokenizers/*/expected.jsonl).  Run at test time
// (tests/unit/test_tok_npm.py), so that the multi-MB tokenizer files stay
// in node_modules, not in the repository.
//
//   node tok_expected.mjs TOKENIZER.json CONFIG.json CORPUS.jsonl OUT.jsonl [--lenml]
//
// OUT lines: {"text", "ids" (add_special_tokens=false), "ids_special"
// (true), "decoded" (tokenizers' decode of ids, no clean-up)}.  --lenml
// also encodes every line with @lenml/tokenizers (a transformers.js fork)
// as a second opinion and exits 1 when the two disagree on any line; the
// test leaves it out, as it doubles the time.
import fs from "node:fs";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const [tjPath, tcPath, corpus, out, opt] = process.argv.slice(2);
if (!out) {
  console.error("usage: tok_expected.mjs TOKENIZER.json CONFIG.json CORPUS.jsonl OUT.jsonl [--lenml]");
  process.exit(2);
}
const tj = JSON.parse(fs.readFileSync(tjPath, "utf8"));
const tc = JSON.parse(fs.readFileSync(tcPath, "utf8"));
const { Tokenizer } = require("@huggingface/tokenizers");
const hf = new Tokenizer(tj, tc);
let lm = null;
if (opt === "--lenml") {
  const { TokenizerLoader } = require("@lenml/tokenizers");
  lm = TokenizerLoader.fromPreTrained({ tokenizerJSON: tj, tokenizerConfig: tc });
}

const lines = fs.readFileSync(corpus, "utf8").split("\n").filter((l) => l.length);
const fd = fs.openSync(out, "w");
let agree = 0;
for (const l of lines) {
  const { text } = JSON.parse(l);
  const ids = hf.encode(text, { add_special_tokens: false }).ids;
  const sp = hf.encode(text, { add_special_tokens: true }).ids;
  const decoded = ids.length ? hf.decode(ids, { skip_special_tokens: false,
    clean_up_tokenization_spaces: false }) : "";
  if (lm) {
    const lids = Array.from(lm.encode(text, { add_special_tokens: false }));
    const lsp = Array.from(lm.encode(text, { add_special_tokens: true }));
    if (JSON.stringify([ids, sp]) === JSON.stringify([lids, lsp]))
      agree++;
  }
  fs.writeSync(fd, JSON.stringify({ text, ids, ids_special: sp, decoded }) + "\n");
}
fs.closeSync(fd);
if (lm)
  console.log(`${tjPath}: hf ${lines.length} lines, lenml agrees on ${agree}`);
process.exit(!lm || agree === lines.length ? 0 : 1);
