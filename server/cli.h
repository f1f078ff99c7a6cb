/* Helpers shared by the command line's subcommands: option matching, value parsing that names the bad option, progress. */
#ifndef SG_CLI_H
#define SG_CLI_H

#include <stdint.h>
#include <stdio.h>

/* Exit codes of every subcommand. */
enum { CLI_OK = 0, CLI_FAIL = 1 /* the work failed */, CLI_USAGE = 2 /* a bad argument */ };

/* An argument cursor: argv[i] is the next argument to look at. */
typedef struct {
  const char *cmd; /* subcommand name, for messages */
  int argc;
  char **argv;
  int i;
  int failed;      /* set once an error has been reported */
} cli_args;

/* Prints "sketchguide CMD: message" on stderr. */
void cli_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* When argv[i] is option name ("--name VALUE" or "--name=VALUE"), consumes it, sets *val and returns 1; a missing
 * value is reported (a->failed set) and also returns 1. Returns 0 when argv[i] is not that option. */
int cli_value(cli_args *a, const char *name, const char **val);
/* When argv[i] is the flag name, consumes it and returns 1; else 0. */
int cli_flag(cli_args *a, const char *name);

/* Parse value s of option opt into *out, within [lo, hi]; on error report it naming opt and return -1. */
int cli_parse_int(const char *cmd, const char *opt, const char *s, int64_t lo, int64_t hi, int64_t *out);
int cli_parse_double(const char *cmd, const char *opt, const char *s, double lo, double hi, double *out);

/* Reports an unknown option or unexpected argument at argv[i] and sets a->failed. */
void cli_unknown(cli_args *a);

/* The model directory used when --model is absent: $SKETCHGUIDE_MODEL, else the bundled model. */
const char *cli_default_model(void);

/* Checks before any work that dir is a model directory (a directory holding model.json); else reports one line
 * naming opt ("--model") and returns -1. Returns 0 when it is. */
int cli_check_model_dir(const char *cmd, const char *opt, const char *dir);

/* Checks before any work that path's folder exists and is writable and that path is not a folder; else reports
 * one line naming opt and returns -1. Returns 0 when a file can be created there. */
int cli_check_output(const char *cmd, const char *opt, const char *path);

/* The CPUs this process may use: the cores (not hyperthread siblings) of its affinity mask (sched_getaffinity),
 * bounded by its cgroup's CPU quota (cgroup v2 cpu.max, v1 cpu.cfs_quota_us). Always at least 1. */
int cli_cpus_available(void);

/* The thread count of a long-running service (serve): cli_cpus_available(), since the service itself becomes the
 * machine's load. */
int cli_default_threads(void);

/* The default thread count of one-shot work (generate, train-lgp): the available CPUs that other processes are
 * not keeping busy, at least 1. Busy CPUs are the smaller of the 1-minute load average and the processes running
 * now (ours excluded): a sustained load counts, a burst that just ended or a momentary one does not. More torch
 * threads than free CPUs make every parallel region wait for its descheduled threads (4x slower was measured). */
int cli_free_cpus(void);

/* Progress of counted work on stderr. On a terminal, a bar redrawn in place:
 * "label  12/50 [=====     ]  3 s left". Elsewhere (a pipe, a file, a log), one line per `every` units and at
 * the end: "label 10/50 (2.1 s, 8 s left)"; every 0 picks a tenth of the total. Off with quiet or lines < 0 (see
 * cli_progress_init). */
typedef struct {
  const char *label;
  int enabled;     /* a bar on a terminal */
  int lines;       /* lines (stderr is not a terminal) */
  double start;
  int64_t done, total, every, last_line;
} cli_progress;

/* Starts progress of total units. every: lines mode's period in units (0: a tenth of the total; -1: no lines,
 * for a caller that prints its own). */
void cli_progress_init(cli_progress *p, const char *label, int64_t total, int quiet, int64_t every);
/* Records done units (of p->total, which a caller may change) and draws the bar or prints a line when one is due. */
void cli_progress_update(cli_progress *p, int64_t done);
/* Ends the bar's line (a terminal); prints nothing in lines mode. */
void cli_progress_end(cli_progress *p);

/* Seconds from a monotonic clock. */
double cli_now(void);

/* Subcommands: each takes its own argc/argv (argv[0] is the subcommand's name) and returns a CLI_* code. */
int cmd_serve(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_edges(int argc, char **argv);
int cmd_train_lgp(int argc, char **argv);

#endif
