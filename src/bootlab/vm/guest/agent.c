/*
 * bootlab guest agent: PID 1 of bootlab's initramfs.
 *
 * It mounts the basic filesystems, loads the modules listed in /etc/bootlab/modules (in order,
 * with finit_module, so no process is forked per module), then either gives the console an
 * interactive shell (kernel argument bootlab.shell) or serves the host over a virtio-serial port.
 *
 * Wire format, both directions: a 12-byte header {u32 type, u32 id, u32 length} in little-endian,
 * then `length` payload bytes. See bootlab/vm/protocol.py for the host side; keep them in step.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/klog.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

enum {
	/* host -> guest */
	T_EXEC = 1, T_STDIN = 2, T_SIGNAL = 3, T_SHUTDOWN = 4,
	/* guest -> host */
	T_READY = 101, T_STDOUT = 102, T_STDERR = 103, T_EXIT = 104, T_EXEC_ERROR = 105,
	T_LOG = 106,
};

#define EXEC_STDIN 1u /* the host will send stdin frames; otherwise stdin is /dev/null */
#define MAX_FRAME (1u << 20)
#define CHUNK (256u << 10)

static int port = -1;
static char *frame; /* reused payload buffer */
static char chunk[CHUNK];

static void say(const char *fmt, ...)
{
	/* Messages go to the kernel log, so they land in the console log beside the kernel's. */
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	int fd = open("/dev/kmsg", O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		fd = open("/dev/console", O_WRONLY | O_CLOEXEC);
	if (fd >= 0) {
		char line[600];
		int m = snprintf(line, sizeof line, "bootlab-agent: %.*s\n", n, buf);
		if (write(fd, line, m) < 0) { /* nothing more we can do */ }
		close(fd);
	}
}

static int root_switched;

static void power_off(void)
{
	sync();
	/* A disk root left clean: its journal needs no replay next time (a read-only attach
	 * could not replay it). Busy files make this fail; then the sync above is what we have. */
	if (root_switched)
		mount(NULL, "/", NULL, MS_REMOUNT | MS_RDONLY, NULL);
	/* With QEMU's -no-reboot a restart ends the VM at once; an ACPI power-off is slower. */
	reboot(RB_AUTOBOOT);
	for (;;)
		pause();
}

static void write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;
	while (len) {
		ssize_t n = write(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			say("write to host failed: %s", strerror(errno));
			power_off();
		}
		p += n;
		len -= n;
	}
}

static void send_frame(uint32_t type, uint32_t id, const void *data, uint32_t len)
{
	uint32_t head[3] = {type, id, len};
	struct iovec iov[2] = {{head, sizeof head}, {(void *)data, len}};
	ssize_t n = writev(port, iov, len ? 2 : 1);
	if (n == (ssize_t)(sizeof head + len))
		return;
	/* short write: finish it piecewise */
	size_t done = n < 0 ? 0 : (size_t)n;
	if (done < sizeof head) {
		write_all(port, (char *)head + done, sizeof head - done);
		done = sizeof head;
	}
	write_all(port, (const char *)data + (done - sizeof head), len - (done - sizeof head));
}

static int read_full(int fd, void *buf, size_t len)
{
	char *p = buf;
	while (len) {
		ssize_t n = read(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= n;
	}
	return 0;
}

/* Read one frame from the host; returns -1 when the host has gone away. */
static int recv_frame(uint32_t *type, uint32_t *id, uint32_t *len)
{
	uint32_t head[3];
	if (read_full(port, head, sizeof head))
		return -1;
	*type = head[0];
	*id = head[1];
	*len = head[2];
	if (*len > MAX_FRAME) {
		say("frame too large (%u bytes); protocol out of step", *len);
		return -1;
	}
	return read_full(port, frame, *len);
}

static void mount_basics(void)
{
	mkdir("/proc", 0555);
	mkdir("/sys", 0555);
	mkdir("/dev", 0755);
	mkdir("/tmp", 01777);
	mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, NULL);
	mkdir("/dev/pts", 0755);
	mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "ptmxmode=0666");
	mkdir("/dev/shm", 01777);
	mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, NULL);
	symlink("/proc/self/fd", "/dev/fd");
	symlink("/proc/self/fd/0", "/dev/stdin");
	symlink("/proc/self/fd/1", "/dev/stdout");
	symlink("/proc/self/fd/2", "/dev/stderr");
}

