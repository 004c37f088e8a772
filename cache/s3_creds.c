/*
 * s3_creds.c - S3 credentials from the environment or the AWS shared
 * credentials file (see s3.h).
 *
 * A secret must not come from a file someone else can write or read: the
 * file is opened once and checked on its descriptor (no race between the
 * check and the read): a regular file of ours or root's, mode 0600 or
 * stricter.  Mount options never carry secrets (they show in
 * /proc/mounts and ps).
 */
#include <fcntl.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "s3.h"

#define CREDS_FILE_MAX (1u << 20)

void qf_s3_creds_free(struct qf_s3_creds *c)
{
	if (!c)
		return;
	if (c->secret_key)
		memset(c->secret_key, 0, strlen(c->secret_key));
	free(c->access_key);
	free(c->secret_key);
	free(c->session_token);
	c->access_key = c->secret_key = c->session_token = NULL;
}

static int creds_set(char **field, const char *v)
{
	free(*field);
	*field = strdup(v);
	return *field ? 0 : -ENOMEM;
}

/* Both keys from the environment, or -ENOENT. */
static int creds_env(struct qf_s3_creds *out)
{
	const char *ak = getenv("AWS_ACCESS_KEY_ID");
	const char *sk = getenv("AWS_SECRET_ACCESS_KEY");
	const char *tok = getenv("AWS_SESSION_TOKEN");
	int ret;

	if (!ak || !*ak || !sk || !*sk)
		return -ENOENT;
	ret = creds_set(&out->access_key, ak);
	if (!ret)
		ret = creds_set(&out->secret_key, sk);
	if (!ret && tok && *tok)
		ret = creds_set(&out->session_token, tok);
	return ret;
}

static char *trim(char *s)
{
	char *e;

	while (*s == ' ' || *s == '\t')
		s++;
	e = s + strlen(s);
	while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r'))
		*--e = '\0';
	return s;
}

/* One line of the file: a section header, a key = value, or nothing. */
static int creds_line(char *line, const char *profile, bool *in,
		      bool *seen, struct qf_s3_creds *out)
{
	char *s = trim(line), *eq, *end;

	if (!*s || *s == '#' || *s == ';')
		return 0;
	if (*s == '[') {
		end = strchr(s, ']');
		if (!end || *trim(end + 1))
			return QF_EFORMAT;
		*end = '\0';
		*in = !strcmp(trim(s + 1), profile);
		*seen |= *in;
		return 0;
	}
	eq = strchr(s, '=');
	if (!eq)
		return QF_EFORMAT;
	*eq = '\0';
	if (!*in)
		return 0;
	s = trim(s);
	if (!strcmp(s, "aws_access_key_id"))
		return creds_set(&out->access_key, trim(eq + 1));
	if (!strcmp(s, "aws_secret_access_key"))
		return creds_set(&out->secret_key, trim(eq + 1));
	if (!strcmp(s, "aws_session_token"))
		return creds_set(&out->session_token, trim(eq + 1));
	return 0;
}

static int creds_parse(char *text, const char *path, struct qf_s3_creds *out)
{
	const char *profile = getenv("AWS_PROFILE");
	bool in = false, seen = false;
	char *line, *save = NULL;
	int ret = 0, n = 0;

	if (!profile || !*profile)
		profile = "default";
	for (line = strtok_r(text, "\n", &save); line && !ret;
	     line = strtok_r(NULL, "\n", &save)) {
		n++;
		ret = creds_line(line, profile, &in, &seen, out);
	}
	if (ret == QF_EFORMAT)
		qf_warn("credentials file '%s': line %d is not a section, a "
			"key = value or a comment", path, n);
	if (ret)
		return ret;
	if (!seen) {
		qf_warn("credentials file '%s' has no section [%s]", path,
			profile);
		return -ENOENT;
	}
	if (!out->access_key || !*out->access_key || !out->secret_key ||
	    !*out->secret_key) {
		qf_warn("credentials file '%s': section [%s] lacks "
			"aws_access_key_id or aws_secret_access_key", path,
			profile);
		return QF_EFORMAT;
	}
	return 0;
}

/* fd's file may hold a secret: ours (or root's), regular, no group or
 * other bits */
static int creds_check(int fd, const char *path)
{
	struct stat st;

	if (fstat(fd, &st) < 0)
		return -errno;
	if (!S_ISREG(st.st_mode)) {
		qf_warn("credentials file '%s' is not a regular file", path);
		return -EPERM;
	}
	if (st.st_uid != geteuid() && st.st_uid != 0) {
		qf_warn("credentials file '%s' is owned by uid %u, not by us",
			path, (unsigned)st.st_uid);
		return -EPERM;
	}
	if (st.st_mode & 077) {
		qf_warn("credentials file '%s' has mode %04o: others may read "
			"it; refused (chmod 600)", path,
			(unsigned)(st.st_mode & 07777));
		return -EPERM;
	}
	return 0;
}

static int creds_file(const char *path, struct qf_s3_creds *out)
{
	struct qf_buf b = QF_BUF_INIT;
	char *p;
	int fd, ret;

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0)
		return errno == ENOENT || errno == ENOTDIR ? -ENOENT : -errno;
	ret = creds_check(fd, path);
	if (!ret) {
		/* /proc/self/fd keeps it the file that was checked */
		char fdpath[64];

		snprintf(fdpath, sizeof(fdpath), "/proc/self/fd/%d", fd);
		ret = qf_read_file(fdpath, CREDS_FILE_MAX, &b);
	}
	close(fd);
	if (!ret) {
		p = b.data ? b.data : "";
		ret = creds_parse(p, path, out);
	}
	if (b.data)
		memset(b.data, 0, b.len);
	qf_buf_release(&b);
	return ret;
}

int qf_s3_creds_load(const char *file, struct qf_s3_creds *out)
{
	struct qf_buf path = QF_BUF_INIT;
	const char *home;
	struct passwd *pw;
	int ret;

	memset(out, 0, sizeof(*out));
	ret = creds_env(out);
	if (ret != -ENOENT)
		goto out_done;
	if (!file || !*file)
		file = getenv("AWS_SHARED_CREDENTIALS_FILE");
	if (!file || !*file) {
		home = getenv("HOME");
		pw = home && *home ? NULL : getpwuid(geteuid());
		if (pw)
			home = pw->pw_dir;
		if (!home || !*home)
			return -ENOENT;
		ret = qf_buf_addf(&path, "%s/.aws/credentials", home);
		if (ret)
			return ret;
		file = path.data;
	}
	ret = creds_file(file, out);
	qf_buf_release(&path);
out_done:
	if (ret)
		qf_s3_creds_free(out);
	return ret;
}
