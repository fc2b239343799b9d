/* submit-load.c — durable SubmitJob load: N keep-alive connections, one
 * request outstanding on each, for a fixed time. Records every request's
 * latency and writes the id of every acknowledged job (200 OK) to a file so
 * that the caller can check each one is in Postgres. bench/submit runs it.
 *
 * The load generator shares the machine with the server it measures, so
 * its own cost is kept small: plain non-blocking sockets on epoll, each
 * request written with one send() and each reply parsed in place (status
 * line, Content-Length, body), instead of a general HTTP client. With an
 * https:// URL the same requests go through OpenSSL (SSL_write/SSL_read on
 * the same sockets, handshake at connect, server verified against
 * --ca-file), for the cost of TLS on the same load. */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "gpumatch/v1/job_service.pb-c.h"
#include "rpc-client.h"

#define SUBMIT_PATH     "/gpumatch.v1.JobService/SubmitJob"
#define MAX_CONNECTIONS 4096
#define DRAIN_S         15 /* how long replies in flight at the end are waited for */

#define IN_CAP 8192 /* a SubmitJob reply is a few hundred bytes */

struct worker;

struct conn {
	struct worker *w; /* the thread that serves it */
	int fd;
	SSL *ssl; /* https: the connection's TLS session */
	int index;
	char in[IN_CAP];
	size_t in_len;
	uint64_t seq;    /* requests sent on this connection */
	int64_t sent_ns; /* when the outstanding request was queued */
	bool busy;
};

static struct {
	const char *host_port;
	char host[256];
	int port;
	const char *token;
	int connections;
	double seconds;
	const char *acked_path;
	const char *ca_file;
	SSL_CTX *tls; /* https:// */
	int threads;
	struct conn *conns;
	char prefix[1024]; /* the request line and headers up to Content-Length */
	size_t prefix_len;
	char nonce[32];
	int64_t start_ns, end_ns;
} L;

/* One event loop on its own thread with its share of the connections, as
 * independent clients would be: one thread doing every connection's TLS
 * would put all of the clients' work in one queue. */
struct worker {
	pthread_t thread;
	int epfd;
	struct conn *conns; /* its share of L.conns */
	int nconns;
	int busy; /* requests outstanding */
	bool stopping;
	double *lat_ms; /* one per reply, 200 or not */
	size_t n_lat, cap_lat;
	uint64_t *acked; /* job ids of 200 OK replies */
	size_t n_acked, cap_acked;
	uint64_t ok_in_window; /* 200 OK received before end_ns */
	uint64_t requests, errors, transport_errors, bad_replies;
	int errors_shown;
	size_t payload_bytes_min, payload_bytes_max;
	uint64_t payload_bytes_sum;
};

static void die(const char *what)
{
	fprintf(stderr, "submit-load: %s\n", what);
	exit(2);
}

static void *grow(void *p, size_t *cap, size_t elem)
{
	size_t n = *cap ? *cap * 2 : 65536;
	void *q = realloc(p, n * elem);
	if (!q)
		die("out of memory");
	*cap = n;
	return q;
}

static void send_one(struct conn *c);

/* Requests are small: the socket buffer takes each whole; a short write
 * means the connection is broken. */
static void send_all(struct conn *c, const char *p, size_t n)
{
	while (c->ssl && n) {
		int w = SSL_write(c->ssl, p, (int)n);
		if (w > 0) {
			p += w;
			n -= (size_t)w;
			continue;
		}
		int e = SSL_get_error(c->ssl, w);
		if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
			struct pollfd pf = { c->fd, e == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN,
				             0 };
			poll(&pf, 1, 1000);
			continue;
		}
		fprintf(stderr, "submit-load: conn %d: SSL_write failed (%d)\n", c->index, e);
		exit(2);
	}
	while (n) {
		ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			fprintf(stderr, "submit-load: conn %d: send: %s\n", c->index,
			        w < 0 ? strerror(errno) : "short write");
			exit(2);
		}
		p += w;
		n -= (size_t)w;
	}
}

