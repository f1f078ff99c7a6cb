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

/* The default thread count: the number of online processors. */
int cli_default_threads(void);

/* A progress line on stderr (only when stderr is a terminal): "label  12/50 [=====     ]  3.1 s left". */
typedef struct {
  const char *label;
  int enabled;
  double start;
  int64_t done, total;
} cli_progress;

void cli_progress_init(cli_progress *p, const char *label, int64_t total, int quiet);
void cli_progress_update(cli_progress *p, int64_t done);
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
