/* Error messages of core/: formatting into the caller's buffer. */
#include "errbuf.h"

#include <stdarg.h>
#include <stdio.h>

void sg_set_err(char *err, size_t errlen, const char *fmt, ...) {
  if (!err || !errlen) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}
