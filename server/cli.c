/* Helpers shared by the command line's subcommands: option matching, value parsing that names the bad option, progress. */
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <sched.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef SG_BUNDLED_MODEL
#define SG_BUNDLED_MODEL "models/shapes"
#endif

void cli_error(const char *cmd, const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, "sketchguide %s: ", cmd);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
}

int cli_value(cli_args *a, const char *name, const char **val) {
  const char *arg = a->argv[a->i];
  size_t n = strlen(name);
  if (strncmp(arg, name, n) != 0) return 0;
  if (arg[n] == '=') {
    *val = arg + n + 1;
    a->i++;
    return 1;
  }
  if (arg[n] != 0) return 0;
  if (a->i + 1 >= a->argc) {
    cli_error(a->cmd, "%s needs a value", name);
    a->failed = 1;
    a->i++;
    *val = NULL;
    return 1;
  }
  *val = a->argv[a->i + 1];
  a->i += 2;
  return 1;
}

int cli_flag(cli_args *a, const char *name) {
  if (strcmp(a->argv[a->i], name) != 0) return 0;
  a->i++;
  return 1;
}

void cli_unknown(cli_args *a) {
  const char *arg = a->argv[a->i];
  if (arg[0] == '-' && arg[1] != 0)
    cli_error(a->cmd, "unknown option '%s' (see sketchguide %s --help)", arg, a->cmd);
  else
    cli_error(a->cmd, "unexpected argument '%s' (see sketchguide %s --help)", arg, a->cmd);
  a->failed = 1;
  a->i++;
}

int cli_parse_int(const char *cmd, const char *opt, const char *s, int64_t lo, int64_t hi, int64_t *out) {
  if (!s) return -1;
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (end == s || *end != 0 || errno) {
    cli_error(cmd, "%s: '%s' is not an integer", opt, s);
    return -1;
  }
  if (v < lo || v > hi) {
    cli_error(cmd, "%s: %lld is out of range (%lld to %lld)", opt, v, (long long)lo, (long long)hi);
    return -1;
  }
  *out = v;
  return 0;
}

int cli_parse_double(const char *cmd, const char *opt, const char *s, double lo, double hi, double *out) {
  if (!s) return -1;
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (end == s || *end != 0 || errno || !isfinite(v)) {
    cli_error(cmd, "%s: '%s' is not a number", opt, s);
    return -1;
  }
  if (v < lo || v > hi) {
    cli_error(cmd, "%s: %g is out of range (%g to %g)", opt, v, lo, hi);
    return -1;
  }
  *out = v;
  return 0;
}

const char *cli_default_model(void) {
  const char *env = getenv("SKETCHGUIDE_MODEL");
  return env && *env ? env : SG_BUNDLED_MODEL;
}

int cli_check_model_dir(const char *cmd, const char *opt, const char *dir) {
  struct stat st;
  char path[4200];
  if (stat(dir, &st) != 0) {
    cli_error(cmd, "%s %s: no model directory there (%s)", opt, dir, strerror(errno));
    return -1;
  }
  if (!S_ISDIR(st.st_mode)) {
    cli_error(cmd, "%s %s: not a directory (a model directory holds model.json and the modules)", opt, dir);
    return -1;
  }
  snprintf(path, sizeof path, "%s/model.json", dir);
  if (stat(path, &st) != 0) {
    cli_error(cmd, "%s %s: no model.json there (not a model directory)", opt, dir);
    return -1;
  }
  return 0;
}

int cli_check_output(const char *cmd, const char *opt, const char *path) {
  struct stat st;
  char dir[4200];
  if (!*path) {
    cli_error(cmd, "%s: empty path", opt);
    return -1;
  }
  if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
    cli_error(cmd, "%s %s: is a folder (give a file name)", opt, path);
    return -1;
  }
  const char *slash = strrchr(path, '/');
  if (!slash) snprintf(dir, sizeof dir, ".");
  else if (slash == path) snprintf(dir, sizeof dir, "/");
  else snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
  if (stat(dir, &st) != 0) {
    cli_error(cmd, "%s %s: the folder %s does not exist (%s)", opt, path, dir, strerror(errno));
    return -1;
  }
  if (!S_ISDIR(st.st_mode)) {
    cli_error(cmd, "%s %s: %s is not a folder", opt, path, dir);
    return -1;
  }
  if (access(dir, W_OK | X_OK) != 0) {
    cli_error(cmd, "%s %s: the folder %s is not writable (%s)", opt, path, dir, strerror(errno));
    return -1;
  }
  return 0;
}

/* Reads the first line of a small file into buf; returns 0, or -1 when it cannot be read. */
static int read_line(const char *path, char *buf, size_t cap) {
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  int ok = fgets(buf, (int)cap, f) != NULL;
  fclose(f);
  return ok ? 0 : -1;
}

/* The cgroup's CPU quota in CPUs, rounded up, or 0 for none: v2 "QUOTA PERIOD" in cpu.max (of the process's own
 * cgroup, else the root of the namespace), v1 cpu.cfs_quota_us / cpu.cfs_period_us. */
