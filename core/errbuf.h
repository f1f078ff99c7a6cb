/* Error messages of core/: a printf-style write into the caller's buffer (err, errlen), as every core API takes. */
#ifndef SG_ERRBUF_H
#define SG_ERRBUF_H

#include <stddef.h>

/* Formats into err (errlen bytes, always NUL-terminated); does nothing when err is NULL or errlen 0. */
void sg_set_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