static int connect_to(const char *host, int port)
{
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *ai;
	char ps[16];
	snprintf(ps, sizeof ps, "%d", port);
	if (getaddrinfo(host, ps, &hints, &ai))
		die("cannot resolve the server's host");
	int fd = socket(ai->ai_family, SOCK_STREAM, 0);
	if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen))
		die(strerror(errno));
	freeaddrinfo(ai);
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	return fd;
}

static void submit_cb(int status, const uint8_t *body, size_t len, void *arg);

/* Parses one complete reply at the start of c->in, if there is one: returns
 * its length, 0 when more bytes are needed, -1 when it is not HTTP. */
static long take_reply(struct conn *c)
{
	char *end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
	if (!end)
		return c->in_len == IN_CAP ? -1 : 0;
	size_t head = (size_t)(end - c->in) + 4;
	int status = 0;
	if (sscanf(c->in, "HTTP/1.%*d %d", &status) != 1)
		return -1;
	size_t body_len = 0;
	for (char *line = memchr(c->in, '\n', head); line && line < end;
	     line = memchr(line + 1, '\n', (size_t)(end - line))) {
		if (!strncasecmp(line + 1, "content-length:", 15))
			body_len = strtoul(line + 16, NULL, 10);
	}
	if (head + body_len > IN_CAP)
		return -1;
	if (c->in_len < head + body_len)
		return 0;
	submit_cb(status, (const uint8_t *)c->in + head, body_len, c);
	return (long)(head + body_len);
}

/* One read: bytes, 0 at EOF, or -1 with errno (EAGAIN: nothing more now). */
static ssize_t conn_read(struct conn *c)
{
	if (!c->ssl)
		return recv(c->fd, c->in + c->in_len, IN_CAP - c->in_len, MSG_DONTWAIT);
	int r = SSL_read(c->ssl, c->in + c->in_len, (int)(IN_CAP - c->in_len));
	if (r > 0)
		return r;
	int e = SSL_get_error(c->ssl, r);
	if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
		errno = EAGAIN;
		return -1;
	}
	if (e == SSL_ERROR_ZERO_RETURN)
		return 0;
	errno = EPROTO;
	return -1;
}

/* https: the handshake on the (still blocking) socket, the server's
 * certificate verified for host; then the socket turns non-blocking. */
static SSL *tls_connect(int fd, int index)
{
	SSL *ssl = SSL_new(L.tls);
	if (!ssl)
		die("SSL_new failed");
	SSL_set_fd(ssl, fd);
	unsigned char ip[16];
	if (inet_pton(AF_INET, L.host, ip) == 1 || inet_pton(AF_INET6, L.host, ip) == 1) {
		X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), L.host);
	} else {
		SSL_set_tlsext_host_name(ssl, L.host);
		SSL_set1_host(ssl, L.host);
	}
	if (SSL_connect(ssl) != 1) {
		char why[256];
		ERR_error_string_n(ERR_get_error(), why, sizeof why);
		fprintf(stderr, "submit-load: conn %d: TLS handshake failed: %s (verify: %s)\n",
		        index, why, X509_verify_cert_error_string(SSL_get_verify_result(ssl)));
		exit(2);
	}
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	return ssl;
}

static void on_readable(struct conn *c)
{
	for (;;) {
		ssize_t r = conn_read(c);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		if (r <= 0) {
			fprintf(stderr, "submit-load: conn %d: %s\n", c->index,
			        r ? strerror(errno) : "closed by the server");
			exit(2);
		}
		c->in_len += (size_t)r;
		long used;
		while ((used = take_reply(c)) > 0) {
			memmove(c->in, c->in + used, c->in_len - (size_t)used);
			c->in_len -= (size_t)used;
		}
		if (used < 0) {
			fprintf(stderr, "submit-load: conn %d: not an HTTP reply\n", c->index);
			exit(2);
		}
		/* epoll is level-triggered: with every reply taken and nothing
		 * left in OpenSSL's read-ahead, the next reply wakes us; reading
		 * on would only fetch EAGAIN */
		if (!c->in_len && !(c->ssl && SSL_has_pending(c->ssl)))
			return;
	}
}

