/* Base64 text of bytes (RFC 4648, standard alphabet, padded), for JSON answers.
 *
 * Basic usage:
 *   char *text = sg_base64_encode(png, png_len);   // NULL when out of memory
 *   ... json_string(text) ...
 *   free(text);
 */
#ifndef SG_BASE64_H
#define SG_BASE64_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Returns a new NUL-terminated base64 text of the n bytes at p (the caller frees it), or NULL when out of memory. */
char *sg_base64_encode(const uint8_t *p, size_t n);

#ifdef __cplusplus
}
#endif

#endif
