/*
 * tools_remote.c - `quantfs cache ls|rm|gc --remote s3://BUCKET[/PREFIX]`:
 * the same three commands as for the machine's cache (tools.c), on the
 * fleet's bucket (cache/remote.h, remote_admin.c).
 *
 * Credentials come as for a mount: AWS_ACCESS_KEY_ID and
 * AWS_SECRET_ACCESS_KEY, else a 0600 shared-credentials file
 * (--credentials FILE), never from the command line, where every user
 * could read them.  ls needs only read access (role read); rm and gc
 * delete (role produce, without the conditional-write probe, which would
 * itself write).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "common.h"
#include "opts.h"
#include "remote.h"
#include "tools.h"

/* The command line of one remote command. */
struct rargs {
	const char *sub;		/* ls, rm or gc */
	struct qf_remote_cfg cfg;
	bool json, dry_run, have_grace;
	double grace;
	char **sel;			/* rm: the selectors */
	int nsel;
};

static const char *const state_words[] = {
	[QF_RSTATE_PUBLISHED] = "published",
	[QF_RSTATE_UNREADABLE] = "unreadable",
	[QF_RSTATE_PRODUCING] = "in production",
	[QF_RSTATE_EXPIRED] = "lease expired",
	[QF_RSTATE_ABANDONED] = "abandoned",
};

static void utc(double t, char *out, size_t cap)
{
	time_t s = (time_t)t;
	struct tm tm;

	if (t <= 0 || !gmtime_r(&s, &tm) ||
	    !strftime(out, cap, "%Y-%m-%d %H:%M:%S", &tm))
		snprintf(out, cap, "-");
}

/* "in production by HOST: layer 2/3", "checkpoint after 2 layers, no
 * lease", ...: what an id without a usable manifest is doing. */
static void state_text(const struct qf_remote_entry *e, char *out,
		       size_t cap)
{
	char ck[64];

	if (e->nckpt)
		snprintf(ck, sizeof(ck), "checkpoint after %d layers",
			 e->ckpt_step);
	else
		snprintf(ck, sizeof(ck), "no checkpoint");
	switch (e->state) {
	case QF_RSTATE_PRODUCING:
		snprintf(out, cap, "in production by %s: layer %d/%d",
			 e->lease.holder, e->lease.done, e->lease.total);
		break;
	case QF_RSTATE_EXPIRED:
		snprintf(out, cap, "lease expired %.0f s ago (%s, layer "
			 "%d/%d); %s", e->lease_age, e->lease.holder,
			 e->lease.done, e->lease.total, ck);
		break;
	case QF_RSTATE_UNREADABLE:
		snprintf(out, cap, "manifest does not parse (cache rm "
			 "--remote %.8s removes it)", e->hex);
		break;
	default:
		snprintf(out, cap, "%s, no lease", ck);
		break;
	}
}

static cJSON *entry_json(const struct qf_remote_entry *e)
{
	cJSON *o = cJSON_CreateObject(), *l;
	char when[32], st[256];

	cJSON_AddStringToObject(o, "id", e->hex);
	cJSON_AddStringToObject(o, "state", state_words[e->state]);
	cJSON_AddStringToObject(o, "label", e->label);
	cJSON_AddStringToObject(o, "model", e->model ? e->model : "");
	cJSON_AddStringToObject(o, "variant", e->variant ? e->variant : "");
	cJSON_AddStringToObject(o, "calib", e->calib ? e->calib : "");
	cJSON_AddNumberToObject(o, "values", e->m ? (double)e->m->n : 0);
	cJSON_AddNumberToObject(o, "bytes", (double)e->bytes);
	cJSON_AddNumberToObject(o, "created", e->m ? e->m->created : 0);
	utc(e->m ? e->m->created : 0, when, sizeof(when));
	cJSON_AddStringToObject(o, "created_utc", when);
	cJSON_AddStringToObject(o, "host", e->m ? e->m->host : "");
	cJSON_AddNumberToObject(o, "checkpoints", (double)e->nckpt);
	cJSON_AddNumberToObject(o, "checkpoint_layers", e->ckpt_step);
	state_text(e, st, sizeof(st));
	cJSON_AddStringToObject(o, "status", e->m ? "published" : st);
	if (e->leased && e->state != QF_RSTATE_PUBLISHED &&
	    e->state != QF_RSTATE_UNREADABLE) {
		l = cJSON_AddObjectToObject(o, "lease");
		cJSON_AddStringToObject(l, "holder", e->lease.holder);
		cJSON_AddNumberToObject(l, "layers_done", e->lease.done);
		cJSON_AddNumberToObject(l, "layers", e->lease.total);
		cJSON_AddNumberToObject(l, "age_s", e->lease_age);
		cJSON_AddNumberToObject(l, "ttl_s", e->lease.ttl);
	} else {
		cJSON_AddNullToObject(o, "lease");
	}
	return o;
}

