/*
 * report.c - `quantfs report MNT/<model>`: the source (original/) and
 * each variant measured the same way, written as report.md, report.json
 * and report.svg (perplexity against bytes, the Pareto front marked).
 *
 * Variants are produced by reading them through the mount, in a thread,
 * while this one polls the variant directory's user.quantfs.progress.
 * Each figure is measured, never assumed: what could not be measured is
 * printed as n/a (JSON null).  Results are cached per (variant, text,
 * choices, ctx, limit) under a key hashing what identifies the variant's
 * bytes and the inputs (report_store.c), so a re-run reproduces the
 * report exactly; timings are measured once, on the run that filled the
 * entry.  Variants served only as model.gguf are measured by decoding it
 * (report_gguf.c); the files are written by report_out.c, the plot by
 * report_svg.c.
 */
#include <dirent.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "cache.h"
#include "common.h"
#include "quant.h"
#include "report.h"
#include "report_i.h"
#include "tools.h"

/* ------------------------------------------------------------------ */
/* production through the mount, with progress                          */

struct producer {
	struct row *row;
	bool warm;			/* read the weight files whole */
	uint8_t digest[32];		/* OUT, when !warm */
	uint64_t done;			/* bytes read, lock */
	bool finished;			/* lock */
	int err;			/* lock */
	pthread_mutex_t lock;
	pthread_cond_t cond;		/* finished was set */
};

static int read_whole(struct producer *pr, const char *path)
{
	size_t cap = 4u << 20;
	char *buf = malloc(cap);
	ssize_t n = 0;
	int fd, ret = 0;

	if (!buf)
		return -ENOMEM;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		free(buf);
		return -errno;
	}
	while ((n = read(fd, buf, cap)) > 0) {
		pthread_mutex_lock(&pr->lock);
		pr->done += (uint64_t)n;
		pthread_mutex_unlock(&pr->lock);
	}
	if (n < 0)
		ret = -errno;
	close(fd);
	free(buf);
	return ret;
}

static void *producer_main(void *arg)
{
	struct producer *pr = arg;
	struct dirent **names = NULL;
	int i, n, ret = 0;

	if (!pr->warm) {
		ret = qf_report_dir_digest(pr->row, pr->digest);
	} else if (pr->row->gguf) {
		struct qf_buf p = QF_BUF_INIT;

		qf_buf_addf(&p, "%s/model.gguf", pr->row->dir);
		ret = p.data ? read_whole(pr, p.data) : -ENOMEM;
		qf_buf_release(&p);
	} else {
		n = scandir(pr->row->dir, &names, qf_report_is_weights,
			    alphasort);
		ret = n < 0 ? -errno : 0;
		for (i = 0; i < n; i++) {
			struct qf_buf p = QF_BUF_INIT;

			qf_buf_addf(&p, "%s/%s", pr->row->dir,
				    names[i]->d_name);
			if (!ret)
				ret = p.data ? read_whole(pr, p.data) :
					       -ENOMEM;
			qf_buf_release(&p);
			free(names[i]);
		}
		free(names);
	}
	pthread_mutex_lock(&pr->lock);
	pr->err = ret;
	pr->finished = true;
	pthread_cond_signal(&pr->cond);
	pthread_mutex_unlock(&pr->lock);
	return NULL;
}

/*
 * Run the producer thread to its end, printing progress: a line every
 * 5 s when stderr is a log, one line rewritten in place on a terminal.
 */
static int produce(struct producer *pr, const char *tag, bool tty)
{
	double t0 = qf_now();
	bool drawn = false;
	pthread_t th;
	int ret;

	pthread_mutex_init(&pr->lock, NULL);
	pthread_cond_init(&pr->cond, NULL);
	if (pthread_create(&th, NULL, producer_main, pr) != 0) {
		ret = -EAGAIN;
		goto out_destroy;
	}
	pthread_mutex_lock(&pr->lock);
	while (!pr->finished) {
		char note[256], size[32];
		struct timespec ts;
		uint64_t done;
		int rc;

		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += tty ? 0 : 5;
		ts.tv_nsec += tty ? 250 * 1000 * 1000 : 0;
		if (ts.tv_nsec >= 1000 * 1000 * 1000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000 * 1000 * 1000;
		}
		rc = pthread_cond_timedwait(&pr->cond, &pr->lock, &ts);
		if (pr->finished || rc != ETIMEDOUT)
			continue;
		done = pr->done;
		pthread_mutex_unlock(&pr->lock);
		/* the xattr asks the daemon: never under the lock */
		qf_progress_note(pr->row->dir, note, sizeof(note));
		size[0] = 0;
		if (done) {
			qf_human_size(done, size + 2, sizeof(size) - 2);
			memcpy(size, ", ", 2);
			strcat(size, " read");
		}
		fprintf(stderr, "%s%s producing, %.0f s%s%s%s",
			tty ? "\r" : "", tag, qf_now() - t0, size, note,
			tty ? "\033[K" : "\n");
		drawn = true;
		pthread_mutex_lock(&pr->lock);
	}
	ret = pr->err;
	pthread_mutex_unlock(&pr->lock);
	pthread_join(th, NULL);
	if (tty && drawn)
		fprintf(stderr, "\r\033[K");
out_destroy:
	pthread_cond_destroy(&pr->cond);
	pthread_mutex_destroy(&pr->lock);
	return ret;
}