static void load_modules(void)
{
	FILE *f = fopen("/etc/bootlab/modules", "re");
	if (!f)
		return;
	char line[4096];
	while (fgets(line, sizeof line, f)) {
		line[strcspn(line, "\r\n")] = 0;
		if (!line[0] || line[0] == '#')
			continue;
		int optional = line[0] == '-'; /* a soft dependency: one of several providers */
		const char *path = line + optional;
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			say("module %s: %s", path, strerror(errno));
			continue;
		}
		if (syscall(SYS_finit_module, fd, "", 0) && errno != EEXIST && !optional)
			say("loading module %s failed: %s", path, strerror(errno));
		close(fd);
	}
	fclose(f);
}

/* Small text files (proc files, key lists), NUL-terminated; NULL if unreadable. */
static char *read_small_file(const char *path)
{
	FILE *f = fopen(path, "re");
	if (!f)
		return NULL;
	char *buf = calloc(1, 65536);
	size_t n = fread(buf, 1, 65535, f);
	fclose(f);
	buf[n] = 0;
	return buf;
}

/* Where kernel argument `key` (alone or as key=value) starts its tail, or NULL. The command
 * line never changes, so it is read once. */
static const char *cmdline_find(const char *key)
{
	static const char *line;
	if (!line) {
		line = read_small_file("/proc/cmdline");
		if (!line)
			line = "";
	}
	size_t kl = strlen(key);
	for (const char *p = line; (p = strstr(p, key)); p += kl) {
		char end = p[kl];
		if ((p == line || p[-1] == ' ') && (end == 0 || end == ' ' || end == '\n' || end == '='))
			return p + kl;
	}
	return NULL;
}

static int cmdline_has(const char *word)
{
	return cmdline_find(word) != NULL;
}

/* The value of kernel argument `key=value` (a fresh copy), or NULL. */
static const char *cmdline_value(const char *key)
{
	const char *p = cmdline_find(key);
	if (!p || *p != '=')
		return NULL;
	return strndup(p + 1, strcspn(p + 1, " \n"));
}

static void mkdirs(const char *path)
{
	char buf[512];
	snprintf(buf, sizeof buf, "%s", path);
	for (char *p = buf + 1; *p; p++) {
		if (*p == '/') {
			*p = 0;
			mkdir(buf, 0755);
			*p = '/';
		}
	}
	mkdir(buf, 0755);
}

/* Make the tree mounted at /newroot the root for everything that follows, keeping /dev, /proc
 * and /sys. Our binary stays mapped from the initramfs, which stays underneath. */
static int enter_newroot(const char *what)
{
	static const char *moved[] = {"/dev", "/proc", "/sys"};
	for (size_t i = 0; i < sizeof moved / sizeof *moved; i++) {
		char target[64];
		snprintf(target, sizeof target, "/newroot%s", moved[i]);
		if (mount(moved[i], target, NULL, MS_MOVE, NULL))
			say("%s has no %s to move into (%s); it will be missing", what, moved[i], strerror(errno));
	}
	if (chdir("/newroot") || mount(".", "/", NULL, MS_MOVE, NULL) || chroot(".") || chdir("/")) {
		say("switching root to %s failed: %s", what, strerror(errno));
		return -1;
	}
	root_switched = 1;
	return 0;
}

