/*
 * guard.c - mapped source files that shrink while they are read.
 *
 * Model weights are read through MAP_SHARED mappings (one page cache for
 * every reader).  When another process truncates such a file in place
 * (`cp new.safetensors model.safetensors` does), a read past the new end
 * raises SIGBUS, which would kill the daemon and every reader's
 * connection.  A guarded mapping instead gets a page of zeros where the
 * fault was, and its fault count goes up; whoever read from it checks the
 * count after reading (qf_guard_faults) and fails with QF_ECORRUPT, so
 * the zeros are never used.  A fault outside every guarded mapping is
 * handed back to the previous disposition (a crash, as before).
 *
 * The handler only loads atomics and calls mmap(2), a system call safe in
 * a signal handler on Linux.
 */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common.h"

#define GUARD_SLOTS 8192

struct guard_slot {
	atomic_uintptr_t lo;		/* [lo, hi): a guarded mapping, */
					/* 0: a free slot */
	atomic_uintptr_t hi;
	atomic_uint faults;
};

static struct guard_slot slots[GUARD_SLOTS];
static atomic_int nslots;		/* slots ever used */
static pthread_mutex_t slot_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t installed = PTHREAD_ONCE_INIT;
static struct sigaction previous;
static uintptr_t page;

static void on_sigbus(int sig, siginfo_t *si, void *ctx)
{
	uintptr_t a = (uintptr_t)si->si_addr;
	int i, n = atomic_load(&nslots);

	(void)sig;
	(void)ctx;
	for (i = 0; i < n; i++) {
		uintptr_t lo = atomic_load(&slots[i].lo);

		if (!lo || a < lo || a >= atomic_load(&slots[i].hi))
			continue;
		if (mmap((void *)(a & ~(page - 1)), page, PROT_READ,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1,
			 0) == MAP_FAILED)
			break;
		atomic_fetch_add(&slots[i].faults, 1);
		return;		/* the read goes on, on zeros */
	}
	sigaction(SIGBUS, &previous, NULL);	/* not ours: fault again */
}

static void install(void)
{
	struct sigaction sa;

	page = (uintptr_t)sysconf(_SC_PAGESIZE);
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_sigbus;
	sa.sa_flags = SA_SIGINFO | SA_NODEFER;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGBUS, &sa, &previous);
}

int qf_guard_add(const void *p, size_t len)
{
	int i, n;

	pthread_once(&installed, install);
	pthread_mutex_lock(&slot_lock);
	n = atomic_load(&nslots);
	for (i = 0; i < n && atomic_load(&slots[i].lo); i++)
		;
	if (i == GUARD_SLOTS) {
		pthread_mutex_unlock(&slot_lock);
		return -ENOSPC;
	}
	atomic_store(&slots[i].faults, 0);
	atomic_store(&slots[i].hi, (uintptr_t)p + len);
	atomic_store(&slots[i].lo, (uintptr_t)p);
	if (i == n)
		atomic_store(&nslots, n + 1);
	pthread_mutex_unlock(&slot_lock);
	return i;
}

void qf_guard_remove(int id)
{
	if (id < 0 || id >= GUARD_SLOTS)
		return;
	pthread_mutex_lock(&slot_lock);
	atomic_store(&slots[id].lo, 0);
	pthread_mutex_unlock(&slot_lock);
}

unsigned qf_guard_faults(int id)
{
	if (id < 0 || id >= GUARD_SLOTS)
		return 0;
	return atomic_load(&slots[id].faults);
}
