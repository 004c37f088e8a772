/*
 * report_gguf.c - the report's rows for variants served only as
 * model.gguf (the k-quants): what identifies their bytes, and a model
 * directory the evaluation reads, decoded from the file the mount serves.
 *
 * The digest covers the file's size and every byte before its tensor data
 * (metadata and tensor infos), as a safetensors row's covers the size and
 * JSON header.  The decoded model (F32 safetensors, about 7 bytes per byte
 * of a 4-bit file) lives in a directory under the report cache only while
 * its row is measured.
 */
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gguf.h"
#include "report_i.h"

#define CHUNK (1u << 20)		/* header bytes hashed per read */

int qf_report_hash_gguf(struct qf_sha256 *h, const char *path,
			struct row *r)
{
	struct qf_gguf_file *g = NULL;
	uint64_t size, off, len;
	char *buf = NULL;
	ssize_t k;
	int ret;

	ret = qf_gguf_open(path, &g, NULL);
	if (ret < 0)
		return ret;
	buf = malloc(CHUNK);
	if (!buf) {
		ret = -ENOMEM;
		goto out_close;
	}
	size = g->size;
	len = g->data_off;
	/* as report_store.c's hash_part(): name, length, bytes (streamed) */
	qf_sha256_update(h, "model.gguf", sizeof("model.gguf"));
	qf_sha256_update(h, &(uint64_t){ sizeof(size) }, 8);
	qf_sha256_update(h, &size, sizeof(size));
	qf_sha256_update(h, "header", sizeof("header"));
	qf_sha256_update(h, &len, sizeof(len));
	for (off = 0; off < len; off += (uint64_t)k) {
		k = pread(g->fd, buf, len - off < CHUNK ? len - off : CHUNK,
			  (off_t)off);
		if (k < 0 && errno == EINTR) {
			k = 0;
			continue;
		}
		if (k <= 0) {
			ret = k < 0 ? -errno : QF_ECORRUPT;
			goto out_close;
		}
		qf_sha256_update(h, buf, (size_t)k);
	}
	r->file_bytes += size;
	r->weight_bytes += g->data_bytes;
out_close:
	free(buf);
	qf_gguf_close(g);
	return ret;
}

/* Decoded models left by reports that were killed: gguf.<pid>.* of a
 * process that is gone. */
static void sweep_stale(const char *parent)
{
	struct qf_buf p = QF_BUF_INIT;
	struct dirent *e;
	DIR *d = opendir(parent);
	long pid;
	char *end;

	while (d && (e = readdir(d))) {
		if (strncmp(e->d_name, "gguf.", 5))
			continue;
		pid = strtol(e->d_name + 5, &end, 10);
		if (*end != '.' || pid <= 0 || pid > INT_MAX ||
		    kill((pid_t)pid, 0) == 0 || errno != ESRCH)
			continue;
		qf_buf_reset(&p);
		if (qf_buf_addf(&p, "%s/%s", parent, e->d_name) == 0)
			qf_report_gguf_remove(qf_buf_detach(&p, NULL));
	}
	if (d)
		closedir(d);
	qf_buf_release(&p);
}

int qf_report_gguf_model(const struct row *r, const char *parent, char **tmp,
			 const char **why)
{
	struct qf_buf d = QF_BUF_INIT, src = QF_BUF_INIT;
	int ret;

	*why = NULL;
	sweep_stale(parent);
	qf_buf_addf(&d, "%s/gguf.%ld.XXXXXX", parent, (long)getpid());
	qf_buf_addf(&src, "%s/model.gguf", r->dir);
	if (!d.data || !src.data) {
		ret = -ENOMEM;
		goto out_release;
	}
	if (!mkdtemp(d.data)) {
		ret = -errno;
		goto out_release;
	}
	ret = qf_gguf_to_model_dir(src.data, r->dir, d.data, why);
	if (ret < 0) {
		qf_report_gguf_remove(qf_buf_detach(&d, NULL));
		goto out_release;
	}
	*tmp = qf_buf_detach(&d, NULL);
out_release:
	qf_buf_release(&d);
	qf_buf_release(&src);
	return ret;
}

void qf_report_gguf_remove(char *tmp)
{
	struct dirent *e;
	DIR *d;

	if (!tmp)
		return;
	/* only files are written there */
	d = opendir(tmp);
	while (d && (e = readdir(d)))
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
			unlinkat(dirfd(d), e->d_name, 0);
	if (d)
		closedir(d);
	if (rmdir(tmp) < 0)
		fprintf(stderr, "quantfs: report: cannot remove '%s': %s\n",
			tmp, strerror(errno));
	free(tmp);
}
