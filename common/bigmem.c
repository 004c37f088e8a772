/*
 * bigmem.c - large transient buffers (the forward pass's activations).
 *
 * malloc hands a request over M_MMAP_THRESHOLD (at most 32 MiB) to mmap
 * and gives it back on free, so a buffer made per call is faulted in
 * again 4 KiB at a time on every call: on this project's machines that
 * was a sixth of a Qwen3-0.6B-shaped forward (bench_forward, perf).
 * Here a big buffer is a 2 MiB-aligned anonymous mapping that asks for
 * transparent huge pages (MADV_HUGEPAGE; the kernel's "madvise" mode
 * honours it), 512 times fewer faults.  Where the kernel has no huge
 * pages the mapping works as malloc's would.  Under AddressSanitizer
 * every size goes to malloc, so that overruns stay caught.
 */
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "common.h"

#ifdef __SANITIZE_ADDRESS__
#define BIG SIZE_MAX		/* everything to malloc */
#else
#define BIG (4u << 20)		/* smaller requests go to malloc */
#endif
#define HUGE (2u << 20)		/* x86-64's PMD page */

static size_t rounded(size_t n)
{
	return (n + HUGE - 1) & ~(size_t)(HUGE - 1);
}

void *qf_big_alloc(size_t n)
{
	size_t len, head;
	char *p, *a;

	if (n < BIG)
		return malloc(n);
	len = rounded(n);
	if (len < n || len + HUGE < len)
		return NULL;
	p = mmap(NULL, len + HUGE, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return NULL;
	a = (char *)(((uintptr_t)p + HUGE - 1) & ~(uintptr_t)(HUGE - 1));
	head = (size_t)(a - p);
	if (head)
		munmap(p, head);
	munmap(a + len, HUGE - head);
#ifdef MADV_HUGEPAGE
	(void)madvise(a, len, MADV_HUGEPAGE);
#endif
	return a;
}

void qf_big_free(void *p, size_t n)
{
	if (!p)
		return;
	if (n < BIG)
		free(p);
	else
		munmap(p, rounded(n));
}
