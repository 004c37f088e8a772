/*
 * quant.h - the umbrella of quant/ for fs/ and mounts/, which may use
 * every layer: model I/O and formats (io.h), the tokenizer (tok.h), GGUF
 * (gguf.h), the network (nn.h), calibration (calib.h), the quantization
 * methods (method.h, brecq.h, mixed.h), variants (variant.h) and their
 * evaluation (eval.h).  Code inside quant/, tests and benches include
 * the header of the layer they use instead.
 */
#ifndef QF_QUANT_H
#define QF_QUANT_H

#include "io.h"
#include "tok.h"
#include "gguf.h"
#include "nn.h"
#include "calib.h"
#include "method.h"
#include "brecq.h"
#include "mixed.h"
#include "rot.h"
#include "variant.h"
#include "eval.h"

#endif /* QF_QUANT_H */
