/*
 * s3_cli.c - the S3 client (cache/s3.h) from the command line, for the
 * cluster tests against a real radosgw; not a test by itself.
 *
 * usage: s3_cli ENDPOINT BUCKET CMD ...
 *   get KEY [FILE]        head KEY             delete KEY
 *   put KEY FILE          put-new KEY FILE     (If-None-Match: *)
 *   put-match ETAG KEY FILE                    (If-Match: ETAG)
 *   list [PREFIX]         mkbucket
 * FILE "-" is stdin (put) or stdout (get).  Credentials through
 * qf_s3_creds_load (AWS_* variables, else the shared file); region from
 * AWS_REGION; S3_CLI_MAX_KEYS sets the listing page.  Prints "status N",
 * "etag E", "length N", "last_modified T", "date T", "error E" lines, then
 * for get without FILE "body N" and the N bytes, for list one
 * "obj KEY SIZE ETAG LAST_MODIFIED" line per object and "count N".
 * Exit 0 when the server answered (whatever the status), 2 when no
 * answer came (the error printed), 1 on a usage or local error.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "s3.h"

#define CLI_MAX_BODY (1ull << 32)

static int usage(void)
{
	fprintf(stderr, "usage: s3_cli ENDPOINT BUCKET get KEY [FILE] | "
		"head KEY | put KEY FILE | put-new KEY FILE | put-match ETAG "
		"KEY FILE | delete KEY | list [PREFIX] | mkbucket\n");
	return 1;
}

static int read_input(const char *path, struct qf_buf *b)
{
	char chunk[65536];
	size_t n;

	if (strcmp(path, "-"))
		return qf_read_file(path, CLI_MAX_BODY, b);
	while ((n = fread(chunk, 1, sizeof(chunk), stdin)) > 0)
		if (qf_buf_add(b, chunk, n))
			return -ENOMEM;
	return ferror(stdin) ? -EIO : 0;
}

static void print_resp(const struct qf_s3_resp *r)
{
	printf("status %ld\netag %s\nlength %llu\nlast_modified %.3f\n"
	       "date %.3f\n", r->status, r->etag,
	       (unsigned long long)r->length, r->last_modified, r->date);
	if (r->error[0])
		printf("error %s\n", r->error);
}

static int write_body(const struct qf_s3_resp *r, const char *path)
{
	FILE *f;

	if (!path || !strcmp(path, "-")) {
		printf("body %zu\n", r->body.len);
		fwrite(r->body.data ? r->body.data : "", 1, r->body.len, stdout);
		return 0;
	}
	f = fopen(path, "wb");
	if (!f || fwrite(r->body.data ? r->body.data : "", 1, r->body.len,
			 f) != r->body.len) {
		perror(path);
		if (f)
			fclose(f);
		return 1;
	}
	return fclose(f) ? 1 : 0;
}

static int do_list(struct qf_s3 *s, const char *prefix, struct qf_s3_resp *r)
{
	struct qf_s3_list l = QF_S3_LIST_INIT;
	size_t i;
	int ret;

	ret = qf_s3_list(s, prefix, &l, r);
	for (i = 0; i < l.n; i++)
		printf("obj %s %llu %s %.3f\n", l.obj[i].key,
		       (unsigned long long)l.obj[i].size, l.obj[i].etag,
		       l.obj[i].last_modified);
	printf("count %zu\n", l.n);
	qf_s3_list_free(&l);
	return ret;
}

static int do_put(struct qf_s3 *s, int argc, char **argv,
		  struct qf_s3_resp *r, int *status)
{
	struct qf_s3_cond cond = { false, NULL };
	struct qf_buf b = QF_BUF_INIT;
	int i = 4, ret;

	if (!strcmp(argv[3], "put-match") && argc == 7)
		cond.if_match = argv[i++];
	else if (argc != 6 || !strcmp(argv[3], "put-match"))
		return (*status = usage());
	cond.if_none_match = !strcmp(argv[3], "put-new");
	ret = read_input(argv[i + 1], &b);
	if (ret) {
		fprintf(stderr, "cannot read '%s': %s\n", argv[i + 1],
			qf_strerror(ret));
		return (*status = 1);
	}
	ret = qf_s3_put(s, argv[i], b.data ? b.data : "", b.len, &cond, r);
	qf_buf_release(&b);
	return ret;
}

/* The command's call; *status nonzero for a usage or local error. */
static int run(struct qf_s3 *s, int argc, char **argv, struct qf_s3_resp *r,
	       int *status)
{
	const char *cmd = argv[3];

	*status = 0;
	if (!strcmp(cmd, "mkbucket") && argc == 4)
		return qf_s3_bucket_create(s, r);
	if (!strcmp(cmd, "list") && argc <= 5)
		return do_list(s, argc == 5 ? argv[4] : "", r);
	if (!strcmp(cmd, "put") || !strcmp(cmd, "put-new") ||
	    !strcmp(cmd, "put-match"))
		return do_put(s, argc, argv, r, status);
	if (!strcmp(cmd, "get") && (argc == 5 || argc == 6))
		return qf_s3_get(s, argv[4], CLI_MAX_BODY, r);
	if (!strcmp(cmd, "head") && argc == 5)
		return qf_s3_head(s, argv[4], r);
	if (!strcmp(cmd, "delete") && argc == 5)
		return qf_s3_delete(s, argv[4], r);
	return (*status = usage());
}

int main(int argc, char **argv)
{
	struct qf_s3_resp r = QF_S3_RESP_INIT;
	struct qf_s3_creds creds;
	struct qf_s3_cfg cfg = { 0 };
	struct qf_s3 *s;
	const char *mk = getenv("S3_CLI_MAX_KEYS");
	int ret, status = 0;

	if (argc < 4)
		return usage();
	ret = qf_s3_creds_load(NULL, &creds);
	if (ret) {
		fprintf(stderr, "no credentials: %s\n", qf_strerror(ret));
		return 1;
	}
	cfg.endpoint = argv[1];
	cfg.bucket = argv[2];
	cfg.creds = &creds;
	cfg.list_max_keys = mk ? (unsigned)atoi(mk) : 0;
	ret = qf_s3_open(&cfg, &s);
	qf_s3_creds_free(&creds);
	if (ret) {
		fprintf(stderr, "cannot open %s: %s\n", argv[1],
			qf_strerror(ret));
		return 1;
	}
	ret = run(s, argc, argv, &r, &status);
	if (!status) {
		print_resp(&r);
		if (ret < 0)
			printf("fail %s\n", qf_strerror(ret));
		else if (!strcmp(argv[3], "get") && r.status == 200)
			status = write_body(&r, argc == 6 ? argv[5] : NULL);
		/* a listing's non-200 answer is -EIO with r filled */
		if (!status && ret < 0 && !(ret == -EIO && r.status))
			status = 2;
	}
	qf_s3_resp_free(&r);
	qf_s3_close(s);
	return status;
}