/* The disk named by bootlab.root becomes /. */
static int switch_root(const char *dev)
{
	const char *fstype = cmdline_value("bootlab.rootfstype");
	const char *flags = cmdline_value("bootlab.rootflags");
	unsigned long mflags = flags && !strcmp(flags, "ro") ? MS_RDONLY : 0;
	struct stat st;
	for (int i = 0; i < 2000 && stat(dev, &st); i++)
		usleep(5000); /* the disk appears once virtio_blk has probed it */
	mkdir("/newroot", 0755);
	/* Read-only: ext4 must not try to replay a journal on a device it cannot write. */
	const char *data = (mflags & MS_RDONLY) && (!fstype || !strncmp(fstype, "ext", 3)) ? "noload" : NULL;
	if (mount(dev, "/newroot", fstype ? fstype : "ext4", mflags, data)) {
		say("cannot mount root %s (%s): %s", dev, fstype ? fstype : "ext4", strerror(errno));
		return -1;
	}
	return enter_newroot(dev);
}

#define P9_OPTS "trans=virtio,version=9p2000.L,msize=512000"

/* The host's / (a read-only 9p share) under a tmpfs overlay becomes /: host programs run here,
 * and what they write stays in the guest's memory. */
static int host_root(const char *tag)
{
	mkdirs("/run/bootlab/host");
	mkdirs("/run/bootlab/rw");
	if (mount(tag, "/run/bootlab/host", "9p", MS_RDONLY, P9_OPTS ",cache=loose")) {
		say("cannot mount the host root (9p tag %s): %s", tag, strerror(errno));
		return -1;
	}
	mount("tmpfs", "/run/bootlab/rw", "tmpfs", 0, "mode=0755");
	mkdir("/run/bootlab/rw/upper", 0755);
	mkdir("/run/bootlab/rw/work", 0755);
	mkdir("/newroot", 0755);
	if (mount("overlay", "/newroot", "overlay", 0,
		  "lowerdir=/run/bootlab/host,upperdir=/run/bootlab/rw/upper,workdir=/run/bootlab/rw/work")) {
		say("cannot set up the overlay on the host root: %s", strerror(errno));
		return -1;
	}
	return enter_newroot("the host root");
}

/* bootlab.shares=TAG:PATH[:ro],... : virtio-9p shares, mounted after any root switch. */
static void mount_shares(const char *list)
{
	char *copy = strdup(list), *save = NULL;
	for (char *item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
		char *path = strchr(item, ':');
		if (!path)
			continue;
		*path++ = 0;
		char *ro = strchr(path, ':');
		if (ro)
			*ro++ = 0;
		mkdirs(path);
		if (mount(item, path, "9p", ro && !strcmp(ro, "ro") ? MS_RDONLY : 0, P9_OPTS))
			say("cannot mount share %s at %s: %s", item, path, strerror(errno));
	}
	free(copy);
}

static int ifreq_call(int sock, unsigned long req, const char *name, const char *ip)
{
	struct ifreq r;
	memset(&r, 0, sizeof r);
	snprintf(r.ifr_name, sizeof r.ifr_name, "%s", name);
	if (ip) {
		struct sockaddr_in *a = (struct sockaddr_in *)&r.ifr_addr;
		a->sin_family = AF_INET;
		inet_pton(AF_INET, ip, &a->sin_addr);
	} else {
		if (ioctl(sock, SIOCGIFFLAGS, &r))
			return -1;
		r.ifr_flags |= IFF_UP | IFF_RUNNING;
	}
	return ioctl(sock, req, &r);
}

/* bootlab.net=ADDR/MASK/GATEWAY/DNS: QEMU user networking's fixed plan, on eth0. Done with
 * ioctls so that it works in any root, busybox or not. Loopback always comes up. */
static char dns_server[64];

