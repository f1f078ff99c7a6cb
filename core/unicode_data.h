/* Generated Unicode and HTML tables for the CLIP tokenizer (core/unicode_data.c, made by tools/gen_unicode.py). */
#ifndef SG_UNICODE_DATA_H
#define SG_UNICODE_DATA_H

#include <stddef.h>
#include <stdint.h>

/* Code point classes: 1 letter (L*), 2 number (N*), 3 white space (Python's str.isspace); 0 otherwise. */
typedef struct {
  uint32_t first, last;
  uint8_t cls;
} sg_uc_range;

/* Full lower-case mapping of one code point (up to 3 code points, 0-padded), as Python's str.lower(). */
typedef struct {
  uint32_t cp;
  uint32_t lower[3];
} sg_uc_lower;

/* An HTML5 named character reference: name (with its ';' when the standard has one) and UTF-8 value. */
typedef struct {
  const char *name;
  const char *value;
} sg_html_entity;

/* A numeric character reference that HTML maps to another code point. */
typedef struct {
  uint32_t num, cp;
} sg_html_charref;

extern const sg_uc_range sg_uc_ranges[];
extern const size_t sg_uc_nranges;
extern const sg_uc_lower sg_uc_lowers[];
extern const size_t sg_uc_nlowers;
/* What str.lower()'s Final_Sigma test (U+03A3 -> U+03C2) sees in a code point: cls 2 case-ignorable (skipped),
 * 1 cased and not case-ignorable; code points in no range are neither. */
extern const sg_uc_range sg_uc_sigma_ranges[];
extern const size_t sg_uc_nsigma_ranges;
extern const sg_html_entity sg_html_entities[]; /* sorted by name (strcmp order) */
extern const size_t sg_html_nentities;
extern const sg_html_charref sg_html_invalid_charrefs[];
extern const size_t sg_html_ninvalid_charrefs;
extern const uint32_t sg_html_invalid_codepoints[];
extern const size_t sg_html_ninvalid_codepoints;

#endif