/* A realistic single-GPU training job: an image, an argv, a few env vars,
 * one hour at most. Its idempotency key is unique to this run, connection
 * and sequence number, so every request creates a job. */
static void submit_cb(int status, const uint8_t *body, size_t len, void *arg)
{
	struct conn *c = arg;
	struct worker *w = c->w;
	int64_t now = rpcc_now_ns();
	c->busy = false;
	w->busy--;
	if (w->n_lat == w->cap_lat)
		w->lat_ms = grow(w->lat_ms, &w->cap_lat, sizeof *w->lat_ms);
	w->lat_ms[w->n_lat++] = (double)(now - c->sent_ns) / 1e6;
	if (status == 200) {
		Gpumatch__V1__SubmitJobResponse *r =
		    gpumatch__v1__submit_job_response__unpack(NULL, len, body);
		if (!r || !r->job || !r->job->id || !r->created) {
			w->bad_replies++;
			w->errors++;
		} else {
			if (w->n_acked == w->cap_acked)
				w->acked = grow(w->acked, &w->cap_acked, sizeof *w->acked);
			w->acked[w->n_acked++] = r->job->id;
			if (now <= L.end_ns)
				w->ok_in_window++;
		}
		if (r)
			gpumatch__v1__submit_job_response__free_unpacked(r, NULL);
	} else {
		w->errors++;
		if (!status)
			w->transport_errors++;
		if (w->errors_shown < 5) {
			w->errors_shown++;
			fprintf(stderr, "submit-load: conn %d: HTTP %d %.*s\n", c->index, status,
			        (int)(len > 300 ? 300 : len), body ? (const char *)body : "");
		}
	}
	if (now < L.end_ns && !w->stopping)
		send_one(c);
	else if (!w->busy)
		w->stopping = true;
}

static void send_one(struct conn *c)
{
	struct worker *w = c->w;
	char key[96], name[64];
	snprintf(key, sizeof key, "bench-%s-%d-%" PRIu64, L.nonce, c->index, c->seq);
	snprintf(name, sizeof name, "finetune-c%d-%" PRIu64, c->index, c->seq);

	char *cmd[] = {
		"python3",  "-m", "trainer.finetune", "--config", "configs/llama-7b-lora.yaml",
		"--epochs", "3",  "--batch-size",     "16",       "--output",
		"/outputs"
	};
	Gpumatch__V1__JobSpec__EnvEntry env[4];
	Gpumatch__V1__JobSpec__EnvEntry *envp[4];
	static const char *const env_kv[][2] = {
		{ "HF_HOME", "/cache/huggingface" },
		{ "WANDB_PROJECT", "llama-lora-sweeps" },
		{ "NCCL_DEBUG", "WARN" },
		{ "RUN_ID", NULL }, /* the idempotency key */
	};
	for (int i = 0; i < 4; i++) {
		gpumatch__v1__job_spec__env_entry__init(&env[i]);
		env[i].key = (char *)env_kv[i][0];
		env[i].value = env_kv[i][1] ? (char *)env_kv[i][1] : key;
		envp[i] = &env[i];
	}
	Gpumatch__V1__JobSpec spec = GPUMATCH__V1__JOB_SPEC__INIT;
	spec.kind = GPUMATCH__V1__JOB_KIND__JOB_KIND_TRAINING;
	spec.gpus_per_node = 1;
	spec.node_count = 1;
	spec.min_gpu_memory_mib = 24576;
	spec.precision = GPUMATCH__V1__PRECISION__PRECISION_BF16;
	spec.max_price_per_gpu_hour_micros = 2500000;
	spec.max_duration_us = 3600LL * 1000000;
	spec.priority_class = GPUMATCH__V1__PRIORITY_CLASS__PRIORITY_CLASS_NORMAL;
	spec.preemptible = true;
	spec.image = "ghcr.io/acme-ml/trainer:2024.06-cuda12.4";
	spec.n_command = sizeof cmd / sizeof cmd[0];
	spec.command = cmd;
	spec.n_env = 4;
	spec.env = envp;
	spec.working_dir = "/workspace";
	Gpumatch__V1__SubmitJobRequest req = GPUMATCH__V1__SUBMIT_JOB_REQUEST__INIT;
	req.idempotency_key = key;
	req.name = name;
	req.spec = &spec;

	size_t n = gpumatch__v1__submit_job_request__get_packed_size(&req);
	if (!w->payload_bytes_min || n < w->payload_bytes_min)
		w->payload_bytes_min = n;
	if (n > w->payload_bytes_max)
		w->payload_bytes_max = n;
	w->payload_bytes_sum += n;

	c->seq++;
	c->busy = true;
	w->busy++;
	w->requests++;
	char out[4096];
	int h = snprintf(out, sizeof out, "%.*s%zu\r\n\r\n", (int)L.prefix_len, L.prefix, n);
	if (h < 0 || (size_t)h + n > sizeof out)
		die("request too large");
	gpumatch__v1__submit_job_request__pack(&req, (uint8_t *)out + h);
	c->sent_ns = rpcc_now_ns();
	send_all(c, out, (size_t)h + n);
}

