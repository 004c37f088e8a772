/*
 * tools.c - `quantfs cache ...` (what the shared cache holds, removal,
 * LRU garbage collection) and `quantfs warm` (produce variants ahead of
 * time through a mount, with a progress bar).
 */
#include <dirent.h>
#include <fnmatch.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "cache.h"
#include "common.h"
#include "opts.h"
#include "quant.h"
#include "tools.h"

const char *qf_size_error(int err)
{
	return err == -ERANGE ? "too large (2^64 bytes or more)" :
				"not a size (a number of bytes with an "
				"optional K, M, G or T suffix)";
}

void qf_human_size(uint64_t b, char *out, size_t cap)
{
	if (b >= 1ULL << 30)
		snprintf(out, cap, "%.2f GiB", b / (double)(1ULL << 30));
	else if (b >= 1ULL << 20)
		snprintf(out, cap, "%.2f MiB", b / (double)(1ULL << 20));
	else if (b >= 1ULL << 10)
		snprintf(out, cap, "%.1f KiB", b / 1024.0);
	else
		snprintf(out, cap, "%llu B", (unsigned long long)b);
}

static void ago(double t, char *out, size_t cap)
{
	double d = (double)time(NULL) - t;

	if (t <= 0 || d != d)
		snprintf(out, cap, "-");
	else if (d < 120)
		snprintf(out, cap, "%.0f s ago", d);
	else if (d < 7200)
		snprintf(out, cap, "%.0f min ago", d / 60);
	else if (d < 172800)
		snprintf(out, cap, "%.0f h ago", d / 3600);
	else
		snprintf(out, cap, "%.0f days ago", d / 86400);
}

static const char cache_usage[] =
	"usage: quantfs cache ls [--json] [--cache DIR]\n"
	"       quantfs cache du [--cache DIR]\n"
	"       quantfs cache rm SELECTOR... [--cache DIR]\n"
	"       quantfs cache gc --max-size SIZE [--cache DIR]\n"
	"       quantfs cache ls|rm|gc --remote s3://BUCKET[/PREFIX] ...: the\n"
	"       fleet's bucket (quantfs cache ls --remote for its usage)\n"
	"SELECTOR: MODEL, MODEL/VARIANT (shell patterns allowed) or an id\n"
	"prefix of at least 8 hex digits, as `quantfs cache ls` prints them\n";

bool qf_cache_selector_match(const char *sel, const char *id_hex,
			     const char *model, const char *variant)
{
	char full[512];
	size_t n = strlen(sel);

	if (n >= 8 && n <= 32 && strspn(sel, "0123456789abcdef") == n &&
	    !strncmp(id_hex, sel, n))
		return true;
	if (!model || !variant)
		return false;
	snprintf(full, sizeof(full), "%s/%s", model, variant);
	return !fnmatch(sel, full, 0) || !fnmatch(sel, model, 0);
}

static bool selected(const struct qf_cache_entry *e, const char *sel)
{
	return qf_cache_selector_match(sel, e->vid_hex,
				       e->recorded ? e->model : NULL,
				       e->recorded ? e->variant : NULL);
}

static int cache_ls(struct qf_cache *c, struct qf_cache_entry *e, size_t n,
		    bool json)
{
	size_t i;

	if (json) {
		cJSON *a = cJSON_CreateArray();
		char *s;

		for (i = 0; i < n; i++) {
			cJSON *o = cJSON_CreateObject();

			cJSON_AddStringToObject(o, "id", e[i].vid_hex);
			cJSON_AddBoolToObject(o, "recorded", e[i].recorded);
			cJSON_AddStringToObject(o, "model", e[i].model ?
						e[i].model : "");
			cJSON_AddStringToObject(o, "variant", e[i].variant ?
						e[i].variant : "");
			cJSON_AddStringToObject(o, "source", e[i].source ?
						e[i].source : "");
			cJSON_AddStringToObject(o, "calib", e[i].calib ?
						e[i].calib : "");
			cJSON_AddNumberToObject(o, "bytes", (double)e[i].bytes);
			cJSON_AddNumberToObject(o, "values",
						(double)e[i].values);
			cJSON_AddNumberToObject(o, "file_bytes",
						(double)e[i].file_bytes);
			cJSON_AddNumberToObject(o, "tmp_bytes",
						(double)e[i].tmp_bytes);
			cJSON_AddNumberToObject(o, "created", e[i].created);
			cJSON_AddNumberToObject(o, "accessed", e[i].accessed);
			cJSON_AddItemToArray(a, o);
		}
		s = cJSON_Print(a);
		if (s)
			puts(s);
		free(s);
		cJSON_Delete(a);
		return s ? 0 : 1;
	}
	printf("%-16s %-44s %10s %-14s %-12s %s\n", "ID", "VARIANT", "SIZE",
	       "LAST ACCESS", "CALIBRATION", "SOURCE");
	for (i = 0; i < n; i++) {
		char name[512], size[32], when[32], calib[16];

		if (e[i].recorded)
			snprintf(name, sizeof(name), "%s/%s", e[i].model,
				 e[i].variant);
		else
			snprintf(name, sizeof(name), "(no record: calibration "
				 "set or in production)");
		qf_human_size(e[i].bytes, size, sizeof(size));
		ago(e[i].recorded ? e[i].accessed : 0, when, sizeof(when));
		snprintf(calib, sizeof(calib), "%.12s",
			 e[i].calib && *e[i].calib ? e[i].calib : "-");
		printf("%-16.16s %-44s %10s %-14s %-12s %s\n", e[i].vid_hex,
		       name, size, when, calib,
		       e[i].source ? e[i].source : "-");
	}
	(void)c;
	return 0;
}