/* ------------------------------------------------------------------ */
/* measuring                                                            */

static void set_why(struct row *r, const char *what, int err)
{
	struct qf_buf b = QF_BUF_INIT;

	if (err == -EINVAL && !strcmp(what, "perplexity"))
		qf_buf_addf(&b, "%s: text too short for one window", what);
	else if (err == -EINVAL && !strcmp(what, "multiple choice"))
		qf_buf_addf(&b, "%s: no question in the choices file", what);
	else
		qf_buf_addf(&b, "%s: %s", what, qf_strerror(err));
	free(r->why);
	r->why = qf_buf_detach(&b, NULL);
}

static int measure(const struct inputs *in, struct row *r)
{
	struct qf_eval_result e;
	struct qf_mc_result mc;
	struct qf_model *m = NULL, *ref = NULL;
	struct qf_tok *tok = NULL;
	const char *why = NULL;
	char *tmp = NULL;
	int ret;

	if (r->gguf) {
		ret = qf_report_gguf_model(r, in->cache, &tmp, &why);
		if (ret < 0) {
			set_why(r, why ? why : "decoding model.gguf", ret);
			return ret;
		}
		why = NULL;
	}
	ret = qf_model_open(tmp ? tmp : r->dir, &m);
	if (ret < 0) {
		set_why(r, "open", ret);
		goto out_close;
	}
	ret = qf_model_tokenizer(m, &tok, &why);
	if (ret < 0) {
		set_why(r, why ? why : "tokenizer.json", ret);
		goto out_close;
	}
	/* choices first: a malformed file fails before the long pass */
	if (in->mc_path) {
		ret = qf_eval_mc(m, tok, in->mc.data, in->mc.len, in->limit,
				 in->ctx, &mc);
		if (ret < 0) {
			set_why(r, "multiple choice", ret);
			goto out_close;
		}
		r->mc_n = mc.questions;
		r->mc_correct = mc.correct;
		r->mc_correct_raw = mc.correct_raw;
		r->acc = mc.accuracy;
		r->acc_raw = mc.accuracy_raw;
	}
	/* --kld: each variant against the source (row 0, measured first) */
	if (in->kld && in->src_dir && (ret = qf_model_open(in->src_dir,
							   &ref)) < 0) {
		set_why(r, "open the source", ret);
		goto out_close;
	}
	ret = ref ? qf_eval_kld(m, ref, tok, in->text.data, in->text.len,
				in->ctx, &e) :
		    qf_eval_ppl(m, tok, in->text.data, in->text.len, in->ctx,
				&e);
	if (ret < 0) {
		set_why(r, "perplexity", ret);
		goto out_close;
	}
	r->kld = ref ? e.kld : in->kld ? 0 : NAN;
	r->top1 = ref ? e.top1 : in->kld ? 1 : NAN;
	r->ppl = e.ppl;
	r->nll = e.nll;
	r->tokens = e.tokens;
	r->windows = e.windows;
	r->eval_s = e.seconds;
	r->tok_s = e.seconds > 0 ? (double)e.tokens / e.seconds : NAN;
out_close:
	qf_tok_close(tok);
	qf_model_close(m);
	qf_model_close(ref);
	qf_report_gguf_remove(tmp);
	return ret;
}