/* A worker's loop: sends on each of its connections, then answers replies
 * until the window ends and its last replies are in (or DRAIN_S passed). */
static void *worker_run(void *arg)
{
	struct worker *w = arg;
	int64_t drain_ns = L.end_ns + (int64_t)DRAIN_S * 1000000000;
	for (int i = 0; i < w->nconns; i++)
		send_one(&w->conns[i]);
	struct epoll_event evs[256];
	for (;;) {
		int64_t now = rpcc_now_ns();
		if (now >= L.end_ns)
			w->stopping = true;
		if (w->stopping && !w->busy)
			break;
		if (now >= drain_ns) {
			fprintf(stderr,
			        "submit-load: %d replies still missing %d s after the end\n",
			        w->busy, DRAIN_S);
			break;
		}
		int64_t until = w->stopping ? drain_ns : L.end_ns;
		int wait_ms = (int)((until - now) / 1000000) + 1;
		int n = epoll_wait(w->epfd, evs, 256, wait_ms);
		if (n < 0 && errno != EINTR)
			die(strerror(errno));
		for (int i = 0; i < n; i++)
			on_readable(evs[i].data.ptr);
	}
	return NULL;
}

static void append(void *dst, size_t *n, size_t *cap, const void *src, size_t k, size_t elem)
{
	void **d = dst;
	if (*n + k > *cap) {
		*cap = *n + k;
		*d = realloc(*d, *cap * elem);
		if (!*d)
			die("out of memory");
	}
	if (k)
		memcpy((char *)*d + *n * elem, src, k * elem);
	*n += k;
}

