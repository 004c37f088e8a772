// gguf_client.mjs - llama.cpp (node-llama-cpp's CPU prebuilt) reading a
// model.gguf served by a quantfs mount, with default settings (mmap on).
//
// usage: node gguf_client.mjs FILE.gguf REQUEST.json
// REQUEST: {"prompt": TEXT, "n": N, "windows": [[ids...], ...]}
// Prints one JSON object: "prompt_ids" (llama.cpp's tokenization of the
// prompt, with BOS when the model wants one), "gen_ids" (greedy
// continuation) with "prompt_s" and "gen_tok_s" (its timing), "nll" and "tokens" (the mean negative log-likelihood of
// each window's tokens after the first, from llama.cpp's full next-token
// probabilities at temperature 1, no truncation), with REQUEST "probs":
// true also "probs" (the first window's next-token distributions, one
// vocabulary-long row per position), or "error".
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const { getLlama, LlamaLogLevel } = await import(pathToFileURL(path.join(
    here, "node_modules", "node-llama-cpp", "dist", "index.js")).href);

const [file, reqFile] = process.argv.slice(2);
const req = JSON.parse(fs.readFileSync(reqFile, "utf8"));
const out = {};
const llama = await getLlama({ gpu: false, build: "never",
                               logLevel: LlamaLogLevel.error });
try {
    const model = await llama.loadModel({ modelPath: file });
    const ctx = await model.createContext({ contextSize: 512 });
    let seq = ctx.getSequence();
    const bos = model.tokens.bos;
    const ids = model.tokenize(req.prompt);
    const input = bos != null && model.tokens.shouldPrependBosToken ?
        [bos, ...ids] : ids;
    out.prompt_ids = input.map(Number);
    out.gen_ids = [];
    const t0 = performance.now();
    let tFirst = null;
    for await (const tok of seq.evaluate(input, { temperature: 0 })) {
        if (tFirst === null)
            tFirst = performance.now();
        out.gen_ids.push(Number(tok));
        if (out.gen_ids.length >= req.n)
            break;
    }
    // prompt evaluation + first token, then the rest one by one
    out.prompt_s = (tFirst - t0) / 1000;
    out.gen_tok_s = out.gen_ids.length > 1 ?
        (out.gen_ids.length - 1) / ((performance.now() - tFirst) / 1000) :
        null;
    let nll = 0, count = 0;
    const opts = { temperature: 1, topK: 0, topP: 1, minP: 0 };
    for (const w of req.windows ?? []) {
        await seq.clearHistory();
        const items = w.map((t, i) => i < w.length - 1 ?
            [t, { generateNext: { probabilities: true, options: opts } }] : t);
        const res = await seq.controlledEvaluate(items);
        if (req.probs && out.probs === undefined) {
            // the first window's full next-token distributions
            const nv = model.tokens.vocab?.length ?? model.fileInfo.metadata
                .tokenizer?.ggml?.tokens?.length ?? 0;
            out.probs = [];
            for (let i = 0; i + 1 < w.length; i++) {
                const row = new Array(nv).fill(0);
                for (const [t, p] of res[i]?.next?.probabilities ?? [])
                    if (t < nv)
                        row[t] = p;
                out.probs.push(row);
            }
        }
        for (let i = 0; i + 1 < w.length; i++) {
            const p = res[i]?.next?.probabilities?.get(w[i + 1]) ?? 0;
            nll -= Math.log(Math.max(p, 1e-30));
            count++;
        }
    }
    out.nll = count ? nll / count : null;
    out.tokens = count;
    out.arch = model.fileInfo.metadata.general.architecture;
    await ctx.dispose();
    await model.dispose();
} catch (e) {
    out.error = String(e?.message ?? e);
}
// synchronously, to the last byte: process.exit() drops what a pipe has
// not taken yet, and a non-blocking pipe takes 64 KiB at a time
const buf = Buffer.from(JSON.stringify(out) + "\n");
for (let off = 0; off < buf.length;) {
    try {
        off += fs.writeSync(1, buf, off);
    } catch (e) {
        if (e.code !== "EAGAIN")
            throw e;
    }
}
await llama.dispose();
process.exit(out.error ? 1 : 0);