static int ls_json(struct qf_remote *r, const struct qf_remote_view *v)
{
	cJSON *o = cJSON_CreateObject(), *a;
	char *s;
	size_t i;

	cJSON_AddStringToObject(o, "remote", qf_remote_describe(r));
	a = cJSON_AddArrayToObject(o, "ids");
	for (i = 0; i < v->n; i++)
		cJSON_AddItemToArray(a, entry_json(&v->e[i]));
	cJSON_AddNumberToObject(o, "values", (double)v->t.values);
	cJSON_AddNumberToObject(o, "value_bytes", (double)v->t.value_bytes);
	cJSON_AddNumberToObject(o, "garbage", (double)v->t.garbage);
	cJSON_AddNumberToObject(o, "garbage_bytes",
				(double)v->t.garbage_bytes);
	cJSON_AddNumberToObject(o, "foreign", (double)v->t.foreign);
	cJSON_AddNumberToObject(o, "probes", (double)v->t.probes);
	cJSON_AddNumberToObject(o, "unreadable", (double)v->t.unreadable);
	s = cJSON_Print(o);
	if (s)
		puts(s);
	free(s);
	cJSON_Delete(o);
	return s ? 0 : 1;
}

static int ls_text(struct qf_remote *r, const struct qf_remote_view *v)
{
	char size[32], when[32], name[512], st[512];
	size_t i;

	printf("%s\n", qf_remote_describe(r));
	printf("%-32s %-36s %-30s %6s %10s %-19s %s\n", "ID", "LABEL",
	       "MODEL/VARIANT", "VALUES", "SIZE", "CREATED (UTC)", "HOST");
	for (i = 0; i < v->n; i++) {
		const struct qf_remote_entry *e = &v->e[i];

		if (!e->m) {
			state_text(e, st, sizeof(st));
			printf("%-32s %-36s (not published) %s\n", e->hex,
			       *e->label ? e->label : "-", st);
			continue;
		}
		if (e->model && e->variant)
			snprintf(name, sizeof(name), "%s/%s", e->model,
				 e->variant);
		else
			snprintf(name, sizeof(name), "-");
		qf_human_size(e->bytes, size, sizeof(size));
		utc(e->m->created, when, sizeof(when));
		printf("%-32s %-36s %-30s %6zu %10s %-19s %s\n", e->hex,
		       e->label, name, e->m->n, size, when, e->m->host);
	}
	qf_human_size(v->t.value_bytes, size, sizeof(size));
	qf_human_size(v->t.garbage_bytes, when, sizeof(when));
	printf("values/: %llu objects, %s; %llu named by no manifest or "
	       "checkpoint (garbage, %s: cache gc --remote deletes them once "
	       "older than its grace)\n", (unsigned long long)v->t.values,
	       size, (unsigned long long)v->t.garbage, when);
	if (v->t.probes || v->t.foreign || v->t.unreadable)
		printf("also: %llu probe objects, %llu keys under values/ that "
		       "are not a SHA-256 (never deleted), %llu manifests or "
		       "checkpoints that do not parse\n",
		       (unsigned long long)v->t.probes,
		       (unsigned long long)v->t.foreign,
		       (unsigned long long)v->t.unreadable);
	return 0;
}

static int rm_one(struct qf_remote *r, const struct qf_remote_view *v,
		  const struct qf_remote_entry *e)
{
	struct qf_remote_rm_result res;
	int ret = qf_remote_rm(r, v, e, &res);

	if (ret == -EBUSY) {
		fprintf(stderr, "quantfs: %s %s is in production by %s (layer "
			"%d/%d): kept\n", e->hex, e->label, e->lease.holder,
			e->lease.done, e->lease.total);
		return 1;
	}
	if (res.manifest || res.ckpts || res.lease)
		printf("removed %s %s (%s%zu checkpoint(s)%s)\n", e->hex,
		       *e->label ? e->label : "-",
		       res.manifest ? "manifest, " : "", res.ckpts,
		       res.lease ? ", lease" : "");
	if (ret < 0) {
		fprintf(stderr, "quantfs: cannot remove %s: %s\n", e->hex,
			qf_strerror(ret));
		return 1;
	}
	return 0;
}