static void configure_net(const char *spec)
{
	int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (sock < 0)
		return;
	ifreq_call(sock, SIOCSIFFLAGS, "lo", NULL);
	if (spec) {
		char addr[64] = "", mask[64] = "", gw[64] = "";
		if (sscanf(spec, "%63[^/]/%63[^/]/%63[^/]/%63s", addr, mask, gw, dns_server) != 4) {
			say("bad bootlab.net=%s", spec);
		} else {
			for (int i = 0; i < 2000 && !if_nametoindex("eth0"); i++)
				usleep(5000); /* virtio_net probes asynchronously */
			if (ifreq_call(sock, SIOCSIFADDR, "eth0", addr) || ifreq_call(sock, SIOCSIFNETMASK, "eth0", mask) ||
			    ifreq_call(sock, SIOCSIFFLAGS, "eth0", NULL)) {
				say("configuring eth0 failed: %s", strerror(errno));
			} else {
				struct rtentry rt;
				memset(&rt, 0, sizeof rt);
				struct sockaddr_in *g = (struct sockaddr_in *)&rt.rt_gateway;
				g->sin_family = AF_INET;
				inet_pton(AF_INET, gw, &g->sin_addr);
				((struct sockaddr_in *)&rt.rt_dst)->sin_family = AF_INET;
				((struct sockaddr_in *)&rt.rt_genmask)->sin_family = AF_INET;
				rt.rt_flags = RTF_UP | RTF_GATEWAY;
				if (ioctl(sock, SIOCADDRT, &rt))
					say("adding the default route failed: %s", strerror(errno));
			}
		}
	}
	close(sock);
}

/* After any root switch: point DNS at QEMU's resolver where that harms nothing (our initramfs,
 * the host root's tmpfs overlay, or a disk root that has no resolv.conf). */
static void write_resolv_conf(int disk_root)
{
	if (!dns_server[0])
		return;
	struct stat st;
	if (disk_root && lstat("/etc/resolv.conf", &st) == 0)
		return;
	unlink("/etc/resolv.conf");
	FILE *f = fopen("/etc/resolv.conf", "we");
	if (f) {
		fprintf(f, "nameserver %s\n", dns_server);
		fclose(f);
	}
}

/* --ssh: add the keys the host put in our initramfs (read before any root switch hid them). */
static void authorize_keys(const char *keys)
{
	if (!keys || !keys[0])
		return;
	mkdir("/root", 0700);
	mkdir("/root/.ssh", 0700);
	char *old = read_small_file("/root/.ssh/authorized_keys");
	if (old && strstr(old, keys))
		return; /* already there from an earlier boot */
	FILE *f = fopen("/root/.ssh/authorized_keys", "ae");
	if (!f) {
		say("cannot write /root/.ssh/authorized_keys: %s", strerror(errno));
		return;
	}
	fputs(keys, f);
	fclose(f);
	chmod("/root/.ssh/authorized_keys", 0600);
}

static void interactive_shell(void)
{
	/* /dev/console cannot be a controlling terminal; the active console device can. */
	char name[64] = "console", path[80];
	int fd = open("/sys/class/tty/console/active", O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		ssize_t n = read(fd, name, sizeof name - 1);
		close(fd);
		if (n > 0) {
			name[n] = 0;
			char *last = strrchr(name, ' ');
			char *dev = last ? last + 1 : name;
			dev[strcspn(dev, "\n")] = 0;
			memmove(name, dev, strlen(dev) + 1);
		}
	}
	snprintf(path, sizeof path, "/dev/%s", name);
	/* Keep late kernel chatter from landing mid-typing; errors, oopses and panics still show. */
	klogctl(8 /* SYSLOG_ACTION_CONSOLE_LEVEL */, NULL, 4);
	pid_t pid = fork();
	if (pid == 0) {
		setsid();
		int tty = open(path, O_RDWR);
		if (tty < 0)
			tty = open("/dev/console", O_RDWR);
		ioctl(tty, TIOCSCTTY, 1);
		dup2(tty, 0);
		dup2(tty, 1);
		dup2(tty, 2);
		if (tty > 2)
			close(tty);
		if (chdir("/root") != 0 && chdir("/") != 0) { /* stay where we are */ }
		setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 1);
		setenv("HOME", "/root", 1);
		setenv("TERM", "linux", 0);
		setenv("PS1", "bootlab:\\w# ", 1);
		execl("/bin/sh", "-sh", (char *)NULL);
		_exit(127);
	}
	int st;
	while (pid > 0 && waitpid(-1, &st, 0) != pid)
		;
	power_off();
}

/* ---- running one command at a time, streams multiplexed onto the port ---- */

