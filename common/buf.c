/*
 * buf.c - growable byte buffer, after git's strbuf, and qf_grow, the
 * doubling that growable arrays of other types share.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

int qf_buf_grow(struct qf_buf *b, size_t extra)
{
	if (extra > SIZE_MAX - b->len - 1)
		return -ENOMEM;
	return qf_grow(&b->data, b->len + extra + 1, &b->cap, 64, 1);
}

int qf_grow(void *pp, size_t need, size_t *cap, size_t first, size_t size)
{
	size_t c = *cap ? *cap : first;
	void *p;

	if (need <= *cap)
		return 0;
	while (c < need && c <= SIZE_MAX / 2)
		c *= 2;
	if (c < need || c > SIZE_MAX / size)
		return -ENOMEM;
	memcpy(&p, pp, sizeof(p));
	p = realloc(p, c * size);
	if (!p)
		return -ENOMEM;
	memcpy(pp, &p, sizeof(p));
	*cap = c;
	return 0;
}

int qf_buf_add(struct qf_buf *b, const void *data, size_t len)
{
	int ret = qf_buf_grow(b, len);

	if (ret < 0)
		return ret;
	if (len)
		memcpy(b->data + b->len, data, len);
	b->len += len;
	b->data[b->len] = '\0';
	return 0;
}

int qf_buf_adds(struct qf_buf *b, const char *s)
{
	return qf_buf_add(b, s, strlen(s));
}

int qf_buf_addf(struct qf_buf *b, const char *fmt, ...)
{
	va_list ap;
	int n;
	int ret;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0)
		return -EINVAL;
	ret = qf_buf_grow(b, (size_t)n);
	if (ret < 0)
		return ret;
	va_start(ap, fmt);
	vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
	return 0;
}

void qf_buf_reset(struct qf_buf *b)
{
	b->len = 0;
	if (b->data)
		b->data[0] = '\0';
}

void qf_buf_release(struct qf_buf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = 0;
	b->cap = 0;
}

char *qf_buf_detach(struct qf_buf *b, size_t *len)
{
	char *p = b->data;

	if (!p)
		p = calloc(1, 1);
	if (len)
		*len = b->len;
	b->data = NULL;
	b->len = 0;
	b->cap = 0;
	return p;
}