static int cmd_rm(struct qf_remote *r, const struct qf_remote_view *v,
		  char **sel, int nsel)
{
	int i, matched = 0, ret = 0;
	size_t k;

	for (k = 0; k < v->n; k++) {
		const struct qf_remote_entry *e = &v->e[k];

		for (i = 0; i < nsel && !qf_cache_selector_match(sel[i],
				e->hex, e->model, e->variant); i++)
			;
		if (i == nsel)
			continue;
		matched++;
		ret |= rm_one(r, v, e);
	}
	if (!matched) {
		fprintf(stderr, "quantfs: nothing in %s matches\n",
			qf_remote_describe(r));
		return 1;
	}
	return ret;
}

static int cmd_gc(struct qf_remote *r, const struct qf_remote_view *v,
		  const struct rargs *a)
{
	struct qf_remote_gc_result g;
	const char *w = a->dry_run ? "to delete" : "deleted";
	char b1[32], b2[32], b3[32], b4[32];
	int ret;

	ret = qf_remote_gc(r, v, a->grace, a->dry_run, &g);
	qf_human_size(g.ckpt_bytes, b1, sizeof(b1));
	qf_human_size(g.values_deleted_bytes, b2, sizeof(b2));
	qf_human_size(g.values_kept_bytes, b3, sizeof(b3));
	qf_human_size(g.values_young_bytes, b4, sizeof(b4));
	printf("gc of %s, grace %.0f s%s\n", qf_remote_describe(r), a->grace,
	       a->dry_run ? " (dry run: nothing deleted)" : "");
	printf("  checkpoints %s: %zu superseded, %zu abandoned, %s\n", w,
	       g.ckpt_superseded, g.ckpt_abandoned, b1);
	printf("  leases %s: %zu\n", w, g.leases);
	printf("  values %s: %zu, %s %s\n", w, g.values_deleted, b2,
	       a->dry_run ? "would be freed" : "freed");
	printf("  values kept: %zu named, %s; %zu named by none but younger "
	       "than the grace, %s\n", g.values_kept, b3, g.values_young, b4);
	printf("  probes %s: %zu\n", w, g.probes);
	if (!g.swept)
		fprintf(stderr, "quantfs: values were not swept%s\n",
			ret < 0 ? "" : ": a manifest or kept checkpoint does "
			"not parse (see cache ls --remote)");
	if (ret < 0)
		fprintf(stderr, "quantfs: gc --remote: %s (%zu deletes "
			"failed)\n", qf_strerror(ret), g.failed);
	return ret < 0 || !g.swept ? 1 : 0;
}

/* Why opening (open) or reading the bucket failed, for people. */
static const char *why(int err, bool open)
{
	if (open && err == -ENOENT)
		return "no credentials: set AWS_ACCESS_KEY_ID and "
		       "AWS_SECRET_ACCESS_KEY, or give a 0600 file with "
		       "--credentials FILE";
	if (open && err == -EPERM)
		return "the credentials file is refused: it must be a regular "
		       "file of yours, mode 0600";
	if (open && err == QF_EFORMAT)
		return "the credentials file does not parse";
	if (err == -EAGAIN)
		return "the bucket does not answer";
	if (err == -EACCES)
		return "access denied (these credentials may not list it)";
	if (err == -ENOENT)
		return "no such bucket";
	return qf_strerror(err);
}

static const char remote_usage[] =
	"usage: quantfs cache ls --remote s3://BUCKET[/PREFIX] [--json] "
	"[REMOTE...]\n"
	"       quantfs cache rm --remote s3://BUCKET[/PREFIX] SELECTOR... "
	"[REMOTE...]\n"
	"       quantfs cache gc --remote s3://BUCKET[/PREFIX] "
	"[--grace SECONDS] [--dry-run] [REMOTE...]\n"
	"REMOTE: --endpoint URL, --region R, --credentials FILE\n";

static int bad_usage(const char *why, const char *arg)
{
	if (why)
		fprintf(stderr, "quantfs: %s%s%s\n", why, arg ? ": " : "",
			arg ? arg : "");
	fputs(remote_usage, stderr);
	return 2;
}

/* One option with a value: 1 when argv[*i] was it (taken), 0 when not. */
static int take(int argc, char **argv, int *i, const char *name,
		const char **out)
{
	if (strcmp(argv[*i], name) || *i + 1 >= argc)
		return 0;
	*out = argv[++*i];
	return 1;
}

