/* worker.c — see worker.h. */
#include "worker.h"

#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

struct worker {
	pthread_t thread;
	void (*fn)(void *arg);
	void *arg;
	int notify_fd;
};

static void *worker_main(void *p)
{
	struct worker *w = p;
	w->fn(w->arg);
	/* the loop side notices a short write as a closed pipe at worst */
	ssize_t rc = write(w->notify_fd, "x", 1);
	(void)rc;
	return NULL;
}

struct worker *worker_start(void (*fn)(void *arg), void *arg, int notify_fd)
{
	struct worker *w = malloc(sizeof *w);
	if (!w)
		return NULL;
	w->fn = fn;
	w->arg = arg;
	w->notify_fd = notify_fd;
	if (pthread_create(&w->thread, NULL, worker_main, w)) {
		free(w);
		return NULL;
	}
	return w;
}

void worker_join(struct worker *w)
{
	if (!w)
		return;
	pthread_join(w->thread, NULL);
	free(w);
}
