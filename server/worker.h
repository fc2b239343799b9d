/* worker.h — one function run on its own thread, off the event loop, for
 * CPU work too large for a loop turn (the probe's row recomputation). The
 * thread writes one byte to notify_fd when fn returns: the loop watches the
 * other end. Kept apart so that no server file includes <pthread.h> (the
 * scheduler's sched.h shadows the system header of that name). */
#ifndef GPUMATCH_WORKER_H
#define GPUMATCH_WORKER_H

struct worker;

/* Starts fn(arg) on a new thread. Returns NULL when no thread could be
 * started (fn then never runs). */
struct worker *worker_start(void (*fn)(void *arg), void *arg, int notify_fd);
/* Waits for the thread (after its byte arrived, at once) and frees w. */
void worker_join(struct worker *w);

#endif
