// gguf_tokenize.mjs - llama.cpp's tokenization (node-llama-cpp, vocabulary
// only: no tensor is read) of many texts, to compare a served model.gguf's
// tokenizer.* keys with the Hugging Face tokenizer they came from.
//
// usage: node gguf_tokenize.mjs FILE.gguf TEXTS.json
// TEXTS: a JSON list of strings.  Prints {"ids": [[...], ...]} (each text
// as model.tokenize(text, true): no BOS, special-token text parsed),
// "add_bos" (whether llama.cpp prepends BOS), or {"error"}.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const { getLlama, LlamaLogLevel } = await import(pathToFileURL(path.join(
    here, "node_modules", "node-llama-cpp", "dist", "index.js")).href);

const [file, textsFile] = process.argv.slice(2);
const texts = JSON.parse(fs.readFileSync(textsFile, "utf8"));
const llama = await getLlama({ gpu: false, build: "never",
                               logLevel: LlamaLogLevel.error });
try {
    const model = await llama.loadModel({ modelPath: file, vocabOnly: true });
    // special: true parses added-token text as Hugging Face always does
    const ids = texts.map((t) => Array.from(model.tokenize(t, true), Number));
    console.log(JSON.stringify({ ids,
        add_bos: model.tokens.shouldPrependBosToken,
        bos: model.tokens.bos == null ? null : Number(model.tokens.bos) }));
    await model.dispose();
} catch (e) {
    console.log(JSON.stringify({ error: String(e) }));
}
