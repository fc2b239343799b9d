/* main.c — gpumatchd: argv, configuration, subcommands, the event loop.
 * Runs in the foreground (systemd Type=notify); never daemonizes. */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/event.h>

#include "app.h"
#include "gpumatch-version.h"
#include "log.h"

static void usage(FILE *out)
{
	fprintf(out, "usage: gpumatchd [COMMAND] [--config=FILE] [--key=value ...]\n"
	             "\n"
	             "commands:\n"
	             "  serve                 run the server (default)\n"
	             "  migrate               apply the SQL migrations to Postgres and exit\n"
	             "  create-admin-token    create an admin API token, print it once, exit\n"
	             "                        (--name=NAME to label it)\n"
	             "  version               print the version (also --version)\n"
	             "  help                  this text\n"
	             "\n"
	             "signals: SIGTERM/SIGINT drain and exit 0 (a second one exits at once),\n"
	             "         SIGHUP reloads the keys marked [reload].\n"
	             "exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error\n\n");
	cfg_print_help(out);
}

/* systemd's readiness protocol, without linking libsystemd. */
static void sd_notify_ready(void)
{
	const char *path = getenv("NOTIFY_SOCKET");
	if (!path || !*path)
		return;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	size_t len = strlen(path);
	if (len >= sizeof sa.sun_path)
		return;
	memcpy(sa.sun_path, path, len);
	if (sa.sun_path[0] == '@')
		sa.sun_path[0] = '\0';
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return;
	static const char msg[] = "READY=1";
	sendto(fd, msg, sizeof msg - 1, 0, (struct sockaddr *)&sa,
	       (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len));
	close(fd);
}

int main(int argc, char **argv)
{
	const char *cmd = "serve";
	int first = 1;
	if (argc > 1 && argv[1][0] != '-') {
		cmd = argv[1];
		first = 2;
	}
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--version") || (i == 1 && !strcmp(argv[i], "version"))) {
			printf("gpumatchd %s\n", GPUMATCH_VERSION_STRING);
			return 0;
		}
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			usage(stdout);
			return 0;
		}
	}
	if (!strcmp(cmd, "help")) {
		usage(stdout);
		return 0;
	}
	/* create-admin-token takes --name=...; keep it out of the config table */
	const char *token_name = "admin";
	char **args = calloc((size_t)argc + 1, sizeof *args);
	if (!args)
		return 1;
	int nargs = 0;
	for (int i = 0; i < argc; i++) {
		if (i >= first && !strncmp(argv[i], "--name=", 7) &&
		    !strcmp(cmd, "create-admin-token"))
			token_name = argv[i] + 7;
		else
			args[nargs++] = argv[i];
	}
	struct app a;
	memset(&a, 0, sizeof a);
	char err[1024];
	if (cfg_load(&a.cfg, nargs, args, first, err, sizeof err)) {
		fprintf(stderr, "gpumatchd: %s\n", err);
		free(args);
		return 2;
	}
	free(args);
	int lvl = log_parse_level(a.cfg.log_level);
	if (lvl < 0) {
		fprintf(stderr, "gpumatchd: log_level: unknown level \"%s\"\n", a.cfg.log_level);
		return 2;
	}
	log_min_level = (enum log_level)lvl;

	if (!strcmp(cmd, "migrate")) {
		int v =
		    migrate_apply(a.cfg.pg_conninfo, migrate_default_dir(), false, err, sizeof err);
		if (v < 0) {
			fprintf(stderr, "gpumatchd migrate: %s\n", err);
			return 1;
		}
		fprintf(stderr, "gpumatchd migrate: schema at version %d\n", v);
		return 0;
	}
	if (!strcmp(cmd, "create-admin-token")) {
		char secret[64];
		if (auth_create_token_blocking(a.cfg.pg_conninfo, 3, 0, 0, token_name, secret,
		                               sizeof secret, err, sizeof err)) {
			fprintf(stderr, "gpumatchd create-admin-token: %s\n", err);
			return 1;
		}
		fprintf(stderr, "admin token created; it is shown once, keep it safe:\n");
		printf("%s\n", secret);
		return 0;
	}
	if (strcmp(cmd, "serve")) {
		fprintf(stderr, "gpumatchd: unknown command \"%s\" (see --help)\n", cmd);
		return 2;
	}

	signal(SIGPIPE, SIG_IGN);
	/* The changelist folds the add/del pairs that evhttp makes around each
	 * request into at most one epoll_ctl per descriptor per loop turn:
	 * under load those calls were a tenth of the process's time. No
	 * descriptor here is dup()ed, the one case the changelist gets wrong. */
	struct event_config *ecfg = event_config_new();
	if (ecfg) {
		event_config_set_flag(ecfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
		a.base = event_base_new_with_config(ecfg);
		event_config_free(ecfg);
	}
	if (!a.base) {
		fprintf(stderr, "gpumatchd: cannot create the event loop\n");
		return 1;
	}
	if (app_start(&a, err, sizeof err)) {
		log_error("start-up failed err=\"%s\"", err);
		app_free(&a);
		event_base_free(a.base);
		return 1;
	}
	sd_notify_ready();
	event_base_dispatch(a.base);
	app_free(&a);
	event_base_free(a.base);
	log_info("stopped");
	return 0;
}