static int cgroup_cpu_quota(void) {
  char line[512], path[1024];
  long long q = -1, per = 0;
  if (read_line("/proc/self/cgroup", line, sizeof line) == 0 && !strncmp(line, "0::", 3)) {
    line[strcspn(line, "\n")] = 0;
    snprintf(path, sizeof path, "/sys/fs/cgroup%s/cpu.max", line + 3);
    char v[128];
    if (read_line(path, v, sizeof v) == 0 || read_line("/sys/fs/cgroup/cpu.max", v, sizeof v) == 0) {
      if (sscanf(v, "%lld %lld", &q, &per) != 2) q = -1; /* "max 100000": no quota */
    }
  } else {
    char v[64];
    if (read_line("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", v, sizeof v) == 0) q = strtoll(v, NULL, 10);
    if (read_line("/sys/fs/cgroup/cpu/cpu.cfs_period_us", v, sizeof v) == 0) per = strtoll(v, NULL, 10);
  }
  if (q <= 0 || per <= 0) return 0;
  long long n = (q + per - 1) / per;
  return n > 0 && n < 4096 ? (int)n : 0;
}

int cli_cpus_available(void) {
  cpu_set_t set;
  int n = 0;
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    /* count cores, not hyperthread siblings: a sibling shares the core's vector units, which matrix work fills */
    enum { MAXC = CPU_SETSIZE };
    long long seen[MAXC];
    int n_seen = 0, cpus = 0, topo = 1;
    for (int c = 0; c < MAXC; c++) {
      if (!CPU_ISSET(c, &set)) continue;
      cpus++;
      char path[128], v[32];
      long long pkg = 0, core = -1;
      snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%d/topology/core_id", c);
      if (read_line(path, v, sizeof v) == 0) core = strtoll(v, NULL, 10);
      snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%d/topology/physical_package_id", c);
      if (read_line(path, v, sizeof v) == 0) pkg = strtoll(v, NULL, 10);
      if (core < 0) {
        topo = 0;
        continue;
      }
      long long key = pkg * 1000000 + core;
      int k = 0;
      while (k < n_seen && seen[k] != key) k++;
      if (k == n_seen) seen[n_seen++] = key;
    }
    n = topo && n_seen > 0 ? n_seen : cpus;
  }
  if (n <= 0) {
    long on = sysconf(_SC_NPROCESSORS_ONLN);
    n = on > 0 && on < 4096 ? (int)on : 1;
  }
  int quota = cgroup_cpu_quota();
  if (quota > 0 && quota < n) n = quota;
  return n > 0 ? n : 1;
}

int cli_default_threads(void) { return cli_cpus_available(); }

int cli_free_cpus(void) {
  int n = cli_cpus_available();
  char line[256];
  double load1 = 0;
  long running = 0, total = 0;
  if (read_line("/proc/loadavg", line, sizeof line) == 0 &&
      sscanf(line, "%lf %*f %*f %ld/%ld", &load1, &running, &total) == 3) {
    double now_busy = (double)(running - 1); /* the runnable count includes this process's own thread */
    double busy = load1 < now_busy ? load1 : now_busy;
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    if (online < n) online = n;
    /* the load is counted over the whole machine; what is left of it, no more than this process may use */
    int free_cpus = (int)((double)online - busy + 0.5);
    if (free_cpus < n) n = free_cpus;
  }
  return n > 0 ? n : 1;
}

double cli_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void cli_progress_init(cli_progress *p, const char *label, int64_t total, int quiet, int64_t every) {
  int tty = isatty(STDERR_FILENO);
  p->label = label;
  p->enabled = !quiet && tty;
  p->lines = !quiet && !tty && every >= 0;
  p->start = cli_now();
  p->done = 0;
  p->total = total;
  p->every = every;
  p->last_line = 0;
}

void cli_progress_update(cli_progress *p, int64_t done) {
  p->done = done;
  if (p->total <= 0) return;
  double el = cli_now() - p->start;
  double left = done > 0 && done < p->total ? el / (double)done * (double)(p->total - done) : 0;
  if (p->lines) {
    int64_t every = p->every > 0 ? p->every : (p->total + 9) / 10;
    if (done < p->total && done - p->last_line < every) return;
    if (done <= p->last_line && p->last_line > 0) return;
    p->last_line = done;
    if (done < p->total)
      fprintf(stderr, "%s %lld/%lld (%.1f s, %.0f s left)\n", p->label, (long long)done, (long long)p->total, el,
              left);
    else
      fprintf(stderr, "%s %lld/%lld (%.1f s)\n", p->label, (long long)done, (long long)p->total, el);
    fflush(stderr);
    return;
  }
  if (!p->enabled) return;
  enum { WIDTH = 30 };
  char bar[WIDTH + 1];
  int fill = (int)(WIDTH * done / p->total);
  for (int k = 0; k < WIDTH; k++) bar[k] = k < fill ? '=' : ' ';
  bar[WIDTH] = 0;
  if (done > 0 && done < p->total)
    fprintf(stderr, "\r%s %lld/%lld [%s] %.0f s left  ", p->label, (long long)done, (long long)p->total, bar, left);
  else
    fprintf(stderr, "\r%s %lld/%lld [%s] %.1f s      ", p->label, (long long)done, (long long)p->total, bar, el);
  fflush(stderr);
}

void cli_progress_end(cli_progress *p) {
  if (p->enabled) fputc('\n', stderr);
}
