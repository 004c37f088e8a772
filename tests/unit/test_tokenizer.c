/*
 * test_tokenizer.c - the tokenizer against the reference ids of five real
 * tokenizers (shared/data/tokenizers, made by @huggingface/tokenizers),
 * round trips, and hostile tokenizer.json files and text.
 *
 * The shared data dir is argv[1], else $QF_SHARED, else /work/shared;
 * without it the test is skipped (exit 77).
 *
 * `test_tokenizer --cases DIR` runs instead the cases DIR/cases.json lists
 * ([{"name", "vocab", "bos", "eos"}], each with DIR/<name>/tokenizer.json
 * and expected.jsonl, the text in DIR/corpus.jsonl): test_tok_npm.py makes
 * them at test time from the npm tokenizer packages (Gemma 2/3, Phi-3),
 * with the reference's own decode in "decoded", which the decode must
 * equal instead of the text.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "check.h"
#include "common.h"
#include "tok.h"

struct tok_case {
	const char *name;
	size_t vocab;
	int32_t bos;
	int32_t eos;
	int roundtrip_fail[4];	/* corpus lines decode cannot give back, -1 */
};

/*
 * Round trips the reference cannot make either: sentencepiece models
 * prepend "▁" to each piece between added tokens (line 429 has "<s>" and
 * "</s>" literals), and Qwen's NFC rewrites line 292 (Bengali U+09DF).
 */
static const struct tok_case cases[] = {
	{ "tok512", 512, 1, 2, { 429, -1 } },
	{ "llama2", 32000, 1, 2, { 429, -1 } },
	{ "mistral", 32000, 1, 2, { 429, -1 } },
	{ "llama3", 128256, 128000, 128001, { -1 } },
	{ "qwen3", 151669, -1, 151643, { 292, -1 } },
};

struct line {
	char *text;
	size_t len;
};

static struct line *lines;
static size_t nlines;

static int load_corpus(const char *dir)
{
	char path[4096];
	FILE *f;
	char *l = NULL;
	size_t cap = 0;

	snprintf(path, sizeof(path), "%s/corpus.jsonl", dir);
	f = fopen(path, "r");
	if (!f)
		return -1;
	while (getline(&l, &cap, f) > 0) {
		cJSON *o = cJSON_Parse(l);
		cJSON *t = cJSON_GetObjectItem(o, "text");

		lines = realloc(lines, (nlines + 1) * sizeof(*lines));
		QF_ASSERT(lines && cJSON_IsString(t));
		/* JSON strings here hold no NUL, so strlen is the length */
		lines[nlines].text = strdup(t->valuestring);
		lines[nlines].len = strlen(t->valuestring);
		nlines++;
		cJSON_Delete(o);
	}
	free(l);
	fclose(f);
	return 0;
}

static bool ids_equal(const int32_t *a, size_t na, const cJSON *arr)
{
	const cJSON *e;
	size_t i = 0;

	if ((size_t)cJSON_GetArraySize(arr) != na)
		return false;
	cJSON_ArrayForEach(e, arr) {
		if (!cJSON_IsNumber(e) || e->valueint != a[i++])
			return false;
	}
	return true;
}

static void show_mismatch(const char *name, size_t ln, const char *field,
			  const int32_t *ids, size_t n, const cJSON *want)
{
	char *w = cJSON_PrintUnformatted(want);
	size_t i;

	fprintf(stderr, "%s line %zu %s mismatch: text '%s'\n  want %s\n  got  [",
		name, ln, field, lines[ln].text, w);
	for (i = 0; i < n; i++)
		fprintf(stderr, "%s%d", i ? "," : "", ids[i]);
	fprintf(stderr, "]\n");
	free(w);
}

static bool expect_rt_fail(const struct tok_case *c, size_t ln)
{
	size_t i;

	for (i = 0; c->roundtrip_fail[i] >= 0; i++)
		if ((size_t)c->roundtrip_fail[i] == ln)
			return true;
	return false;
}