struct job {
	uint32_t id;
	pid_t pid;
	int in, out, err; /* our ends of the child's pipes, -1 when closed */
	int exited, status;
	char *pending; /* stdin bytes not yet taken by the child */
	size_t pending_len, pending_off;
	int stdin_eof;
};

static struct job job = {.pid = -1, .in = -1, .out = -1, .err = -1};

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

static void start_job(uint32_t id, const char *p, uint32_t len)
{
	if (job.pid > 0) {
		int32_t e = EBUSY; /* one command at a time; the host serialises */
		send_frame(T_EXEC_ERROR, id, &e, 4);
		return;
	}
	if (len < 12) {
		int32_t e = EINVAL;
		send_frame(T_EXEC_ERROR, id, &e, 4);
		return;
	}
	uint32_t flags, argc, envc;
	memcpy(&flags, p, 4);
	memcpy(&argc, p + 4, 4);
	memcpy(&envc, p + 8, 4);
	if (argc == 0 || argc > len || envc > len) { /* every string needs at least its NUL */
		int32_t e = EINVAL;
		send_frame(T_EXEC_ERROR, id, &e, 4);
		return;
	}
	const char *end = p + len, *s = p + 12;
	char **argv = calloc(argc + 1, sizeof *argv), **envp = calloc(envc + 1, sizeof *envp);
	const char *cwd = "/";
	for (uint32_t i = 0; i < argc + envc + 1; i++) {
		const char *z = memchr(s, 0, end - s);
		if (!z) {
			int32_t e = EINVAL;
			send_frame(T_EXEC_ERROR, id, &e, 4);
			free(argv);
			free(envp);
			return;
		}
		if (i < argc)
			argv[i] = (char *)s;
		else if (i < argc + envc)
			envp[i - argc] = (char *)s;
		else if (*s)
			cwd = s;
		s = z + 1;
	}
	int pin[2], pout[2], perr[2], pexec[2];
	if (pipe2(pin, O_CLOEXEC) || pipe2(pout, O_CLOEXEC) || pipe2(perr, O_CLOEXEC) ||
	    pipe2(pexec, O_CLOEXEC)) {
		int32_t e = errno;
		send_frame(T_EXEC_ERROR, id, &e, 4);
		free(argv);
		free(envp);
		return;
	}
	fcntl(pout[0], F_SETPIPE_SZ, 1 << 20);
	fcntl(pin[1], F_SETPIPE_SZ, 1 << 20); /* a whole stdin frame fits: fewer wakeups of both sides */
	pid_t pid = fork();
	if (pid == 0) {
		if (!(flags & EXEC_STDIN)) {
			int null = open("/dev/null", O_RDONLY);
			dup2(null, pin[0]);
		}
		dup2(pin[0], 0);
		dup2(pout[1], 1);
		dup2(perr[1], 2);
		sigset_t none;
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		setsid();
		if (chdir(cwd)) {
			int32_t e = errno;
			if (write(pexec[1], &e, 4) < 0) { /* parent sees EOF */ }
			_exit(126);
		}
		environ = envp;
		execvp(argv[0], argv);
		int32_t e = errno;
		if (write(pexec[1], &e, 4) < 0) { /* parent sees EOF */ }
		_exit(e == ENOENT ? 127 : 126);
	}
	close(pin[0]);
	close(pout[1]);
	close(perr[1]);
	close(pexec[1]);
	free(argv);
	free(envp);
	int32_t e = 0;
	ssize_t n = pid < 0 ? -1 : read(pexec[0], &e, 4);
	close(pexec[0]);
	if (pid < 0 || n == 4) {
		if (pid < 0)
			e = errno;
		send_frame(T_EXEC_ERROR, id, &e, 4);
		close(pin[1]);
		close(pout[0]);
		close(perr[0]);
		if (pid > 0)
			waitpid(pid, NULL, 0);
		return;
	}
	fcntl(pin[1], F_SETFL, O_NONBLOCK);
	job = (struct job){.id = id, .pid = pid, .in = pin[1], .out = pout[0], .err = perr[0]};
	if (!(flags & EXEC_STDIN)) {
		close_fd(&job.in);
		job.stdin_eof = 1;
	}
}