static int cache_du(struct qf_cache *c, struct qf_cache_entry *e, size_t n)
{
	uint64_t rec = 0, other = 0, file = 0, used = 0;
	char a[32], b[32], d[32], f[32], g[32], h[32];
	struct qf_cache_files_stat fst;
	struct qf_cache_space sp;
	size_t i, nrec = 0, nrf = 0;

	for (i = 0; i < n; i++) {
		nrf += e[i].file_bytes > 0;
		if (e[i].recorded) {
			rec += e[i].bytes;
			nrec++;
		} else {
			other += e[i].bytes;
		}
	}
	qf_cache_file_bytes(c, &file, &used);
	if (qf_cache_files(c, NULL, 0, &fst) < 0)
		memset(&fst, 0, sizeof(fst));
	qf_human_size(rec, a, sizeof(a));
	qf_human_size(other, b, sizeof(b));
	qf_human_size(file, d, sizeof(d));
	qf_human_size(used, f, sizeof(f));
	printf("%s\n", qf_cache_dir(c));
	printf("  variants:            %zu, %s\n", nrec, a);
	printf("  without a record:    %zu, %s\n", n - nrec, b);
	printf("  data.mdb on disk:    %s (%s of pages in use; freed pages "
	       "are reused, the file never shrinks)\n", d, f);
	qf_human_size(fst.bytes[QF_CACHE_FILE_READ], g, sizeof(g));
	printf("  read files:          %s for %zu variant(s) (files/, "
	       "served by kernel passthrough)\n", g, nrf);
	qf_human_size(fst.bytes[QF_CACHE_FILE_TMP] +
		      fst.bytes[QF_CACHE_FILE_STRAY], g, sizeof(g));
	printf("  temporary files:     %zu, %s (%zu left by killed writers: "
	       "removed at the next mount)\n",
	       fst.count[QF_CACHE_FILE_TMP] + fst.count[QF_CACHE_FILE_STRAY],
	       g, fst.count[QF_CACHE_FILE_STRAY]);
	if (qf_cache_space(c, false, &sp) == 0) {
		qf_human_size(sp.fs_avail, g, sizeof(g));
		qf_human_size(sp.fs_bytes, h, sizeof(h));
		printf("  filesystem:          %s free of %s\n", g, h);
	}
	return 0;
}

static int cache_rm(struct qf_cache *c, struct qf_cache_entry *e, size_t n,
		    char **sel, int nsel)
{
	int i, matched = 0, busy = 0;
	size_t k;

	for (k = 0; k < n; k++) {
		uint64_t freed = 0;
		int ret;

		for (i = 0; i < nsel && !selected(&e[k], sel[i]); i++)
			;
		if (i == nsel)
			continue;
		matched++;
		ret = qf_cache_evict(c, e[k].vid, &freed);
		if (ret == -EBUSY) {
			fprintf(stderr, "quantfs: %s/%s is in use (open in a "
				"mount, or being produced): kept\n",
				e[k].model ? e[k].model : "-",
				e[k].variant ? e[k].variant : e[k].vid_hex);
			busy++;
		} else if (ret < 0) {
			fprintf(stderr, "quantfs: cannot remove %s: %s%s\n",
				e[k].vid_hex, qf_strerror(ret),
				ret == -ENOSPC ? " (the disk is full and the "
				"cache's reserve is spent: free some space "
				"on it first)" : "");
			return 1;
		} else {
			char h[32];

			qf_human_size(freed, h, sizeof(h));
			printf("removed %s %s%s%s (%s)\n", e[k].vid_hex,
			       e[k].recorded ? e[k].model : "",
			       e[k].recorded ? "/" : "",
			       e[k].recorded ? e[k].variant : "", h);
		}
	}
	if (!matched) {
		fprintf(stderr, "quantfs: nothing in the cache matches\n");
		return 1;
	}
	return busy ? 1 : 0;
}