/* Produce (through the mount), then measure or take the cached figures. */
static int run_row(const struct inputs *in, struct row *r, int i, int n)
{
	struct producer pr = { .row = r };
	double t0 = qf_now(), t1, t2;
	char tag[320];
	int ret;

	snprintf(tag, sizeof(tag), "[%d/%d] %s:", i, n, r->name);
	fprintf(stderr, "%s started\n", tag);
	ret = produce(&pr, tag, in->tty);
	if (ret < 0) {
		set_why(r, "reading the variant", ret);
		goto out_fail;
	}
	qf_report_result_key(in, pr.digest, r->key);
	if (qf_report_cache_load(in, r)) {
		r->cached = true;
		fprintf(stderr, "%s cached (%.12s), %.1f s\n", tag, r->key,
			qf_now() - t0);
		return 0;
	}
	pr = (struct producer){ .row = r, .warm = true };
	ret = produce(&pr, tag, in->tty);
	if (ret < 0) {
		set_why(r, "reading the weights", ret);
		goto out_fail;
	}
	t1 = qf_now();
	ret = measure(in, r);
	if (ret < 0)
		goto out_fail;
	t2 = qf_now();
	ret = qf_report_cache_store(in, r);
	if (ret < 0)
		fprintf(stderr, "quantfs: report: cannot store %s/%s.json: "
			"%s\n", in->cache, r->key, qf_strerror(ret));
	fprintf(stderr, "%s done in %.1f s (production + read %.1f s, "
		"evaluation %.1f s: %.0f tokens/s), ppl %.4f\n", tag,
		t2 - t0, t1 - t0, t2 - t1, r->tok_s, r->ppl);
	return 0;

out_fail:
	fprintf(stderr, "%s failed after %.1f s: %s\n", tag, qf_now() - t0,
		r->why);
	return ret;
}

/* ------------------------------------------------------------------ */
/* the command                                                          */

static const char report_usage[] =
	"usage: quantfs report MNT/MODEL [--variants A,B,...] --text FILE\n"
	"                      [--choices FILE.jsonl [--limit N]] [--ctx N]\n"
	"                      [-o REPORT.md] [--cache DIR] [--kld]\n";

static bool listed(const struct row *rows, size_t n, const char *name)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (!strcmp(rows[i].name, name))
			return true;
	return false;
}

static int add_row(struct row **rows, size_t *n, const char *model_dir,
		   const char *name)
{
	struct qf_buf d = QF_BUF_INIT;
	struct row *g;

	if (listed(*rows, *n, name))
		return 0;
	g = realloc(*rows, (*n + 1) * sizeof(*g));
	if (!g)
		return -ENOMEM;
	*rows = g;
	g = &g[*n];
	memset(g, 0, sizeof(*g));
	qf_buf_addf(&d, "%s/%s", model_dir, name);
	g->name = strdup(name);
	g->dir = qf_buf_detach(&d, NULL);
	g->ppl = g->nll = g->eval_s = g->tok_s = g->kld = g->top1 = NAN;
	g->acc = g->acc_raw = g->prod_s = NAN;
	(*n)++;
	return g->name && g->dir ? 0 : -ENOMEM;
}

/* original, then --variants, or what `ls MNT/<model>` shows (no _fake). */
static int pick_rows(const char *model_dir, char *list, struct row **rows,
		     size_t *n)
{
	char *save = NULL, *v;
	struct dirent *e;
	DIR *d;
	int ret;

	ret = add_row(rows, n, model_dir, "original");
	if (ret < 0 || list) {
		for (v = list ? strtok_r(list, ",", &save) : NULL;
		     v && !ret; v = strtok_r(NULL, ",", &save))
			if (*v)
				ret = add_row(rows, n, model_dir, v);
		return ret;
	}
	d = opendir(model_dir);
	if (!d)
		return -errno;
	while (!ret && (e = readdir(d))) {
		size_t len = strlen(e->d_name);

		if (e->d_name[0] == '.' || !strcmp(e->d_name, "original") ||
		    (len > 5 && !strcmp(e->d_name + len - 5, "_fake")))
			continue;
		ret = add_row(rows, n, model_dir, e->d_name);
	}
	closedir(d);
	return ret;
}

static int read_inputs(struct inputs *in)
{
	struct qf_sha256 h;
	int ret;

	ret = qf_read_file(in->text_path, 1u << 30, &in->text);
	if (ret < 0) {
		fprintf(stderr, "quantfs: cannot read '%s': %s\n",
			in->text_path, qf_strerror(ret));
		return ret;
	}
	qf_sha256_init(&h);
	qf_sha256_update(&h, in->text.data, in->text.len);
	qf_sha256_final(&h, in->text_sha);
	if (!in->mc_path)
		return 0;
	ret = qf_read_file(in->mc_path, 1u << 30, &in->mc);
	if (ret < 0) {
		fprintf(stderr, "quantfs: cannot read '%s': %s\n",
			in->mc_path, qf_strerror(ret));
		return ret;
	}
	qf_sha256_init(&h);
	qf_sha256_update(&h, in->mc.data, in->mc.len);
	qf_sha256_final(&h, in->mc_sha);
	return 0;
}