/* Random bytes, valid or not, must encode and decode without harm. */
static void hostile_text(const struct qf_tok *t)
{
	unsigned seed = 12345;
	char buf[512];
	int r;

	for (r = 0; r < 300; r++) {
		size_t n = (size_t)(rand_r(&seed) % sizeof(buf)), i;
		struct qf_buf out = QF_BUF_INIT;
		int32_t *ids = NULL;
		size_t nids = 0;
		bool ok = true;

		for (i = 0; i < n; i++)
			buf[i] = (char)(r % 3 ? rand_r(&seed) :
					" a\n\xe2\x96\x81<s>"[rand_r(&seed) % 9]);
		CHECK(qf_tok_encode(t, buf, n, r & 1, &ids, &nids), ==, 0);
		for (i = 0; i < nids; i++)
			ok = ok && ids[i] >= 0 &&
			     (size_t)ids[i] < qf_tok_vocab_size(t);
		CHECK(ok, ==, true);
		CHECK(qf_tok_decode(t, ids, nids, r & 2, &out), ==, 0);
		free(ids);
		qf_buf_release(&out);
	}
}

static void run_case(const char *dir, const struct tok_case *c)
{
	char path[4096];
	struct qf_tok *t = NULL;
	const char *why = NULL;
	FILE *f;
	char *l = NULL;
	size_t cap = 0, ln = 0, ok_ids = 0, ok_sp = 0, ok_rt = 0, bytes = 0;
	bool shown = false;
	double t0, t_enc = 0;
	int ret;

	snprintf(path, sizeof(path), "%s/%s/tokenizer.json", dir, c->name);
	t0 = qf_now();
	ret = qf_tok_open(path, &t, &why);
	if (ret) {
		fprintf(stderr, "%s: %s (%s)\n", c->name, qf_strerror(ret),
			why ? why : "");
		CHECK(ret, ==, 0);
		return;
	}
	fprintf(stderr, "%s: loaded in %.3f s\n", c->name, qf_now() - t0);
	CHECK(qf_tok_vocab_size(t), ==, c->vocab);
	CHECK(qf_tok_bos(t), ==, c->bos);
	CHECK(qf_tok_eos(t), ==, c->eos);
	snprintf(path, sizeof(path), "%s/%s/expected.jsonl", dir, c->name);
	f = fopen(path, "r");
	CHECK(f != NULL, ==, true);
	while (f && getline(&l, &cap, f) > 0 && ln < nlines) {
		cJSON *o = cJSON_Parse(l);
		const cJSON *want = cJSON_GetObjectItem(o, "ids");
		const cJSON *want_sp = cJSON_GetObjectItem(o, "ids_special");
		const cJSON *want_dec = cJSON_GetObjectItem(o, "decoded");
		struct qf_buf dec = QF_BUF_INIT;
		int32_t *ids, *sp;
		size_t n, nsp;
		bool rt;

		t0 = qf_now();
		CHECK(qf_tok_encode(t, lines[ln].text, lines[ln].len, false,
				    &ids, &n), ==, 0);
		t_enc += qf_now() - t0;
		bytes += lines[ln].len;
		CHECK(qf_tok_encode(t, lines[ln].text, lines[ln].len, true,
				    &sp, &nsp), ==, 0);
		if (ids_equal(ids, n, want))
			ok_ids++;
		else if (!shown && (shown = true))
			show_mismatch(c->name, ln, "ids", ids, n, want);
		if (ids_equal(sp, nsp, want_sp))
			ok_sp++;
		else if (!shown && (shown = true))
			show_mismatch(c->name, ln, "ids_special", sp, nsp,
				      want_sp);
		CHECK(qf_tok_decode(t, ids, n, false, &dec), ==, 0);
		if (cJSON_IsString(want_dec))	/* the reference's decode */
			rt = dec.len == strlen(want_dec->valuestring) &&
			     !memcmp(dec.data ? dec.data : "",
				     want_dec->valuestring, dec.len);
		else
			rt = dec.len == lines[ln].len &&
			     !memcmp(dec.data ? dec.data : "", lines[ln].text,
				     dec.len);
		if (rt != !expect_rt_fail(c, ln))
			fprintf(stderr, "%s line %zu: round trip %s: '%s'\n",
				c->name, ln, rt ? "unexpectedly ok" : "failed",
				dec.data ? dec.data : "");
		else
			ok_rt++;
		qf_buf_reset(&dec);
		/* skipping specials undoes what add_special added */
		CHECK(qf_tok_decode(t, sp, nsp, true, &dec), ==, 0);
		qf_buf_release(&dec);
		free(ids);
		free(sp);
		cJSON_Delete(o);
		ln++;
	}
	free(l);
	if (f)
		fclose(f);
	fprintf(stderr, "%s: %zu/%zu ids, %zu/%zu ids_special, %zu/%zu round "
		"trips as expected, encode %.1f MB/s\n", c->name, ok_ids,
		nlines, ok_sp, nlines, ok_rt, nlines,
		t_enc > 0 ? bytes / t_enc / 1e6 : 0.0);
	CHECK(ln, ==, nlines);
	CHECK(ok_ids, ==, nlines);
	CHECK(ok_sp, ==, nlines);
	CHECK(ok_rt, ==, nlines);
	hostile_text(t);
	qf_tok_close(t);
}

