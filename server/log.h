/* log.h — key=value log lines on stderr (the journal). The level is checked
 * before formatting. */
#ifndef GPUMATCH_LOG_H
#define GPUMATCH_LOG_H

enum log_level { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR };

extern enum log_level log_min_level;

/* Parses "debug", "info", "warn", "error"; returns -1 when unknown. */
int log_parse_level(const char *s);

void log_write(enum log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* log_info("lease expired job=%llu node=%llu", ...) prints
 * "ts=2026-11-22T03:00:00.123Z level=info msg=\"lease expired\" job=1 node=2":
 * the text up to the first "key=" is the message. */
#define log_debug(...)                                     \
	do {                                               \
		if (log_min_level <= LOG_DEBUG)            \
			log_write(LOG_DEBUG, __VA_ARGS__); \
	} while (0)
#define log_info(...)                                     \
	do {                                              \
		if (log_min_level <= LOG_INFO)            \
			log_write(LOG_INFO, __VA_ARGS__); \
	} while (0)
#define log_warn(...)                                     \
	do {                                              \
		if (log_min_level <= LOG_WARN)            \
			log_write(LOG_WARN, __VA_ARGS__); \
	} while (0)
#define log_error(...)                                     \
	do {                                               \
		if (log_min_level <= LOG_ERROR)            \
			log_write(LOG_ERROR, __VA_ARGS__); \
	} while (0)

#endif
