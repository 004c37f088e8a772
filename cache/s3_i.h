/*
 * s3_i.h - what s3_list.c needs of the client core (s3.c), private to
 * cache/.
 */
#ifndef QF_S3_I_H
#define QF_S3_I_H

#include "s3.h"

/* GET /bucket?query (canonical), the body bounded by max; as qf_s3_get. */
int qf_s3_get_query(struct qf_s3 *s, const char *query, uint64_t max,
		    struct qf_s3_resp *r);
/* cfg->list_max_keys: 0 for the server's page */
unsigned qf_s3_list_page(const struct qf_s3 *s);

#endif /* QF_S3_I_H */