/* ------------------------------------------------------------------ */
/* hand-made tokenizer.json files                                       */

#define SP_HEAD "{\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[" \
	"{\"type\":\"Prepend\",\"prepend\":\"\xe2\x96\x81\"},{\"type\":"     \
	"\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":"             \
	"\"\xe2\x96\x81\"}]},"
#define SP_VOCAB "\"vocab\":{\"<unk>\":0,\"a\":1,\"b\":2,\"ab\":3," \
	"\"\xe2\x96\x81\":4,\"\xe2\x96\x81" "ab\":5}"

static const struct {
	const char *json;
	int ret;
} bad[] = {
	{ "", QF_EFORMAT },
	{ "{", QF_EFORMAT },
	{ "[]", QF_EFORMAT },
	{ "{}", QF_EFORMAT },
	{ "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[",
	  QF_EFORMAT },
	{ "{\"model\":{\"type\":\"WordPiece\",\"vocab\":{\"a\":0}}}",
	  QF_EUNSUPPORTED },
	{ "{\"model\":{\"type\":\"Unigram\",\"vocab\":[]}}", QF_EUNSUPPORTED },
	{ "{\"model\":{\"type\":7,\"vocab\":{},\"merges\":[]}}", QF_EFORMAT },
	{ "{\"model\":{\"type\":\"BPE\",\"vocab\":[],\"merges\":[]}}",
	  QF_EFORMAT },
	{ "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":\"0\"},\"merges\":[]}}",
	  QF_EFORMAT },
	{ "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":-1},\"merges\":[]}}",
	  QF_EFORMAT },
	{ "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":1e12},\"merges\":[]}}",
	  QF_EFORMAT },
	{ "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0.5},\"merges\":[]}}",
	  QF_EFORMAT },
	{ "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":0},"
	  "\"merges\":[]}}", QF_EFORMAT },
	{ "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1},"
	  "\"merges\":[\"a b\"]}}", QF_EFORMAT },
	{ "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},"
	  "\"merges\":[\"a c\"]}}", QF_EFORMAT },
	{ "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},"
	  "\"merges\":[\"a b c\"]}}", QF_EFORMAT },
	{ "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},"
	  "\"merges\":[[\"a\"]]}}", QF_EFORMAT },
	{ "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},"
	  "\"merges\":[[\"a\",3]]}}", QF_EFORMAT },
	{ "{\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]},"
	  "\"added_tokens\":[{\"id\":4000000000,\"content\":\"x\"}]}",
	  QF_EFORMAT },
	{ "{\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]},"
	  "\"added_tokens\":[{\"id\":1,\"content\":\"\"}]}", QF_EFORMAT },
	{ "{\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]},"
	  "\"added_tokens\":{}}", QF_EFORMAT },
	{ "{\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]},"
	  "\"added_tokens\":[{\"id\":1,\"content\":\"x\",\"special\":1}]}",
	  QF_EFORMAT },
	{ "{\"normalizer\":{\"type\":\"NFKC\"},\"model\":{\"type\":\"BPE\","
	  "\"vocab\":{},\"merges\":[]}}", QF_EUNSUPPORTED },
	{ "{\"normalizer\":5,\"model\":{\"type\":\"BPE\","
	  "\"vocab\":{},\"merges\":[]}}", QF_EFORMAT },
	{ "{\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":"
	  "\"\\\\w+\"},\"behavior\":\"Isolated\",\"invert\":false},"
	  "\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]}}",
	  QF_EUNSUPPORTED },
	{ "{\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"String\":"
	  "\" \"},\"behavior\":\"Contiguous\",\"invert\":false},"
	  "\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]}}",
	  QF_EUNSUPPORTED },
	{ "{\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"String\":"
	  "\"\"},\"behavior\":\"Isolated\",\"invert\":false},"
	  "\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]}}",
	  QF_EUNSUPPORTED },
	{ "{\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Glob\":"
	  "\" \"},\"behavior\":\"Isolated\",\"invert\":false},"
	  "\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]}}",
	  QF_EFORMAT },
	{ "{\"pre_tokenizer\":{\"type\":\"Whitespace\"},"
	  "\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]}}",
	  QF_EUNSUPPORTED },
	{ "{\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":"
	  "[{\"SpecialToken\":{\"id\":\"<s>\"}}],\"special_tokens\":{}},"
	  "\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]}}",
	  QF_EFORMAT },
	{ "{\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":"
	  "[{\"SpecialToken\":{\"id\":\"<s>\"}}],\"special_tokens\":{\"<s>\":"
	  "{\"ids\":[99]}}},"
	  "\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]}}",
	  QF_EFORMAT },
	{ "{\"decoder\":{\"type\":\"CTC\"},"
	  "\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]}}",
	  QF_EUNSUPPORTED },
	{ "{\"decoder\":{\"type\":\"Strip\",\"content\":\" \",\"start\":-1,"
	  "\"stop\":0},\"model\":{\"type\":\"BPE\",\"vocab\":{},"
	  "\"merges\":[]}}", QF_EFORMAT },
	{ "{\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[],"
	  "\"continuing_subword_prefix\":\"##\"}}", QF_EUNSUPPORTED },
};