static void usage(void)
{
	fprintf(
	    stderr,
	    "usage: submit-load --url http[s]://HOST:PORT --token SECRET [--connections N]\n"
	    "                   [--seconds S] [--acked-file PATH] [--ca-file PEM] [--threads N]\n"
	    "  --ca-file      https: the CA that signed the server's certificate\n"
	    "  --token        a tenant token (or env GPUMATCH_TOKEN)\n"
	    "  --connections  concurrent keep-alive connections (default 64)\n"
	    "  --seconds      how long requests are sent (default 10)\n"
	    "  --acked-file   where the acknowledged job ids go, one a line\n"
	    "  --threads      event loops the connections are shared among (default 1)\n"
	    "The last line of stdout is one JSON object.\n");
	exit(1);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "url", required_argument, NULL, 'u' },
		{ "token", required_argument, NULL, 't' },
		{ "connections", required_argument, NULL, 'c' },
		{ "seconds", required_argument, NULL, 's' },
		{ "acked-file", required_argument, NULL, 'a' },
		{ "ca-file", required_argument, NULL, 'C' },
		{ "threads", required_argument, NULL, 'T' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	L.connections = 64;
	L.seconds = 10;
	L.threads = 1;
	L.token = getenv("GPUMATCH_TOKEN");
	int o;
	while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		char *end = NULL;
		switch (o) {
		case 'u':
			L.host_port = optarg;
			break;
		case 't':
			L.token = optarg;
			break;
		case 'c':
			L.connections = (int)strtol(optarg, &end, 10);
			if (*end || L.connections < 1 || L.connections > MAX_CONNECTIONS)
				usage();
			break;
		case 's':
			L.seconds = strtod(optarg, &end);
			if (*end || !(L.seconds > 0) || L.seconds > 3600)
				usage();
			break;
		case 'a':
			L.acked_path = optarg;
			break;
		case 'C':
			L.ca_file = optarg;
			break;
		case 'T':
			L.threads = (int)strtol(optarg, &end, 10);
			if (*end || L.threads < 1 || L.threads > 64)
				usage();
			break;
		default:
			usage();
		}
	}
	if (L.threads > L.connections)
		L.threads = L.connections;
	if (!L.host_port || !L.token || !*L.token ||
	    rpcc_parse_url(L.host_port, L.host, sizeof L.host, &L.port))
		usage();
	if (!strncmp(L.host_port, "https://", 8)) {
		L.tls = SSL_CTX_new(TLS_client_method());
		if (!L.tls)
			die("SSL_CTX_new failed");
		SSL_CTX_set_min_proto_version(L.tls, TLS1_2_VERSION);
		SSL_CTX_set_verify(L.tls, SSL_VERIFY_PEER, NULL);
		static const unsigned char alpn[] = "\x08http/1.1";
		SSL_CTX_set_alpn_protos(L.tls, alpn, sizeof alpn - 1);
		/* whole socket reads: conn_read calls SSL_read until it wants more */
		SSL_CTX_set_read_ahead(L.tls, 1);
		if ((L.ca_file ? SSL_CTX_load_verify_locations(L.tls, L.ca_file, NULL)
		               : SSL_CTX_set_default_verify_paths(L.tls)) != 1)
			die("cannot load --ca-file");
	}
	snprintf(L.nonce, sizeof L.nonce, "%x%x", (unsigned)getpid(),
	         (unsigned)(rpcc_now_ns() & 0xffffff));

	L.prefix_len = (size_t)snprintf(L.prefix, sizeof L.prefix,
	                                "POST " SUBMIT_PATH " HTTP/1.1\r\nHost: %s:%d\r\n"
	                                "Authorization: Bearer %s\r\n"
	                                "Content-Type: application/proto\r\nContent-Length: ",
	                                L.host, L.port, L.token);
	if (L.prefix_len >= sizeof L.prefix)
		die("token too long");
	L.conns = calloc((size_t)L.connections, sizeof *L.conns);
	struct worker *ws = calloc((size_t)L.threads, sizeof *ws);
	if (!L.conns || !ws)
		die("out of memory");
	for (int t = 0; t < L.threads; t++) {
		struct worker *w = &ws[t];
		/* connections dealt out evenly, in order */
		int first = (int)((int64_t)L.connections * t / L.threads);
		w->conns = &L.conns[first];
		w->nconns = (int)((int64_t)L.connections * (t + 1) / L.threads) - first;
		w->epfd = epoll_create1(0);
		if (w->epfd < 0)
			die("cannot set up the event loop");
	}
	for (int t = 0; t < L.threads; t++) {
		for (int i = 0; i < ws[t].nconns; i++) {
			struct conn *c = &ws[t].conns[i];
			c->w = &ws[t];
			c->index = (int)(c - L.conns);
			c->fd = connect_to(L.host, L.port);
			if (L.tls)
				c->ssl = tls_connect(c->fd, c->index);
			struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
			if (epoll_ctl(ws[t].epfd, EPOLL_CTL_ADD, c->fd, &ev))
				die(strerror(errno));
		}
	}
	fprintf(stderr, "submit-load: %d connections to %s:%d for %.1f s on %d thread(s)\n",
	        L.connections, L.host, L.port, L.seconds, L.threads);
	L.start_ns = rpcc_now_ns();
	L.end_ns = L.start_ns + (int64_t)(L.seconds * 1e9);
	for (int t = 0; t < L.threads; t++)
		if (pthread_create(&ws[t].thread, NULL, worker_run, &ws[t]))
			die("cannot start a thread");
	struct worker all = { 0 };
	for (int t = 0; t < L.threads; t++) {
		struct worker *w = &ws[t];
		pthread_join(w->thread, NULL);
		close(w->epfd);
		append(&all.lat_ms, &all.n_lat, &all.cap_lat, w->lat_ms, w->n_lat,
		       sizeof *w->lat_ms);
		append(&all.acked, &all.n_acked, &all.cap_acked, w->acked, w->n_acked,
		       sizeof *w->acked);
		free(w->lat_ms);
		free(w->acked);
		all.busy += w->busy;
		all.ok_in_window += w->ok_in_window;
		all.requests += w->requests;
		all.errors += w->errors;
		all.transport_errors += w->transport_errors;
		all.bad_replies += w->bad_replies;
		all.payload_bytes_sum += w->payload_bytes_sum;
		if (w->payload_bytes_min &&
		    (!all.payload_bytes_min || w->payload_bytes_min < all.payload_bytes_min))
			all.payload_bytes_min = w->payload_bytes_min;
		if (w->payload_bytes_max > all.payload_bytes_max)
			all.payload_bytes_max = w->payload_bytes_max;
	}
	double wall_s = (double)(rpcc_now_ns() - L.start_ns) / 1e9;
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	double cpu_s = (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
	               (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;

	if (L.acked_path) {
		FILE *f = fopen(L.acked_path, "w");
		if (!f)
			die(strerror(errno));
		for (size_t i = 0; i < all.n_acked; i++)
			fprintf(f, "%" PRIu64 "\n", all.acked[i]);
		if (fclose(f))
			die(strerror(errno));
	}

	qsort(all.lat_ms, all.n_lat, sizeof *all.lat_ms, rpcc_cmp_double);
	double window_s = (double)(L.end_ns - L.start_ns) / 1e9;
	printf("{\"connections\":%d,\"threads\":%d,\"seconds\":%.3f,\"requests\":%" PRIu64
	       ",\"replies\":%zu,\"acked\":%zu,\"ok_in_window\":%" PRIu64 ",\"errors\":%" PRIu64
	       ",\"transport_errors\":%" PRIu64 ",\"bad_replies\":%" PRIu64
	       ",\"unanswered\":%d,\"submits_per_s\":%.1f,\"p50_ms\":%.3f,\"p90_ms\":%.3f"
	       ",\"p99_ms\":%.3f,\"p999_ms\":%.3f,\"max_ms\":%.3f,\"payload_bytes\":%zu"
	       ",\"payload_bytes_min\":%zu,\"payload_bytes_max\":%zu,\"wall_s\":%.3f"
	       ",\"cpu_s\":%.3f}\n",
	       L.connections, L.threads, window_s, all.requests, all.n_lat, all.n_acked,
	       all.ok_in_window, all.errors, all.transport_errors, all.bad_replies, all.busy,
	       (double)all.ok_in_window / window_s, rpcc_quantile(all.lat_ms, all.n_lat, 0.50),
	       rpcc_quantile(all.lat_ms, all.n_lat, 0.90),
	       rpcc_quantile(all.lat_ms, all.n_lat, 0.99),
	       rpcc_quantile(all.lat_ms, all.n_lat, 0.999),
	       all.n_lat ? all.lat_ms[all.n_lat - 1] : 0.0,
	       all.requests ? (size_t)(all.payload_bytes_sum / all.requests) : 0,
	       all.payload_bytes_min, all.payload_bytes_max, wall_s, cpu_s);

	for (int i = 0; i < L.connections; i++) {
		SSL_free(L.conns[i].ssl);
		close(L.conns[i].fd);
	}
	free(L.conns);
	free(ws);
	free(all.lat_ms);
	free(all.acked);
	return all.busy ? 3 : 0;
}