/* Fail before hours of measuring, not after: can we write there? */
static int check_out(const char *md)
{
	const char *slash = strrchr(md, '/');
	struct qf_buf d = QF_BUF_INIT;
	int ret = 0;

	qf_buf_addf(&d, "%.*s", slash ? (int)(slash - md) + 1 : 1,
		    slash ? md : ".");
	if (!d.data)
		return -ENOMEM;
	if (access(d.data, W_OK | X_OK) < 0) {
		ret = -errno;
		fprintf(stderr, "quantfs: cannot write reports in '%s': %s\n",
			d.data, strerror(errno));
	}
	qf_buf_release(&d);
	return ret;
}

static int parse_args(int argc, char **argv, struct inputs *in,
		      const char **out, const char **cache, char **list)
{
	static const struct option lo[] = {
		{ "variants", required_argument, NULL, 'v' },
		{ "text", required_argument, NULL, 't' },
		{ "choices", required_argument, NULL, 'c' },
		{ "ctx", required_argument, NULL, 'x' },
		{ "limit", required_argument, NULL, 'l' },
		{ "cache", required_argument, NULL, 'C' },
		{ "kld", no_argument, NULL, 'k' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	optind = 1;
	while ((c = getopt_long(argc, argv, "o:", lo, NULL)) != -1) {
		switch (c) {
		case 'v': *list = optarg; break;
		case 't': in->text_path = optarg; break;
		case 'c': in->mc_path = optarg; break;
		case 'x': in->ctx = atoi(optarg); break;
		case 'l': in->limit = atoi(optarg); break;
		case 'C': *cache = optarg; break;
		case 'k': in->kld = true; break;
		case 'o': *out = optarg; break;
		default:
			return -EINVAL;
		}
	}
	if (optind != argc - 1 || !in->text_path || in->ctx < 2 ||
	    in->limit < 0 || !**out)
		return -EINVAL;
	return 0;
}

int qf_cmd_report(int argc, char **argv)
{
	struct inputs in = { .ctx = 512 };
	const char *out = "report.md", *cache = NULL, *model;
	char *list = NULL, *defdir = NULL, *mdir = NULL, *p;
	struct row *rows = NULL;
	struct stat st;
	size_t n = 0, i;
	int ret, failed = 0;

	if (parse_args(argc, argv, &in, &out, &cache, &list) < 0) {
		fputs(report_usage, stderr);
		return 2;
	}
	mdir = strdup(argv[optind]);
	if (!mdir)
		return 1;
	for (p = mdir + strlen(mdir); p > mdir + 1 && p[-1] == '/';)
		*--p = 0;
	model = strrchr(mdir, '/') ? strrchr(mdir, '/') + 1 : mdir;
	in.tty = isatty(2);
	ret = check_out(out);
	if (!ret)
		ret = read_inputs(&in);
	if (!ret) {
		ret = pick_rows(mdir, list, &rows, &n);
		if (ret < 0)
			fprintf(stderr, "quantfs: cannot list '%s': %s\n",
				mdir, qf_strerror(ret));
	}
	for (i = 0; i < n && !ret; i++) {
		if (stat(rows[i].dir, &st) == 0 && S_ISDIR(st.st_mode))
			continue;
		fprintf(stderr, "quantfs: no %s '%s' in '%s'%s\n",
			i ? "variant" : "directory", rows[i].name, mdir,
			i ? "" : " (MNT/MODEL of a quantfs mount?)");
		ret = -ENOENT;
	}
	if (!ret) {
		if (!cache)
			cache = defdir = qf_cache_default_dir();
		in.cache = cache ? malloc(strlen(cache) + 9) : NULL;
		if (in.cache)
			snprintf(in.cache, strlen(cache) + 9, "%s/reports",
				 cache);
		ret = in.cache ? qf_mkdir_p(in.cache, 0775) : -ENOMEM;
		if (ret < 0)
			fprintf(stderr, "quantfs: cannot create '%s': %s\n",
				in.cache ? in.cache : "", qf_strerror(ret));
	}
	for (i = 0; i < n && !ret; i++) {
		if (run_row(&in, &rows[i], (int)i + 1, (int)n) < 0) {
			failed++;
			if (i == 0) {
				fprintf(stderr, "quantfs: report: the source "
					"could not be measured\n");
				ret = -EIO;
			}
		}
		if (i == 0) {	/* what --kld measures the rest against */
			in.src_dir = rows[0].dir;
			memcpy(in.src_key, rows[0].key, sizeof(in.src_key));
		}
	}
	if (!ret) {
		qf_report_derive(rows, n);
		ret = qf_report_write(out, model, &in, rows, n);
	}
	for (i = 0; i < n; i++) {
		free(rows[i].name);
		free(rows[i].dir);
		free(rows[i].why);
	}
	free(rows);
	free(in.cache);
	free(defdir);
	free(mdir);
	qf_buf_release(&in.text);
	qf_buf_release(&in.mc);
	return ret < 0 || failed ? 1 : 0;
}
