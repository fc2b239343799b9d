/* console.h — the web console's static files, built into gpumatchd
 * (console/embed.py) and served at / with a strict Content-Security-Policy
 * (console.c). */
#ifndef GPUMATCH_CONSOLE_H
#define GPUMATCH_CONSOLE_H

#include <stddef.h>

struct console_file {
	const char *path; /* "/app.js" */
	const char *content_type;
	const unsigned char *data;
	size_t len;
};
/* Ends with a zeroed entry. */
extern const struct console_file console_files[];

struct rpc_server;
/* Adds the GET routes for / and every console file. */
void console_register(struct rpc_server *s);

#endif