static void feed_stdin(void)
{
	while (job.pending && job.pending_off < job.pending_len) {
		ssize_t n = write(job.in, job.pending + job.pending_off, job.pending_len - job.pending_off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return;
		if (n < 0) { /* the child closed its stdin: drop the rest, like a pipe would */
			job.pending_off = job.pending_len;
			close_fd(&job.in);
			break;
		}
		job.pending_off += n;
	}
	free(job.pending);
	job.pending = NULL;
	if (job.stdin_eof)
		close_fd(&job.in);
}

static void on_stdin(uint32_t id, const char *data, uint32_t len)
{
	if (id != job.id || job.pid <= 0 || job.in < 0)
		return; /* late stdin for a finished command */
	if (len == 0) {
		job.stdin_eof = 1;
		if (!job.pending)
			close_fd(&job.in);
		return;
	}
	/* Straight from the frame while the pipe takes it; only what it cannot take now is kept. */
	uint32_t off = 0;
	while (off < len) {
		ssize_t n = write(job.in, data + off, len - off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			break;
		if (n < 0) { /* the child closed its stdin: drop the rest, like a pipe would */
			close_fd(&job.in);
			return;
		}
		off += n;
	}
	if (off == len)
		return;
	job.pending = malloc(len - off);
	memcpy(job.pending, data + off, len - off);
	job.pending_len = len - off;
	job.pending_off = 0;
}

/* Move what the pipe holds now to the host; returns 0 at EOF. */
static int pump(int *fd, uint32_t type, int drain)
{
	for (;;) {
		ssize_t n = read(*fd, chunk, sizeof chunk);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return 1;
		if (n <= 0) {
			close_fd(fd);
			return 0;
		}
		send_frame(type, job.id, chunk, n);
		if (!drain)
			return 1;
	}
}

static void finish_job_if_done(void)
{
	if (job.pid <= 0 || !job.exited)
		return;
	/* The command has exited. Its pipes may still be held by background children: take what
	 * was written before the exit, then stop listening rather than wait for them. */
	if (job.out >= 0) {
		fcntl(job.out, F_SETFL, O_NONBLOCK);
		pump(&job.out, T_STDOUT, 1);
	}
	if (job.err >= 0) {
		fcntl(job.err, F_SETFL, O_NONBLOCK);
		pump(&job.err, T_STDERR, 1);
	}
	close_fd(&job.out);
	close_fd(&job.err);
	close_fd(&job.in);
	free(job.pending);
	int32_t result[2];
	if (WIFSIGNALED(job.status)) {
		result[0] = 1;
		result[1] = WTERMSIG(job.status);
	} else {
		result[0] = 0;
		result[1] = WEXITSTATUS(job.status);
	}
	send_frame(T_EXIT, job.id, result, sizeof result);
	job = (struct job){.pid = -1, .in = -1, .out = -1, .err = -1};
}

static void reap(void)
{
	int st;
	pid_t pid;
	while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
		if (pid == job.pid) {
			job.exited = 1;
			job.status = st;
		}
	}
}

#define PORT_NAME "org.bootlab.agent"

/* Our port's /dev name, found by the name QEMU gave it. Without udev there is no
 * /dev/virtio-ports/NAME link, and the vportNpM number follows the virtio device's index,
 * which depends on how the machine orders its transports (a disk may come first). */
static int find_port(char *dev, size_t size)
{
	DIR *d = opendir("/sys/class/virtio-ports");
	if (!d)
		return -1;
	struct dirent *e;
	int found = -1;
	while (found < 0 && (e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		char path[300], name[128] = "";
		snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		ssize_t n = read(fd, name, sizeof name - 1);
		close(fd);
		name[n > 0 ? n : 0] = 0;
		name[strcspn(name, "\n")] = 0;
		if (!strcmp(name, PORT_NAME)) {
			snprintf(dev, size, "/dev/%s", e->d_name);
			found = 0;
		}
	}
	closedir(d);
	return found;
}

static int open_port(void)
{
	char dev[300];
	for (int i = 0; i < 2000; i++) { /* it appears once virtio_console has probed */
		if (find_port(dev, sizeof dev) == 0) {
			int fd = open(dev, O_RDWR | O_CLOEXEC);
			if (fd >= 0)
				return fd;
		}
		usleep(5000);
	}
	return -1;
}

static void serve(void)
{
	frame = malloc(MAX_FRAME);
	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGCHLD);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);

	char *release = read_small_file("/proc/sys/kernel/osrelease");
	if (release)
		release[strcspn(release, "\n")] = 0;
	send_frame(T_READY, 0, release ? release : "", release ? strlen(release) : 0);

	for (;;) {
		struct pollfd p[5];
		int n = 0;
		int want_port = !(job.pending);
		p[n++] = (struct pollfd){.fd = want_port ? port : -1, .events = POLLIN};
		p[n++] = (struct pollfd){.fd = sfd, .events = POLLIN};
		p[n++] = (struct pollfd){.fd = job.out, .events = POLLIN};
		p[n++] = (struct pollfd){.fd = job.err, .events = POLLIN};
		p[n++] = (struct pollfd){.fd = job.pending ? job.in : -1, .events = POLLOUT};
		if (poll(p, n, -1) < 0) {
			if (errno == EINTR)
				continue;
			say("poll: %s", strerror(errno));
			power_off();
		}
		if (p[2].revents)
			pump(&job.out, T_STDOUT, 0);
		if (p[3].revents)
			pump(&job.err, T_STDERR, 0);
		if (p[4].revents)
			feed_stdin();
		if (p[1].revents) {
			struct signalfd_siginfo si;
			while (read(sfd, &si, sizeof si) > 0)
				;
			reap();
		}
		if (p[0].revents & (POLLIN | POLLHUP | POLLERR)) {
			uint32_t type, id, len;
			if (recv_frame(&type, &id, &len)) {
				say("host went away; powering off");
				power_off();
			}
			switch (type) {
			case T_EXEC:
				start_job(id, frame, len);
				break;
			case T_STDIN:
				on_stdin(id, frame, len);
				break;
			case T_SIGNAL:
				if (len == 4 && id == job.id && job.pid > 0) {
					int32_t sig;
					memcpy(&sig, frame, 4);
					kill(-job.pid, sig);
				}
				break;
			case T_SHUTDOWN:
				if (job.pid > 0)
					kill(-job.pid, SIGKILL);
				power_off();
				break;
			default:
				say("unknown frame type %u", type);
			}
		}
		finish_job_if_done();
	}
}

