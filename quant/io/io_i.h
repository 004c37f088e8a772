/*
 * io_i.h - helpers shared inside quant/io only.
 */
#ifndef QF_IO_I_H
#define QF_IO_I_H

#include <stddef.h>
#include <stdint.h>

/* Length of the strict UTF-8 sequence at s[0..n), 0 when invalid. */
size_t qf_utf8_seq(const uint8_t *s, size_t n);

#endif /* QF_IO_I_H */