int qf_cmd_cache(int argc, char **argv)
{
	const char *dir = NULL, *sub;
	char *defdir = NULL;
	struct qf_cache_entry *e = NULL;
	struct qf_cache *c = NULL;
	uint64_t max = 0;
	bool json = false, have_max = false;
	char **pos;
	int i, npos = 0, ret;
	size_t n = 0;

	if (argc < 2) {
		fputs(cache_usage, stderr);
		return 2;
	}
	sub = argv[1];
	pos = calloc((size_t)argc, sizeof(*pos));
	if (!pos)
		return 1;
	for (i = 2; i < argc; i++) {
		if (!strcmp(argv[i], "--cache") && i + 1 < argc) {
			dir = argv[++i];
		} else if (!strcmp(argv[i], "--json")) {
			json = true;
		} else if (!strcmp(argv[i], "--max-size") && i + 1 < argc) {
			ret = qf_mnt_parse_size(argv[++i], &max);
			if (ret < 0) {
				fprintf(stderr, "quantfs: --max-size '%s': "
					"%s\n", argv[i], qf_size_error(ret));
				free(pos);
				return 2;
			}
			have_max = true;
		} else if (argv[i][0] == '-') {
			fputs(cache_usage, stderr);
			free(pos);
			return 2;
		} else {
			pos[npos++] = argv[i];
		}
	}
	if ((strcmp(sub, "rm") && npos) || (!strcmp(sub, "rm") && !npos) ||
	    (!strcmp(sub, "gc") && !have_max)) {
		fputs(cache_usage, stderr);
		free(pos);
		return 2;
	}
	if (!dir)
		dir = defdir = qf_cache_default_dir();
	ret = qf_cache_open(dir, 0, &c);
	if (!ret)
		ret = qf_cache_list(c, &e, &n);
	if (ret < 0) {
		fprintf(stderr, "quantfs: cannot read the cache '%s': %s\n",
			dir, qf_strerror(ret));
		ret = 1;
	} else if (!strcmp(sub, "ls")) {
		ret = cache_ls(c, e, n, json);
	} else if (!strcmp(sub, "du")) {
		ret = cache_du(c, e, n);
	} else if (!strcmp(sub, "rm")) {
		ret = cache_rm(c, e, n, pos, npos);
	} else if (!strcmp(sub, "gc")) {
		struct qf_cache_gc_result r;
		char a[32], b[32];

		ret = qf_cache_gc(c, max, &r);
		qf_human_size(r.freed, a, sizeof(a));
		qf_human_size(r.remaining, b, sizeof(b));
		if (ret < 0)
			fprintf(stderr, "quantfs: gc: %s%s\n", qf_strerror(ret),
				ret == -ENOSPC ? " (the disk is full and the "
				"cache's reserve is spent: free some space "
				"on it first)" : "");
		else
			printf("evicted %zu variant(s), %s; %s left; %zu in "
			       "use skipped\n", r.evicted, a, b, r.busy);
		ret = ret < 0 || r.remaining > max ? 1 : 0;
	} else {
		fputs(cache_usage, stderr);
		ret = 2;
	}
	qf_cache_list_free(e, n);
	qf_cache_close(c);
	free(defdir);
	free(pos);
	return ret;
}

/* ------------------------------------------------------------------ */
/* warm                                                                */

struct warm {
	char **files;
	uint64_t *sizes;
	size_t n;
	uint64_t total;
	uint64_t done;			/* bytes read, lock */
	size_t cur;			/* file being read, lock */
	int err;			/* lock */
	bool finished;			/* lock */
	pthread_mutex_t lock;
};

static void *warm_reader(void *arg)
{
	struct warm *w = arg;
	size_t cap = 4u << 20, i;
	char *buf = malloc(cap);
	int err = buf ? 0 : ENOMEM;

	for (i = 0; i < w->n && !err; i++) {
		int fd = open(w->files[i], O_RDONLY | O_CLOEXEC);
		ssize_t r = 0;

		pthread_mutex_lock(&w->lock);
		w->cur = i;
		pthread_mutex_unlock(&w->lock);
		if (fd < 0) {
			err = errno;
			break;
		}
		while ((r = read(fd, buf, cap)) > 0) {
			pthread_mutex_lock(&w->lock);
			w->done += (uint64_t)r;
			pthread_mutex_unlock(&w->lock);
		}
		if (r < 0)
			err = errno;
		close(fd);
	}
	pthread_mutex_lock(&w->lock);
	w->err = err;
	w->finished = true;
	pthread_mutex_unlock(&w->lock);
	free(buf);
	return NULL;
}