int main(void)
{
	if (getpid() != 1) {
		fprintf(stderr, "bootlab-agent: runs as PID 1 of a bootlab guest\n");
		return 2;
	}
	mount_basics();
	setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 1);
	load_modules();
	const char *root = cmdline_value("bootlab.root");
	int interactive = cmdline_has("bootlab.shell");
	if (!interactive) {
		/* Opened before any root switch: the descriptor outlives the move of /dev. */
		port = open_port();
		if (port < 0) {
			say("no virtio-serial port named %s after 10 s: is virtio_console available?", PORT_NAME);
			power_off();
		}
	}
	configure_net(cmdline_value("bootlab.net"));
	char *ssh_keys = read_small_file("/etc/bootlab/authorized_keys");
	const char *hostroot = cmdline_value("bootlab.hostroot");
	if (root && switch_root(root))
		power_off();
	if (!root && hostroot && host_root(hostroot))
		power_off();
	const char *shares = cmdline_value("bootlab.shares");
	if (shares)
		mount_shares(shares);
	write_resolv_conf(root != NULL);
	authorize_keys(ssh_keys);
	if (root && interactive) {
		/* No command: the disk's own init takes over as PID 1, on the console. */
		execl("/sbin/init", "/sbin/init", (char *)NULL);
		say("cannot run /sbin/init on %s: %s; starting a shell instead", root, strerror(errno));
	}
	if (interactive)
		interactive_shell();
	serve();
	return 0;
}