static void hostile_json(void)
{
	size_t i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct qf_tok *t = NULL;
		const char *why = NULL;
		int ret = qf_tok_load(bad[i].json, strlen(bad[i].json), &t,
				      &why);

		if (ret != bad[i].ret)
			fprintf(stderr, "bad[%zu]: got %d (%s)\n", i, ret,
				why ? why : "");
		CHECK(ret, ==, bad[i].ret);
		CHECK(why != NULL, ==, true);
		CHECK(t == NULL, ==, true);
		qf_tok_close(t);
	}
}

/*
 * More added tokens than the limit: a clean QF_EFORMAT (this once
 * crashed in the error path, which walked an unallocated array).
 */
static void too_many_added(void)
{
	struct qf_buf b = QF_BUF_INIT;
	struct qf_tok *t = NULL;
	const char *why = NULL;
	int i;

	qf_buf_adds(&b, "{\"added_tokens\": [");
	for (i = 0; i < 70000; i++)
		qf_buf_addf(&b, "%s{\"id\": %d, \"content\": \"<r%d>\"}",
			    i ? "," : "", i, i);
	qf_buf_adds(&b, "], \"model\": {\"type\": \"BPE\", \"vocab\": {},"
		    " \"merges\": []}}");
	CHECK(qf_tok_load(b.data, b.len, &t, &why), ==, QF_EFORMAT);
	CHECK(t == NULL, ==, true);
	CHECK_STR(why, "too many added tokens");
	qf_buf_release(&b);
}