/* argv[2..]: 0, or the exit status of a usage error. */
static int parse(int argc, char **argv, struct rargs *a)
{
	const char *grace = NULL;
	char *b, *p;
	int i;

	for (i = 2; i < argc; i++) {
		if (take(argc, argv, &i, "--remote", &a->cfg.url) ||
		    take(argc, argv, &i, "--endpoint", &a->cfg.endpoint) ||
		    take(argc, argv, &i, "--region", &a->cfg.region) ||
		    take(argc, argv, &i, "--credentials", &a->cfg.creds_file) ||
		    take(argc, argv, &i, "--grace", &grace))
			continue;
		if (!strcmp(argv[i], "--json") && !strcmp(a->sub, "ls"))
			a->json = true;
		else if (!strcmp(argv[i], "--dry-run") && !strcmp(a->sub, "gc"))
			a->dry_run = true;
		else if (argv[i][0] != '-' && !strcmp(a->sub, "rm"))
			a->sel[a->nsel++] = argv[i];
		else
			return bad_usage(NULL, NULL);
	}
	if (!a->cfg.url || (!strcmp(a->sub, "rm") && !a->nsel) ||
	    (grace && strcmp(a->sub, "gc")))
		return bad_usage(NULL, NULL);
	if (qf_remote_parse_url(a->cfg.url, &b, &p) < 0)
		return bad_usage("--remote: s3://BUCKET[/PREFIX] is expected (a "
				 "bucket of 3 to 63 lower-case letters, digits, "
				 "'.' and '-')", a->cfg.url);
	free(b);
	free(p);
	if (a->cfg.endpoint && strncmp(a->cfg.endpoint, "http://", 7) &&
	    strncmp(a->cfg.endpoint, "https://", 8))
		return bad_usage("--endpoint: http://HOST[:PORT] or "
				 "https://HOST[:PORT] is expected",
				 a->cfg.endpoint);
	a->grace = QF_REMOTE_GC_GRACE_DEFAULT;
	if (grace && qf_mnt_parse_double(grace, 0, 1e10, &a->grace) < 0)
		return bad_usage("--grace: a number of seconds is expected",
				 grace);
	a->have_grace = grace != NULL;
	return 0;
}

bool qf_cmd_cache_is_remote(int argc, char **argv)
{
	int i;

	for (i = 2; i < argc; i++)
		if (!strcmp(argv[i], "--remote"))
			return true;
	return false;
}

int qf_cmd_cache_remote(int argc, char **argv)
{
	struct rargs a = { .sub = argv[1] };
	struct qf_remote_view v = { 0 };
	struct qf_remote *r = NULL;
	int ret;

	if (strcmp(a.sub, "ls") && strcmp(a.sub, "rm") && strcmp(a.sub, "gc"))
		return bad_usage(NULL, NULL);
	a.sel = calloc((size_t)argc, sizeof(*a.sel));
	if (!a.sel)
		return 1;
	ret = parse(argc, argv, &a);
	if (ret)
		goto out_free;
	if (a.have_grace && a.grace < QF_REMOTE_GC_GRACE_MIN)
		fprintf(stderr, "quantfs: warning: --grace %.0f is below %.0f "
			"h: a value uploaded for a manifest not yet written "
			"(an upload in flight) may be deleted; publishers "
			"write a value again when it is older than %.0f h "
			"before naming it, so a grace of %.0f h or more is "
			"safe\n", a.grace, QF_REMOTE_GC_GRACE_MIN / 3600,
			QF_REMOTE_REFRESH_S / 3600,
			QF_REMOTE_GC_GRACE_MIN / 3600);
	a.cfg.role = strcmp(a.sub, "ls") ? QF_REMOTE_PRODUCE : QF_REMOTE_READ;
	a.cfg.probe = false;
	ret = qf_remote_open(&a.cfg, &r);
	if (ret < 0) {
		fprintf(stderr, "quantfs: cache %s --remote %s: %s\n", a.sub,
			a.cfg.url, why(ret, true));
		ret = 1;
		goto out_free;
	}
	ret = qf_remote_view(r, &v);
	if (ret < 0) {
		fprintf(stderr, "quantfs: cannot read %s: %s\n",
			qf_remote_describe(r), why(ret, false));
		ret = 1;
	} else if (!strcmp(a.sub, "ls")) {
		ret = a.json ? ls_json(r, &v) : ls_text(r, &v);
	} else if (!strcmp(a.sub, "rm")) {
		ret = cmd_rm(r, &v, a.sel, a.nsel);
	} else {
		ret = cmd_gc(r, &v, &a);
	}
	qf_remote_view_free(&v);
	qf_remote_close(r);
out_free:
	free(a.sel);
	return ret;
}