static int add_file(struct warm *w, const char *path)
{
	struct stat st;
	char **f;
	uint64_t *s;

	if (stat(path, &st) < 0)
		return -errno;
	if (!S_ISREG(st.st_mode))
		return 0;
	f = realloc(w->files, (w->n + 1) * sizeof(*f));
	if (f)
		w->files = f;
	s = realloc(w->sizes, (w->n + 1) * sizeof(*s));
	if (s)
		w->sizes = s;
	if (!f || !s || !(w->files[w->n] = strdup(path)))
		return -ENOMEM;
	w->sizes[w->n++] = (uint64_t)st.st_size;
	w->total += (uint64_t)st.st_size;
	return 0;
}

static int add_path(struct warm *w, const char *path)
{
	struct dirent **names;
	struct stat st;
	int i, n, ret = 0;

	if (stat(path, &st) < 0)
		return -errno;
	if (!S_ISDIR(st.st_mode))
		return add_file(w, path);
	n = scandir(path, &names, NULL, alphasort);
	if (n < 0)
		return -errno;
	for (i = 0; i < n; i++) {
		struct qf_buf p = QF_BUF_INIT;

		if (names[i]->d_name[0] != '.' && !ret) {
			qf_buf_addf(&p, "%s/%s", path, names[i]->d_name);
			ret = p.data ? add_file(w, p.data) : -ENOMEM;
		}
		qf_buf_release(&p);
		free(names[i]);
	}
	free(names);
	return ret;
}

/* ", quantize, layer 3/6, eta 20 s" from user.quantfs.progress. */
void qf_progress_note(const char *dir, char *out, size_t cap)
{
	char buf[1024];
	ssize_t n;
	cJSON *j, *e;
	int k;

	out[0] = 0;
	n = getxattr(dir, "user.quantfs.progress", buf, sizeof(buf) - 1);
	if (n <= 0)
		return;
	buf[n] = 0;
	j = cJSON_Parse(buf);
	if (cJSON_IsNumber(cJSON_GetObjectItem(j, "layers")) &&
	    cJSON_GetObjectItem(j, "layers")->valueint > 0 &&
	    cJSON_IsNumber(cJSON_GetObjectItem(j, "layers_done")) &&
	    cJSON_IsString(cJSON_GetObjectItem(j, "state"))) {
		e = cJSON_GetObjectItem(j, "eta_s");
		k = snprintf(out, cap, ", %s, layer %d/%d",
			     cJSON_GetObjectItem(j, "state")->valuestring,
			     cJSON_GetObjectItem(j, "layers_done")->valueint,
			     cJSON_GetObjectItem(j, "layers")->valueint);
		if (cJSON_IsNumber(e) && k > 0 && (size_t)k < cap)
			snprintf(out + k, cap - (size_t)k, ", eta %.0f s",
				 e->valuedouble);
	}
	cJSON_Delete(j);
}

/* The note of the directory holding file. */
static void layer_note(const char *file, char *out, size_t cap)
{
	char dir[4096];
	char *slash;

	out[0] = 0;
	snprintf(dir, sizeof(dir), "%s", file);
	slash = strrchr(dir, '/');
	if (!slash)
		return;
	*slash = 0;
	qf_progress_note(dir, out, cap);
}

static void draw(const struct warm *w, uint64_t done, size_t cur, double t0,
		 bool tty, bool last)
{
	double el = qf_now() - t0, frac = w->total ?
		(double)done / (double)w->total : 1;
	char bar[31], a[32], b[32], note[160];
	int k, fill = (int)(frac * 30);

	for (k = 0; k < 30; k++)
		bar[k] = k < fill ? '#' : '.';
	bar[30] = 0;
	qf_human_size(done, a, sizeof(a));
	qf_human_size(w->total, b, sizeof(b));
	note[0] = 0;
	if (!last && cur < w->n)
		layer_note(w->files[cur], note, sizeof(note));
	fprintf(stderr, "%s[%s] %3.0f%% %s / %s, %.1f MB/s%s%s", tty ? "\r" : "",
		bar, frac * 100, a, b, el > 0 ? done / el / 1e6 : 0.0, note,
		tty && !last ? "\033[K" : "\n");
	fflush(stderr);
}