/* A tiny sentencepiece-style file: merges, unk, added tokens, decode. */
static void tiny(void)
{
	static const char json[] = SP_HEAD
		"\"added_tokens\":[{\"id\":6,\"content\":\"<s>\",\"special\":"
		"true,\"normalized\":false}],"
		"\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":"
		"[{\"SpecialToken\":{\"id\":\"<s>\",\"type_id\":0}},{\"Sequence\":"
		"{\"id\":\"A\",\"type_id\":0}}],\"special_tokens\":{\"<s>\":"
		"{\"id\":\"<s>\",\"ids\":[6],\"tokens\":[\"<s>\"]}}},"
		"\"decoder\":{\"type\":\"Sequence\",\"decoders\":[{\"type\":"
		"\"Replace\",\"pattern\":{\"String\":\"\xe2\x96\x81\"},\"content\":"
		"\" \"},{\"type\":\"Fuse\"},{\"type\":\"Strip\",\"content\":\" \","
		"\"start\":1,\"stop\":0}]},"
		"\"model\":{\"type\":\"BPE\",\"unk_token\":\"<unk>\",\"fuse_unk\":"
		"true," SP_VOCAB ",\"merges\":[\"a b\",\"\xe2\x96\x81 ab\"]}}";
	static const int32_t want[] = { 6, 5, 4, 0, 6, 4, 1 };
	struct qf_buf out = QF_BUF_INIT;
	struct qf_tok *t = NULL;
	const char *why = NULL;
	int32_t *ids = NULL;
	size_t n = 0;
	int ret;

	ret = qf_tok_load(json, sizeof(json) - 1, &t, &why);
	if (ret)
		fprintf(stderr, "tiny: %s\n", why ? why : "");
	CHECK(ret, ==, 0);
	if (ret)
		return;
	CHECK(qf_tok_encode(t, "ab xy<s>a", 9, true, &ids, &n), ==, 0);
	CHECK(n, ==, sizeof(want) / sizeof(want[0]));
	CHECK(n == 7 && !memcmp(ids, want, sizeof(want)), ==, true);
	CHECK(qf_tok_decode(t, ids, n, true, &out), ==, 0);
	CHECK_STR(out.data, "ab <unk> a");
	ids[0] = 7;
	CHECK(qf_tok_decode(t, ids, n, false, &out), ==, -EINVAL);
	CHECK(qf_tok_bos(t), ==, 6);
	CHECK(qf_tok_eos(t), ==, -1);
	free(ids);
	qf_buf_release(&out);
	qf_tok_close(t);
}

/*
 * `--encode TOKENIZER.json TEXTS.json`: quantfs's ids of each string of
 * the JSON list TEXTS (no special tokens added) as one JSON list of lists
 * on stdout, for tests/mount/test_gguf_tok.py to compare with llama.cpp.
 */
static int encode_texts(const char *tok_path, const char *texts_path)
{
	struct qf_buf b = QF_BUF_INIT;
	struct qf_tok *t = NULL;
	const char *why = NULL;
	const cJSON *e;
	cJSON *arr = NULL;
	int ret;

	ret = qf_tok_open(tok_path, &t, &why);
	if (!ret)
		ret = qf_read_file(texts_path, 64 << 20, &b);
	if (!ret) {
		arr = cJSON_ParseWithLength(b.data, b.len);
		ret = cJSON_IsArray(arr) ? 0 : QF_EFORMAT;
	}
	if (ret) {
		fprintf(stderr, "encode: %s (%s)\n", qf_strerror(ret),
			why ? why : "");
		goto out;
	}
	printf("[");
	cJSON_ArrayForEach(e, arr) {
		const char *s = cJSON_IsString(e) ? e->valuestring : "";
		int32_t *ids = NULL;
		size_t n = 0, i;

		ret = qf_tok_encode(t, s, strlen(s), false, &ids, &n);
		if (ret)
			break;
		printf("%s[", e == arr->child ? "" : ",\n");
		for (i = 0; i < n; i++)
			printf("%s%d", i ? "," : "", ids[i]);
		printf("]");
		free(ids);
	}
	printf("]\n");
out:
	cJSON_Delete(arr);
	qf_buf_release(&b);
	qf_tok_close(t);
	return ret ? 1 : 0;
}

