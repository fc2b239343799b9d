#!/usr/bin/env bash
# Installs the Debian 12 packages gpumatch needs to build, test and run.
# Idempotent: does nothing (and needs no network) when all are present.
set -euo pipefail

packages=(
	build-essential pkg-config meson ninja-build python3 clang-format
	protobuf-c-compiler libprotobuf-c-dev
	libevent-dev libpq-dev libhiredis-dev libjansson-dev libyaml-dev
	postgresql redis-server
	protobuf-compiler python3-protobuf
	clang # fuzz/: the libFuzzer targets are built with clang
	libclang-rt-14-dev # fuzz/: libFuzzer and the sanitizer runtimes for clang
	util-linux # prlimit, for the descriptor-exhaustion test
	# TLS: gpumatchd and the CLI/agent (bufferevent_openssl), certificates in tests
	libssl-dev
	openssl
	ca-certificates
	# gpu-probe's HTTP(S) client
	libcurl4-openssl-dev
	chromium    # the console's browser tests (tests/browser, DevTools protocol)
	prometheus  # promtool: checks and unit-tests deploy/prometheus's rules
	debhelper # the Debian package (debian/, tests/install)
	fakeroot  # dpkg-buildpackage -us -uc
	lintian   # the package's check (tests/install)
	podman # container jobs (the agent's runtime; tests run real containers)
	runc # podman's OCI runtime here: crun cannot run under hybrid cgroups
	busybox-static # the container tests' image, imported from a local rootfs
)

missing=()
for p in "${packages[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
		missing+=("$p")
	fi
done
# Bare (image-less) jobs run as this unprivileged user (gpumatch agent
# --run-as); created once, no login, no home.
ensure_job_user() {
	if ! getent passwd gpumatch-job >/dev/null 2>&1 && command -v useradd >/dev/null 2>&1; then
		if [ "$(id -u)" -eq 0 ]; then
			useradd --system --no-create-home --home-dir /nonexistent \
				--shell /usr/sbin/nologin gpumatch-job 2>/dev/null || true
		fi
	fi
}
# podman's OCI runtime: runc. crun (podman's first choice when installed)
# cannot run containers under hybrid cgroups; the agent passes
# --oci-runtime runc itself, this makes a bare `podman run` agree.
ensure_podman_runtime() {
	local conf=/etc/containers/containers.conf.d/50-gpumatch-runc.conf
	if [ "$(id -u)" -eq 0 ] && command -v runc >/dev/null 2>&1 && [ ! -e "$conf" ]; then
		mkdir -p "$(dirname "$conf")"
		printf '# written by gpumatch deploy/install-deps.sh\n[engine]\nruntime = "runc"\n' \
			>"$conf"
	fi
}
if [ ${#missing[@]} -eq 0 ]; then
	ensure_job_user
	ensure_podman_runtime
	exit 0
fi

SUDO=
if [ "$(id -u)" -ne 0 ]; then
	SUDO=sudo
fi
echo "install-deps: installing ${#missing[@]} packages: ${missing[*]}" >&2
# Another apt (unattended-upgrades, a second terminal) may hold the dpkg
# lock: wait for it, up to APT_LOCK_TIMEOUT seconds, instead of failing.
apt_opts=(-o "DPkg::Lock::Timeout=${APT_LOCK_TIMEOUT:-600}")
if [ -t 2 ]; then
	apt_opts+=(-o Dpkg::Progress-Fancy=1)
fi
echo "install-deps: apt-get update (waits for the apt lock if another apt holds it)" >&2
$SUDO apt-get "${apt_opts[@]}" update
echo "install-deps: apt-get install" >&2
# apt's own progress goes to the terminal: downloads, then one line per package
DEBIAN_FRONTEND=noninteractive $SUDO apt-get "${apt_opts[@]}" install -y \
	--no-install-recommends "${missing[@]}" >&2
echo "install-deps: done" >&2
# Debian starts the packaged services on install; gpumatch runs its own
# private instances, so stop the system-wide ones where systemd is present.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
	$SUDO systemctl disable --now redis-server postgresql prometheus >/dev/null 2>&1 || true
fi
ensure_job_user
ensure_podman_runtime
