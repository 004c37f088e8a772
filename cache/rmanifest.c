/*
 * rmanifest.c - the manifests and checkpoints of the remote tier
 * (remote.h): what one published id holds, as JSON text in the bucket.
 *
 *   {"quantfs_manifest": 1, "id": "<32 hex>", "label": "...",
 *    "host": "...", "created": 1765000000.5, "step": -1,
 *    "record": "<the id's cache record, JSON text>" or null,
 *    "values": [["name", "<64 hex sha256>", len], ...]}
 *
 * Anyone who can write the bucket can write one, so the parser is
 * bounded and fuzzed (tests/fuzz/fuzz_rmanifest.c), and nothing in a
 * manifest is trusted beyond naming what to fetch: every value is checked
 * against its sum before use, the id against the one asked for.
 */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "remote.h"

#define TEXT_MAX (16u << 20)
#define VALUES_MAX 1000000
#define NAME_MAX_ 1024
#define LEN_MAX (1ULL << 40)

static int unhex(const char *s, uint8_t *out, size_t n)
{
	return s && strlen(s) == 2 * n && qf_unhex(s, n, out) == 0 ? 0 :
	       QF_EFORMAT;
}

static int by_name(const void *a, const void *b)
{
	return strcmp(((const struct qf_rvalue *)a)->name,
		      ((const struct qf_rvalue *)b)->name);
}

static char *dup_str(const cJSON *o, const char *key)
{
	const char *s = cJSON_GetStringValue(cJSON_GetObjectItem(o, key));

	return strdup(s ? s : "");
}

static int parse_value(const cJSON *e, struct qf_rvalue *v)
{
	const cJSON *name = cJSON_GetArrayItem(e, 0);
	const cJSON *sum = cJSON_GetArrayItem(e, 1);
	const cJSON *len = cJSON_GetArrayItem(e, 2);
	size_t n;

	if (!cJSON_IsArray(e) || cJSON_GetArraySize(e) != 3 ||
	    !cJSON_IsString(name) || !cJSON_IsString(sum) ||
	    !cJSON_IsNumber(len))
		return QF_EFORMAT;
	n = strlen(name->valuestring);
	if (!n || n > NAME_MAX_ || len->valuedouble < 0 ||
	    len->valuedouble > (double)LEN_MAX ||
	    len->valuedouble != (double)(uint64_t)len->valuedouble)
		return QF_EFORMAT;
	if (unhex(sum->valuestring, v->sha, 32) < 0)
		return QF_EFORMAT;
	v->len = (uint64_t)len->valuedouble;
	v->name = strdup(name->valuestring);
	return v->name ? 0 : -ENOMEM;
}

static int parse_values(const cJSON *vals, struct qf_rmanifest *m)
{
	const cJSON *e;
	size_t i;
	int ret = 0;

	if (!cJSON_IsArray(vals))
		return QF_EFORMAT;
	m->n = (size_t)cJSON_GetArraySize(vals);
	if (m->n > VALUES_MAX)
		return QF_EFORMAT;
	m->v = calloc(m->n ? m->n : 1, sizeof(*m->v));
	if (!m->v)
		return -ENOMEM;
	i = 0;
	cJSON_ArrayForEach(e, vals) {
		ret = parse_value(e, &m->v[i++]);
		if (ret < 0)
			return ret;
	}
	qsort(m->v, m->n, sizeof(*m->v), by_name);
	for (i = 1; i < m->n; i++)
		if (!strcmp(m->v[i - 1].name, m->v[i].name))
			return QF_EFORMAT;	/* one name, two values */
	return 0;
}

int qf_rmanifest_parse(const char *text, size_t len, struct qf_rmanifest *out)
{
	const cJSON *ver, *step, *created, *rec;
	cJSON *o;
	int ret;

	memset(out, 0, sizeof(*out));
	out->step = -1;
	if (len > TEXT_MAX)
		return QF_EFORMAT;
	o = cJSON_ParseWithLength(text, len);
	if (!cJSON_IsObject(o)) {
		cJSON_Delete(o);
		return QF_EFORMAT;
	}
	ver = cJSON_GetObjectItem(o, "quantfs_manifest");
	step = cJSON_GetObjectItem(o, "step");
	created = cJSON_GetObjectItem(o, "created");
	rec = cJSON_GetObjectItem(o, "record");
	ret = cJSON_IsNumber(ver) && ver->valueint == 1 ? 0 : QF_EFORMAT;
	if (!ret)
		ret = unhex(cJSON_GetStringValue(cJSON_GetObjectItem(o, "id")),
			    out->id, QF_CACHE_VID);
	if (!ret && cJSON_IsNumber(step)) {
		if (step->valuedouble < -1 || step->valuedouble > 1e6)
			ret = QF_EFORMAT;
		else
			out->step = step->valueint;
	}
	if (!ret && cJSON_IsNumber(created))
		out->created = created->valuedouble;
	if (!ret) {
		out->label = dup_str(o, "label");
		out->host = dup_str(o, "host");
		if (cJSON_IsString(rec))
			out->record = strdup(rec->valuestring);
		if (!out->label || !out->host ||
		    (cJSON_IsString(rec) && !out->record))
			ret = -ENOMEM;
	}
	if (!ret)
		ret = parse_values(cJSON_GetObjectItem(o, "values"), out);
	cJSON_Delete(o);
	if (ret < 0)
		qf_rmanifest_free(out);
	return ret;
}

int qf_rmanifest_print(const struct qf_rmanifest *m, struct qf_buf *out)
{
	cJSON *o = cJSON_CreateObject(), *vals, *e;
	char hex[65];
	char *text;
	size_t i;

	qf_buf_reset(out);
	if (!o)
		return -ENOMEM;
	cJSON_AddNumberToObject(o, "quantfs_manifest", 1);
	qf_hex(m->id, QF_CACHE_VID, hex);
	cJSON_AddStringToObject(o, "id", hex);
	cJSON_AddStringToObject(o, "label", m->label ? m->label : "");
	cJSON_AddStringToObject(o, "host", m->host ? m->host : "");
	cJSON_AddNumberToObject(o, "created", m->created);
	cJSON_AddNumberToObject(o, "step", m->step);
	if (m->record)
		cJSON_AddStringToObject(o, "record", m->record);
	else
		cJSON_AddNullToObject(o, "record");
	vals = cJSON_AddArrayToObject(o, "values");
	for (i = 0; vals && i < m->n; i++) {
		e = cJSON_CreateArray();
		qf_hex(m->v[i].sha, 32, hex);
		cJSON_AddItemToArray(e, cJSON_CreateString(m->v[i].name));
		cJSON_AddItemToArray(e, cJSON_CreateString(hex));
		cJSON_AddItemToArray(e, cJSON_CreateNumber((double)m->v[i].len));
		cJSON_AddItemToArray(vals, e);
	}
	text = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	if (!text)
		return -ENOMEM;
	qf_buf_adds(out, text);
	free(text);
	return out->data ? 0 : -ENOMEM;
}

void qf_rmanifest_free(struct qf_rmanifest *m)
{
	size_t i;

	for (i = 0; m->v && i < m->n; i++)
		free(m->v[i].name);
	free(m->v);
	free(m->label);
	free(m->host);
	free(m->record);
	memset(m, 0, sizeof(*m));
	m->step = -1;
}

const struct qf_rvalue *qf_rmanifest_find(const struct qf_rmanifest *m,
					  const char *name)
{
	struct qf_rvalue key = { .name = (char *)name };

	return m->n ? bsearch(&key, m->v, m->n, sizeof(*m->v), by_name) : NULL;
}