/* The cases of DIR/cases.json; 0, or 77 when DIR holds no corpus. */
static int run_cases_file(const char *dir)
{
	struct qf_buf b = QF_BUF_INIT;
	char path[4096];
	const cJSON *e;
	cJSON *arr;

	snprintf(path, sizeof(path), "%s/cases.json", dir);
	if (load_corpus(dir) < 0 || qf_read_file(path, 1 << 20, &b)) {
		fprintf(stderr, "skip: no cases in '%s'\n", dir);
		qf_buf_release(&b);
		return 77;
	}
	arr = cJSON_ParseWithLength(b.data, b.len);
	CHECK(cJSON_IsArray(arr), ==, true);
	cJSON_ArrayForEach(e, arr) {
		struct tok_case c = { .roundtrip_fail = { -1 } };
		const cJSON *name = cJSON_GetObjectItem(e, "name");

		CHECK(cJSON_IsString(name), ==, true);
		if (!cJSON_IsString(name))
			continue;
		c.name = name->valuestring;
		c.vocab = (size_t)cJSON_GetNumberValue(
			cJSON_GetObjectItem(e, "vocab"));
		c.bos = (int32_t)cJSON_GetNumberValue(
			cJSON_GetObjectItem(e, "bos"));
		c.eos = (int32_t)cJSON_GetNumberValue(
			cJSON_GetObjectItem(e, "eos"));
		run_case(dir, &c);
	}
	cJSON_Delete(arr);
	qf_buf_release(&b);
	return 0;
}

/*
 * Split on a String pattern (Gemma 2/3's pre-tokenizer): the literal
 * closes the piece before it (MergedWithPrevious) or stands alone
 * (Isolated), so the " b" merge never applies across pieces.
 */
static void split_literal(void)
{
	static const char *const beh[] = { "MergedWithPrevious", "Isolated" };
	static const int32_t want[2][5] = { { 3, 4, 0 }, { 0, 2, 1, 2, 0 } };
	static const size_t nwant[2] = { 3, 5 };
	size_t k;

	for (k = 0; k < 2; k++) {
		struct qf_buf b = QF_BUF_INIT;
		struct qf_tok *t = NULL;
		const char *why = NULL;
		int32_t *ids = NULL;
		size_t n = 0;

		qf_buf_addf(&b, "{\"pre_tokenizer\":{\"type\":\"Split\","
			    "\"pattern\":{\"String\":\" \"},\"behavior\":"
			    "\"%s\",\"invert\":false},\"model\":{\"type\":"
			    "\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\" \":2,"
			    "\"a \":3,\"b \":4,\" b\":5},\"merges\":[[\" \","
			    "\"b\"],[\"a\",\" \"],[\"b\",\" \"]]}}", beh[k]);
		CHECK(qf_tok_load(b.data, b.len, &t, &why), ==, 0);
		if (!t)
			continue;
		CHECK(qf_tok_encode(t, "a b a", 5, false, &ids, &n), ==, 0);
		CHECK(n, ==, nwant[k]);
		CHECK(n == nwant[k] && !memcmp(ids, want[k], n * sizeof(*ids)),
		      ==, true);
		free(ids);
		qf_buf_release(&b);
		qf_tok_close(t);
	}
}

int main(int argc, char **argv)
{
	const char *shared = argc > 1 ? argv[1] : getenv("QF_SHARED");
	char dir[2048];
	struct stat st;
	size_t i;

	if (argc > 3 && !strcmp(argv[1], "--encode"))
		return encode_texts(argv[2], argv[3]);
	if (argc > 2 && !strcmp(argv[1], "--cases")) {
		int ret = run_cases_file(argv[2]);

		for (i = 0; i < nlines; i++)
			free(lines[i].text);
		free(lines);
		return ret ? ret : qf_check_exit();
	}
	hostile_json();
	too_many_added();
	tiny();
	split_literal();
	if (!shared)
		shared = "/work/shared";
	snprintf(dir, sizeof(dir), "%s/data/tokenizers", shared);
	if (stat(dir, &st) < 0 || load_corpus(dir) < 0) {
		fprintf(stderr, "skip: no tokenizer data in '%s'\n", dir);
		return qf_check_failed ? 1 : 77;
	}
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		run_case(dir, &cases[i]);
	for (i = 0; i < nlines; i++)
		free(lines[i].text);
	free(lines);
	return qf_check_exit();
}
