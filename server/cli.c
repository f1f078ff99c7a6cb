/* Helpers shared by the command line's subcommands: option matching, value parsing that names the bad option, progress. */
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
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

int cli_default_threads(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 && n < 1024 ? (int)n : 1;
}

double cli_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void cli_progress_init(cli_progress *p, const char *label, int64_t total, int quiet) {
  p->label = label;
  p->enabled = !quiet && isatty(STDERR_FILENO);
  p->start = cli_now();
  p->done = 0;
  p->total = total;
}

void cli_progress_update(cli_progress *p, int64_t done) {
  p->done = done;
  if (!p->enabled || p->total <= 0) return;
  enum { WIDTH = 30 };
  char bar[WIDTH + 1];
  int fill = (int)(WIDTH * done / p->total);
  for (int k = 0; k < WIDTH; k++) bar[k] = k < fill ? '=' : ' ';
  bar[WIDTH] = 0;
  double el = cli_now() - p->start;
  if (done > 0 && done < p->total) {
    double left = el / (double)done * (double)(p->total - done);
    fprintf(stderr, "\r%s %lld/%lld [%s] %.0f s left  ", p->label, (long long)done, (long long)p->total, bar, left);
  } else {
    fprintf(stderr, "\r%s %lld/%lld [%s] %.1f s      ", p->label, (long long)done, (long long)p->total, bar, el);
  }
  fflush(stderr);
}

void cli_progress_end(cli_progress *p) {
  if (p->enabled) fputc('\n', stderr);
}
