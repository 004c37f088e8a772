/*
 * arch_i.h - private to quant/io: the rows each family file adds to the
 * architecture table (arch.c) and the hooks they implement.  A family
 * file (arch_gemma.c, arch_phi3.c, arch_moe.c) defines its rows' hooks;
 * the row macros below list its entries.
 */
#ifndef QF_ARCH_I_H
#define QF_ARCH_I_H

#include "io.h"

/* Gemma 2 and Gemma 3 (text): arch_gemma.c */
#define QF_ARCH_GEMMA_ROWS
/* Phi-3 / Phi-4-mini: arch_phi3.c */
#define QF_ARCH_PHI3_ROWS
/* Qwen3-MoE, Mixtral, OLMoE: arch_moe.c */
#define QF_ARCH_MOE_ROWS

#endif /* QF_ARCH_I_H */