/*
 * On a mount with a remote tier, what warm made is published in the
 * background: wait for it, so a batch job that ends with warm has shared
 * its work.  The mount's root is the first directory up from path with
 * user.quantfs.remote.
 */
static void wait_published(const char *path)
{
	char dir[4096], buf[2048], *slash;
	bool said = false;
	ssize_t n = -1;
	cJSON *o;
	int pub;

	snprintf(dir, sizeof(dir), "%s", path);
	while ((slash = strrchr(dir, '/')) && slash != dir) {
		*slash = 0;
		n = getxattr(dir, "user.quantfs.remote", buf, sizeof(buf) - 1);
		if (n > 0)
			break;
	}
	while (n > 0) {
		struct timespec ts = { 0, 200 * 1000 * 1000 };

		buf[n] = 0;
		o = cJSON_Parse(buf);
		pub = (int)cJSON_GetNumberValue(cJSON_GetObjectItem(o,
								    "publishing"));
		cJSON_Delete(o);
		if (pub <= 0)
			break;
		if (!said)
			fprintf(stderr, "quantfs: publishing to the remote "
				"tier...\n");
		said = true;
		nanosleep(&ts, NULL);
		n = getxattr(dir, "user.quantfs.remote", buf, sizeof(buf) - 1);
	}
	if (said)
		fprintf(stderr, "quantfs: published\n");
}

int qf_cmd_warm(int argc, char **argv)
{
	struct warm w = { 0 };
	bool tty = isatty(2);
	double t0 = qf_now(), last_line = 0;
	pthread_t th;
	int i, ret = 0;
	size_t k;

	if (argc < 2) {
		fputs("usage: quantfs warm PATH...\n", stderr);
		return 2;
	}
	pthread_mutex_init(&w.lock, NULL);
	for (i = 1; i < argc && !ret; i++) {
		ret = add_path(&w, argv[i]);
		if (ret < 0)
			fprintf(stderr, "quantfs: %s: %s\n", argv[i],
				qf_strerror(ret));
	}
	if (!ret && pthread_create(&th, NULL, warm_reader, &w) != 0)
		ret = -EAGAIN;
	while (!ret) {
		struct timespec ts = { 0, 250 * 1000 * 1000 };
		uint64_t done;
		size_t cur;
		bool fin;

		nanosleep(&ts, NULL);
		pthread_mutex_lock(&w.lock);
		done = w.done;
		cur = w.cur;
		fin = w.finished;
		pthread_mutex_unlock(&w.lock);
		if (fin) {
			pthread_join(th, NULL);
			draw(&w, done, cur, t0, tty, true);
			if (w.err) {
				fprintf(stderr, "quantfs: %s: %s\n",
					w.files[cur], strerror(w.err));
				ret = 1;
			} else if (w.n) {
				wait_published(w.files[0]);
			}
			break;
		}
		/* a line every 5 s when stderr is a log, not a terminal */
		if (tty || qf_now() - last_line >= 5) {
			draw(&w, done, cur, t0, tty, false);
			last_line = qf_now();
		}
	}
	for (k = 0; k < w.n; k++)
		free(w.files[k]);
	free(w.files);
	free(w.sizes);
	pthread_mutex_destroy(&w.lock);
	return ret ? 1 : 0;
}

/*
 * quantfs rotate SRC DST: the rotated model the `_rot` variants quantize,
 * as a model directory of its own (to inspect it, or to evaluate it
 * against the source: it computes the same function).
 */
int qf_cmd_rotate(int argc, char **argv)
{
	struct qf_model *m = NULL;
	uint64_t seed = QF_ROT_SEED;
	int ret;

	if (argc == 5 && !strcmp(argv[3], "--seed")) {
		seed = strtoull(argv[4], NULL, 0);
		argc = 3;
	}
	if (argc != 3) {
		fputs("usage: quantfs rotate SRC DST [--seed N]\n", stderr);
		return 2;
	}
	if (mkdir(argv[2], 0755) < 0 && errno != EEXIST) {
		fprintf(stderr, "quantfs: rotate: %s: %s\n", argv[2],
			strerror(errno));
		return 1;
	}
	ret = qf_model_open(argv[1], &m);
	if (!ret)
		ret = qf_rot_write(m, seed, argv[2]);
	qf_model_close(m);
	if (ret < 0) {
		fprintf(stderr, "quantfs: rotate '%s': %s\n", argv[1],
			qf_strerror(ret));
		return 1;
	}
	return 0;
}
