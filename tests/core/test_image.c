/* Tests of core/image.c: PNG round trips with text chunks, decoding against PIL's pixels, sketch maps against
 * tools/sample.py load_sketch (fixtures from tools/gen_image_fixtures.py), and malformed input of every kind. */
#include <jansson.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <turbojpeg.h>
#include <unistd.h>
#include <zlib.h>

#include "image.h"

#include "check.h"

static const char *data_dir;

static uint32_t rng_state = 12345;

/* xorshift32: a fixed sequence for the random inputs. */
static uint32_t rnd(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 17;
  rng_state ^= rng_state << 5;
  return rng_state;
}

static uint8_t *read_file(const char *name, size_t *len) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", data_dir, name);
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  uint8_t *buf = malloc(n > 0 ? (size_t)n : 1);
  *len = fread(buf, 1, (size_t)n, f);
  fclose(f);
  return buf;
}

static int load(const char *name, sg_image *im) {
  char path[1024], err[256] = "";
  snprintf(path, sizeof path, "%s/%s", data_dir, name);
  int rc = sg_image_load(path, sg_image_default_params(), im, err, sizeof err);
  CHECK(rc == 0, "load %s: %s", name, err);
  return rc;
}

static void test_sniff_and_names(void) {
  static const uint8_t png[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'}, jpg[3] = {0xff, 0xd8, 0xff};
  CHECK(sg_image_sniff(png, 8) == SG_IMAGE_PNG && sg_image_sniff(png, 7) == SG_IMAGE_UNKNOWN, "png magic");
  CHECK(sg_image_sniff(jpg, 3) == SG_IMAGE_JPEG && sg_image_sniff(jpg, 2) == SG_IMAGE_UNKNOWN, "jpeg magic");
  CHECK(sg_image_sniff((const uint8_t *)"GIF89a", 6) == SG_IMAGE_UNKNOWN && sg_image_sniff(NULL, 9) == 0, "other");
  CHECK(!strcmp(sg_image_format_name(SG_IMAGE_PNG), "png") && !strcmp(sg_image_format_name(SG_IMAGE_JPEG), "jpeg") &&
            !strcmp(sg_image_format_name(SG_IMAGE_UNKNOWN), "unknown") && !strcmp(sg_image_format_name(7), "unknown"),
        "format names");
  CHECK(sg_invert_parse("auto") == SG_INVERT_AUTO && sg_invert_parse("TRUE") == SG_INVERT_TRUE &&
            sg_invert_parse("1") == SG_INVERT_TRUE && sg_invert_parse("Yes") == SG_INVERT_TRUE &&
            sg_invert_parse("false") == SG_INVERT_FALSE && sg_invert_parse("0") == SG_INVERT_FALSE &&
            sg_invert_parse("no") == SG_INVERT_FALSE,
        "invert names");
  CHECK(sg_invert_parse("maybe") == -1 && sg_invert_parse("") == -1 && sg_invert_parse("truex") == -1 &&
            sg_invert_parse("tru") == -1 && sg_invert_parse(NULL) == -1,
        "bad invert names");
  CHECK(sg_image_default_params().max_pixels == 16777216, "default limit");
  sg_image_free(NULL);
}

/* Reads the text chunks of a PNG with libpng itself: key k must hold value v, as iTXt when itxt. */
typedef struct {
  const uint8_t *data;
  size_t len, pos;
} mem_src;

static void mem_read(png_structp png, png_bytep out, size_t n) {
  mem_src *m = png_get_io_ptr(png);
  if (n > m->len - m->pos) png_error(png, "short");
  memcpy(out, m->data + m->pos, n);
  m->pos += n;
}

static int png_text_of(const uint8_t *data, size_t len, const char *key, const char *value, int itxt) {
  mem_src m = {data, len, 0};
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
  png_infop info = png_create_info_struct(png);
  int found = 0;
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, NULL);
    return 0;
  }
  png_set_read_fn(png, &m, mem_read);
  png_read_info(png, info); /* the chunks come before IDAT */
  png_textp t;
  int n = 0;
  png_get_text(png, info, &t, &n);
  for (int i = 0; i < n; i++)
    if (!strcmp(t[i].key, key))
      found = !strcmp(t[i].text, value) &&
              (itxt ? t[i].compression == PNG_ITXT_COMPRESSION_NONE : t[i].compression == PNG_TEXT_COMPRESSION_NONE);
  png_destroy_read_struct(&png, &info, NULL);
  return found;
}

static void test_png_roundtrip(void) {
  char err[256] = "";
  const sg_png_text text[] = {{"prompt", "a red star on a plain blue background"},
                              {"Comment", "two\nlines"},
                              {"caption", "caf\xc3\xa9 \xe2\x98\x95 \xe6\x98\x9f"},
                              {"seed", "42"}};
  for (int ch = 1; ch <= 4; ch++) {
    int w = 13 + ch, h = 7;
    uint8_t *px = malloc((size_t)w * h * ch);
    for (int i = 0; i < w * h * ch; i++) px[i] = (uint8_t)rnd();
    uint8_t *png = NULL;
    size_t len = 0;
    int rc = sg_png_encode(px, w, h, ch, text, 4, &png, &len, err, sizeof err);
    CHECK(rc == 0 && png && len > 8, "encode %d channels: %s", ch, err);
    sg_image im;
    rc = sg_image_decode(png, len, sg_image_default_params(), &im, err, sizeof err);
    CHECK(rc == 0 && im.width == w && im.height == h && im.channels == ch &&
              !memcmp(im.pixels, px, (size_t)w * h * ch),
          "round trip %d channels: %s", ch, err);
    sg_image_free(&im);
    CHECK(im.pixels == NULL && im.width == 0, "free zeroes");
    CHECK(png_text_of(png, len, "prompt", text[0].value, 0) && png_text_of(png, len, "Comment", text[1].value, 0) &&
              png_text_of(png, len, "caption", text[2].value, 1) && png_text_of(png, len, "seed", "42", 0),
          "text chunks read back (%d channels)", ch);
    free(png);

    char tmpl[] = "/tmp/sgimgXXXXXX";
    int fd = mkstemp(tmpl);
    close(fd);
    rc = sg_png_save(tmpl, px, w, h, ch, text, 4, err, sizeof err);
    CHECK(rc == 0, "save: %s", err);
    rc = sg_image_load(tmpl, sg_image_default_params(), &im, err, sizeof err);
    CHECK(rc == 0 && im.channels == ch && !memcmp(im.pixels, px, (size_t)w * h * ch), "save and load: %s", err);
    sg_image_free(&im);
    remove(tmpl);
    free(px);
  }
  /* no text at all, and a 1 x 1 image */
  uint8_t one = 77, *png;
  size_t len;
  sg_image im;
  CHECK(sg_png_encode(&one, 1, 1, 1, NULL, 0, &png, &len, err, sizeof err) == 0, "1 x 1: %s", err);
  CHECK(sg_image_decode(png, len, sg_image_default_params(), &im, err, sizeof err) == 0 && im.pixels[0] == 77,
        "1 x 1 back");
  sg_image_free(&im);
  free(png);
  /* keys PNG does not allow, and bad arguments */
  static const char long_key[] = "k123456789k123456789k123456789k123456789k123456789k123456789k123456789k123456789";
  const char *bad_keys[] = {"", " lead", "trail ", "two  spaces", "caf\xc3\xa9", "tab\there", long_key};
  for (size_t i = 0; i < sizeof bad_keys / sizeof bad_keys[0]; i++) {
    sg_png_text t = {bad_keys[i], "v"};
    png = (uint8_t *)&one;
    CHECK(sg_png_encode(&one, 1, 1, 1, &t, 1, &png, &len, err, sizeof err) == SG_IMAGE_EINVAL && png == NULL,
          "bad key %zu accepted", i);
  }
  sg_png_text null_value = {"k", NULL};
  CHECK(sg_png_encode(&one, 1, 1, 1, &null_value, 1, &png, &len, err, sizeof err) == SG_IMAGE_EINVAL, "NULL value");
  CHECK(sg_png_encode(&one, 1, 1, 5, NULL, 0, &png, &len, err, sizeof err) == SG_IMAGE_EINVAL, "5 channels");
  CHECK(sg_png_encode(&one, 0, 1, 1, NULL, 0, &png, &len, err, sizeof err) == SG_IMAGE_EINVAL, "width 0");
  CHECK(sg_png_encode(NULL, 1, 1, 1, NULL, 0, &png, &len, err, sizeof err) == SG_IMAGE_EINVAL, "NULL pixels");
  CHECK(sg_png_encode(&one, 1, 1, 1, NULL, 2, &png, &len, err, sizeof err) == SG_IMAGE_EINVAL, "NULL text");
  CHECK(sg_png_save("/nonexistent/dir/out.png", &one, 1, 1, 1, NULL, 0, err, sizeof err) == SG_IMAGE_EIO &&
            strstr(err, "/nonexistent/dir/out.png"),
        "save to a missing folder: %s", err);
}

static void check_prefixes(const char *what, const uint8_t *data, size_t len, size_t magic);

/* An Adam7-interlaced 16-bit RGB PNG written by libpng here, since sg_png_encode writes neither. */
static uint8_t *interlaced_png(int w, int h, uint8_t *hi, size_t *len) {
  char tmpl[] = "/tmp/sgimgXXXXXX";
  int fd = mkstemp(tmpl);
  FILE *f = fdopen(fd, "wb");
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
  png_infop info = png_create_info_struct(png);
  uint8_t *rows = malloc((size_t)w * h * 6);
  png_bytep *rp = malloc(sizeof *rp * h);
  for (int i = 0; i < w * h * 3; i++) {
    uint16_t v = (uint16_t)rnd();
    rows[2 * i] = (uint8_t)(v >> 8); /* big-endian samples */
    rows[2 * i + 1] = (uint8_t)v;
    hi[i] = (uint8_t)(v >> 8);
  }
  for (int y = 0; y < h; y++) rp[y] = rows + (size_t)y * w * 6;
  if (setjmp(png_jmpbuf(png))) abort();
  png_init_io(png, f);
  png_set_IHDR(png, info, w, h, 16, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_ADAM7, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  png_write_image(png, rp);
  png_write_end(png, NULL);
  png_destroy_write_struct(&png, &info);
  fclose(f);
  free(rows);
  free(rp);
  FILE *g = fopen(tmpl, "rb");
  uint8_t *buf = malloc(1 << 16);
  *len = fread(buf, 1, 1 << 16, g);
  fclose(g);
  remove(tmpl);
  return buf;
}

static void test_interlaced(void) {
  enum { W = 11, H = 9 };
  uint8_t hi[W * H * 3];
  size_t len;
  uint8_t *png = interlaced_png(W, H, hi, &len);
  sg_image im;
  char err[256] = "";
  CHECK(sg_image_decode(png, len, sg_image_default_params(), &im, err, sizeof err) == 0 && im.width == W &&
            im.height == H && im.channels == 3 && !memcmp(im.pixels, hi, sizeof hi),
        "interlaced 16-bit RGB: %s", err);
  sg_image_free(&im);
  check_prefixes("interlaced PNG", png, len, 8);
  free(png);
}

static size_t unhex(const char *hex, uint8_t *out, size_t cap) {
  size_t n = strlen(hex) / 2;
  for (size_t i = 0; i < n && i < cap; i++) {
    unsigned v;
    sscanf(hex + 2 * i, "%2x", &v);
    out[i] = (uint8_t)v;
  }
  return n;
}

/* Decoded pixels against PIL's ("decode" in images.json). */
static void test_decode_fixtures(const json_t *cases) {
  size_t i;
  const json_t *c;
  json_array_foreach(cases, i, c) {
    const char *file = json_string_value(json_object_get(c, "file"));
    int w = (int)json_integer_value(json_object_get(c, "width")), h = (int)json_integer_value(json_object_get(c, "height"));
    int ch = (int)json_integer_value(json_object_get(c, "channels"));
    sg_image im;
    if (load(file, &im)) continue;
    size_t n = (size_t)w * h * ch;
    uint8_t *want = malloc(n);
    size_t got = unhex(json_string_value(json_object_get(c, "pixels")), want, n);
    CHECK(got == n && im.width == w && im.height == h && im.channels == ch, "%s: %d x %d x %d, want %d x %d x %d",
          file, im.width, im.height, im.channels, w, h, ch);
    if (got == n && im.width == w && im.height == h && im.channels == ch) {
      size_t diff = 0;
      for (size_t k = 0; k < n; k++) diff += im.pixels[k] != want[k];
      CHECK(diff == 0, "%s: %zu of %zu values differ from PIL", file, diff, n);
    }
    free(want);
    sg_image_free(&im);
  }
  printf("%zu decode fixtures checked\n", json_array_size(cases));
}

static void test_conversions(void) {
  char err[256] = "";
  sg_image rgba, want, rgb;
  if (load("composite.png", &rgba) || load("composite_on_white.png", &want)) return;
  CHECK(rgba.channels == 4 && want.channels == 3, "composite fixtures");
  CHECK(sg_image_to_rgb(&rgba, &rgb, err, sizeof err) == 0 && rgb.channels == 3 &&
            !memcmp(rgb.pixels, want.pixels, (size_t)256 * 256 * 3),
        "alpha composite differs from PIL's: %s", err);
  sg_image_free(&rgb);
  sg_image_free(&rgba);
  sg_image_free(&want);

  uint8_t ga[4] = {10, 255, 200, 0};
  sg_image g2 = {2, 1, 2, ga};
  CHECK(sg_image_to_rgb(&g2, &rgb, err, sizeof err) == 0 && rgb.pixels[0] == 10 && rgb.pixels[2] == 10 &&
            rgb.pixels[3] == 255 && rgb.pixels[5] == 255,
        "gray + alpha to RGB");
  sg_image_free(&rgb);
  sg_image g1 = {2, 1, 1, ga};
  CHECK(sg_image_to_rgb(&g1, &rgb, err, sizeof err) == 0 && rgb.pixels[1] == 10 && rgb.pixels[4] == 255, "gray");
  sg_image_free(&rgb);
  sg_image bad = {2, 1, 5, ga};
  CHECK(sg_image_to_rgb(&bad, &rgb, err, sizeof err) == SG_IMAGE_EINVAL && rgb.pixels == NULL, "5 channels");
  CHECK(sg_image_to_rgb(NULL, &rgb, err, sizeof err) == SG_IMAGE_EINVAL, "NULL image");

  /* bilinear, align_corners false: 2 -> 4 gives 0, 63.75, 191.25, 255; 4 -> 2 averages pairs */
  uint8_t row[2] = {0, 255};
  sg_image two = {2, 1, 1, row}, up, down;
  CHECK(sg_image_resize(&two, 4, 1, &up, err, sizeof err) == 0 && up.width == 4 && up.height == 1, "up: %s", err);
  CHECK(up.pixels && up.pixels[0] == 0 && up.pixels[1] == 64 && up.pixels[2] == 191 && up.pixels[3] == 255,
        "up values %d %d %d %d", up.pixels[0], up.pixels[1], up.pixels[2], up.pixels[3]);
  CHECK(sg_image_resize(&up, 2, 3, &down, err, sizeof err) == 0 && down.width == 2 && down.height == 3, "down");
  CHECK(down.pixels[0] == 32 && down.pixels[1] == 223 && down.pixels[4] == 32, "down values %d %d", down.pixels[0],
        down.pixels[1]);
  sg_image_free(&down);
  sg_image_free(&up);
  uint8_t px[2 * 2 * 3] = {0, 0, 0, 255, 255, 255, 255, 255, 255, 0, 0, 0};
  sg_image rgb2 = {2, 2, 3, px}, same;
  CHECK(sg_image_resize(&rgb2, 2, 2, &same, err, sizeof err) == 0 && same.channels == 3 &&
            !memcmp(same.pixels, px, sizeof px),
        "same size copies");
  sg_image_free(&same);
  CHECK(sg_image_resize(&rgb2, 0, 2, &same, err, sizeof err) == SG_IMAGE_EINVAL && same.pixels == NULL, "width 0");
}

/* Maps against load_sketch's ("sketch" in images.json): every value must match. */
static void test_sketch_fixtures(const json_t *cases) {
  size_t i;
  const json_t *c;
  char err[256] = "";
  json_array_foreach(cases, i, c) {
    const char *file = json_string_value(json_object_get(c, "file"));
    const char *want = json_string_value(json_object_get(c, "map"));
    int size = (int)json_integer_value(json_object_get(c, "size"));
    int inv = sg_invert_parse(json_string_value(json_object_get(c, "invert")));
    sg_image im;
    if (load(file, &im)) continue;
    float *map = malloc(sizeof *map * size * size);
    int inverted = -1;
    int rc = sg_sketch_map(&im, size, (sg_invert)inv, map, &inverted, err, sizeof err);
    CHECK(rc == 0, "%s: %s", file, err);
    size_t diff = 0;
    for (int k = 0; rc == 0 && k < size * size; k++) {
      CHECK(map[k] == 0.0f || map[k] == 1.0f, "%s: value %g", file, map[k]);
      diff += (map[k] == 1.0f) != (want[k] == '1');
    }
    CHECK(diff == 0, "%s at %d (invert %s): %zu of %d values differ from load_sketch", file, size,
          json_string_value(json_object_get(c, "invert")), diff, size * size);
    CHECK(inverted == json_is_true(json_object_get(c, "inverted")), "%s: inverted %d", file, inverted);
    free(map);
    sg_image_free(&im);
  }
  printf("%zu sketch maps checked\n", json_array_size(cases));

  uint8_t px[4] = {0, 255, 255, 255};
  sg_image im = {2, 2, 1, px};
  float out[4];
  int inverted = 5;
  CHECK(sg_sketch_map(&im, 2, SG_INVERT_AUTO, out, &inverted, err, sizeof err) == 0 && inverted == 1 &&
            out[0] == 1 && out[1] == 0,
        "auto inverts a light image");
  CHECK(sg_sketch_map(&im, 2, SG_INVERT_FALSE, out, NULL, err, sizeof err) == 0 && out[0] == 0 && out[1] == 1,
        "no inversion");
  CHECK(sg_sketch_map(&im, 0, SG_INVERT_AUTO, out, NULL, err, sizeof err) == SG_IMAGE_EINVAL, "size 0");
  CHECK(sg_sketch_map(&im, 2, (sg_invert)7, out, NULL, err, sizeof err) == SG_IMAGE_EINVAL, "bad invert");
  CHECK(sg_sketch_map(&im, 2, SG_INVERT_AUTO, NULL, NULL, err, sizeof err) == SG_IMAGE_EINVAL, "NULL output");
  CHECK(sg_sketch_map(NULL, 2, SG_INVERT_AUTO, out, NULL, err, sizeof err) == SG_IMAGE_EINVAL, "NULL image");
}

/* A PNG made of a signature, an IHDR claiming w x h (RGB, 8 bits), an IDAT holding one black row of up to one
 * pixel, and IEND, with correct CRCs. Returns its length (at most 128 bytes). */
static size_t fake_png(uint32_t w, uint32_t h, uint8_t *out) {
  static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  memcpy(out, sig, 8);
  size_t n = 8;
  uint8_t ihdr[13] = {w >> 24, w >> 16, w >> 8, w, h >> 24, h >> 16, h >> 8, h, 8, 2, 0, 0, 0};
  uint8_t raw[4] = {0}, idat[64];
  uLongf idat_len = sizeof idat;
  compress(idat, &idat_len, raw, sizeof raw);
  struct {
    const char *type;
    const uint8_t *data;
    uint32_t len;
  } chunks[3] = {{"IHDR", ihdr, 13}, {"IDAT", idat, (uint32_t)idat_len}, {"IEND", NULL, 0}};
  for (int i = 0; i < 3; i++) {
    uint32_t len = chunks[i].len;
    uint8_t *p = out + n;
    p[0] = len >> 24, p[1] = len >> 16, p[2] = len >> 8, p[3] = len;
    memcpy(p + 4, chunks[i].type, 4);
    if (len) memcpy(p + 8, chunks[i].data, len);
    uint32_t crc = (uint32_t)crc32(0, p + 4, 4 + len);
    p[8 + len] = crc >> 24, p[9 + len] = crc >> 16, p[10 + len] = crc >> 8, p[11 + len] = crc;
    n += 12 + len;
  }
  return n;
}

/* Every proper prefix fails cleanly; the whole decodes. */
static void check_prefixes(const char *what, const uint8_t *data, size_t len, size_t magic) {
  char err[256] = "";
  sg_image im;
  size_t bad = 0;
  for (size_t n = 0; n < len; n++) {
    int rc = sg_image_decode(data, n, sg_image_default_params(), &im, err, sizeof err);
    int want = n < magic ? SG_IMAGE_EUNSUPPORTED : SG_IMAGE_ECORRUPT;
    if (rc != want || im.pixels || im.width) {
      if (bad++ < 5) CHECK(0, "%s cut at %zu of %zu: %d (%s), want %d", what, n, len, rc, err, want);
    }
    sg_image_free(&im);
  }
  CHECK(bad == 0, "%s: %zu prefixes wrong", what, bad);
  CHECK(sg_image_decode(data, len, sg_image_default_params(), &im, err, sizeof err) == 0, "%s whole: %s", what, err);
  sg_image_free(&im);
}

/* Random byte changes: any outcome but a crash, a leak, or an OK without a sane image. */
static void check_flips(const char *what, const uint8_t *data, size_t len, int rounds) {
  char err[256] = "";
  uint8_t *copy = malloc(len);
  int ok = 0, failed = 0;
  for (int r = 0; r < rounds; r++) {
    memcpy(copy, data, len);
    int flips = 1 + (int)(rnd() % 4);
    for (int k = 0; k < flips; k++) copy[rnd() % len] ^= (uint8_t)(1 + rnd() % 255);
    sg_image im;
    int rc = sg_image_decode(copy, len, sg_image_default_params(), &im, err, sizeof err);
    if (rc == 0) {
      ok++;
      CHECK(im.pixels && im.width > 0 && im.height > 0 && im.channels >= 1 && im.channels <= 4, "%s flip OK", what);
    } else {
      failed++;
      CHECK(rc < 0 && rc >= SG_IMAGE_EIO && !im.pixels && err[0], "%s flip: %d", what, rc);
    }
    sg_image_free(&im);
  }
  free(copy);
  printf("%s: %d random corruptions, %d decoded, %d refused\n", what, rounds, ok, failed);
}

static void test_malformed(void) {
  char err[256] = "";
  sg_image im;
  sg_image_params p = sg_image_default_params();
  /* a PNG of our own (with text), the fixture JPEGs */
  uint8_t px[16 * 16 * 3];
  for (size_t i = 0; i < sizeof px; i++) px[i] = (uint8_t)(i * 7);
  sg_png_text t = {"k", "v"};
  uint8_t *png;
  size_t png_len, jpg_len, prog_len, gray_len;
  CHECK(sg_png_encode(px, 16, 16, 3, &t, 1, &png, &png_len, err, sizeof err) == 0, "encode");
  uint8_t *jpg = read_file("rgb.jpg", &jpg_len), *prog = read_file("progressive.jpg", &prog_len);
  uint8_t *gray = read_file("gray.jpg", &gray_len);
  CHECK(jpg && prog && gray, "fixture JPEGs");
  if (!jpg || !prog || !gray) return;
  check_prefixes("PNG", png, png_len, 8);
  check_prefixes("JPEG", jpg, jpg_len, 3);
  check_prefixes("progressive JPEG", prog, prog_len, 3);
  check_prefixes("gray JPEG", gray, gray_len, 3);
  check_flips("PNG", png, png_len, 300);
  check_flips("JPEG", jpg, jpg_len, 300);
  check_flips("progressive JPEG", prog, prog_len, 200);

  CHECK(sg_image_decode(png, 0, p, &im, err, sizeof err) == SG_IMAGE_EUNSUPPORTED && strstr(err, "empty"),
        "zero length: %s", err);
  CHECK(sg_image_decode(NULL, 0, p, &im, err, sizeof err) == SG_IMAGE_EUNSUPPORTED, "NULL, zero length");
  CHECK(sg_image_decode(NULL, 5, p, &im, err, sizeof err) == SG_IMAGE_EINVAL, "NULL data");
  CHECK(sg_image_decode(png, png_len, p, NULL, err, sizeof err) == SG_IMAGE_EINVAL, "NULL output");
  sg_image_params zero = {0};
  CHECK(sg_image_decode(png, png_len, zero, &im, err, sizeof err) == SG_IMAGE_EINVAL, "limit 0");
  uint8_t garbage[512];
  for (size_t i = 0; i < sizeof garbage; i++) garbage[i] = (uint8_t)rnd();
  garbage[0] = 0x00;
  CHECK(sg_image_decode(garbage, sizeof garbage, p, &im, err, sizeof err) == SG_IMAGE_EUNSUPPORTED &&
            !strcmp(err, "not a PNG or JPEG image"),
        "garbage: %s", err);
  static const uint8_t gif[] = "GIF89a\x01\x00\x01\x00\x80\x00\x00";
  CHECK(sg_image_decode(gif, sizeof gif, p, &im, err, sizeof err) == SG_IMAGE_EUNSUPPORTED, "GIF");
  /* garbage after valid magic bytes */
  memcpy(garbage, png, 8);
  CHECK(sg_image_decode(garbage, sizeof garbage, p, &im, err, sizeof err) == SG_IMAGE_ECORRUPT, "PNG magic, junk");
  memcpy(garbage, jpg, 3);
  CHECK(sg_image_decode(garbage, sizeof garbage, p, &im, err, sizeof err) == SG_IMAGE_ECORRUPT, "JPEG magic, junk");

  /* sizes refused from the header, before any pixel buffer exists */
  uint8_t fake[128];
  size_t n = fake_png(100000, 100000, fake);
  CHECK(sg_image_decode(fake, n, p, &im, err, sizeof err) == SG_IMAGE_ETOOBIG && strstr(err, "100000 x 100000"),
        "100000^2 PNG: %s", err);
  CHECK(sg_image_decode(fake, 33, p, &im, err, sizeof err) == SG_IMAGE_ETOOBIG, "100000^2 PNG, IHDR only: %s", err);
  n = fake_png(5000, 5000, fake);
  CHECK(sg_image_decode(fake, n, p, &im, err, sizeof err) == SG_IMAGE_ETOOBIG &&
            !strcmp(err, "image is 5000 x 5000 = 25000000 pixels, over the limit of 16777216"),
        "5000^2 PNG: %s", err);
  n = fake_png(4096, 4096, fake); /* at the limit: refused later, as the data is short */
  CHECK(sg_image_decode(fake, n, p, &im, err, sizeof err) == SG_IMAGE_ECORRUPT, "4096^2 PNG passes the size check");
  n = fake_png(1, 1, fake);
  CHECK(sg_image_decode(fake, n, p, &im, err, sizeof err) == 0 && im.width == 1 && im.pixels[0] == 0, "1 x 1 PNG: %s",
        err);
  sg_image_free(&im);
  fake[30] ^= 1; /* IHDR's CRC */
  CHECK(sg_image_decode(fake, n, p, &im, err, sizeof err) == SG_IMAGE_ECORRUPT && strstr(err, "corrupt PNG"),
        "bad CRC: %s", err);
  n = fake_png(0, 5, fake);
  CHECK(sg_image_decode(fake, n, p, &im, err, sizeof err) == SG_IMAGE_ECORRUPT, "width 0: %s", err);
  sg_image_params small = {.max_pixels = 100};
  CHECK(sg_image_decode(png, png_len, small, &im, err, sizeof err) == SG_IMAGE_ETOOBIG && strstr(err, "limit of 100"),
        "16 x 16 over a limit of 100: %s", err);
  CHECK(sg_image_decode(jpg, jpg_len, small, &im, err, sizeof err) == SG_IMAGE_ETOOBIG && strstr(err, "32 x 24"),
        "JPEG over a limit of 100: %s", err);
  /* a JPEG whose frame header claims 5000 x 5000 */
  uint8_t *big = malloc(jpg_len);
  memcpy(big, jpg, jpg_len);
  for (size_t i = 2; i + 9 < jpg_len; i++)
    if (big[i] == 0xff && big[i + 1] == 0xc0) {
      big[i + 5] = 5000 >> 8, big[i + 6] = 5000 & 0xff, big[i + 7] = 5000 >> 8, big[i + 8] = 5000 & 0xff;
      break;
    }
  CHECK(sg_image_decode(big, jpg_len, p, &im, err, sizeof err) == SG_IMAGE_ETOOBIG &&
            !strcmp(err, "image is 5000 x 5000 = 25000000 pixels, over the limit of 16777216"),
        "5000^2 JPEG: %s", err);
  free(big);

  sg_image cmyk;
  char path[1024];
  snprintf(path, sizeof path, "%s/cmyk.jpg", data_dir);
  CHECK(sg_image_load(path, p, &cmyk, err, sizeof err) == SG_IMAGE_EUNSUPPORTED && strstr(err, "CMYK"), "CMYK: %s",
        err);
  sg_image_free(&cmyk);
  CHECK(sg_image_load("/nonexistent/x.png", p, &im, err, sizeof err) == SG_IMAGE_EIO && strstr(err, "cannot open"),
        "missing file: %s", err);
  CHECK(sg_image_load(data_dir, p, &im, err, sizeof err) == SG_IMAGE_EIO, "a folder: %s", err);
  free(png);
  free(jpg);
  free(prog);
  free(gray);
}

/* ---- hostile input: each decode in a fresh process, its peak RSS growth against a bound from max_pixels ---- */

/* A growing byte buffer for the files built below. */
typedef struct {
  uint8_t *b;
  size_t len, cap;
} bytes;

static void put(bytes *o, const void *p, size_t n) {
  if (o->len + n > o->cap) {
    while (o->len + n > o->cap) o->cap = o->cap ? o->cap * 2 : 4096;
    o->b = realloc(o->b, o->cap);
    if (!o->b) abort();
  }
  memcpy(o->b + o->len, p, n);
  o->len += n;
}

static void put32(bytes *o, uint32_t v) {
  uint8_t b[4] = {v >> 24, v >> 16, v >> 8, v};
  put(o, b, 4);
}

/* A chunk of n data bytes whose length field says declared, with the CRC of what is written. */
static void png_chunk(bytes *o, const char *type, const void *data, uint32_t n, uint32_t declared) {
  put32(o, declared);
  size_t at = o->len;
  put(o, type, 4);
  if (n) put(o, data, n);
  put32(o, (uint32_t)crc32(0, o->b + at, 4 + n));
}

static void png_start(bytes *o, uint32_t w, uint32_t h, int depth, int color_type) {
  static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  uint8_t ihdr[13] = {w >> 24, w >> 16, w >> 8, w, h >> 24, h >> 16, h >> 8, h, (uint8_t)depth, (uint8_t)color_type,
                      0, 0, 0};
  put(o, sig, 8);
  png_chunk(o, "IHDR", ihdr, 13, 13);
}

/* zlib data inflating to n zero bytes (level 9: about 1030 to 1). */
static void zeros_deflated(bytes *o, uint64_t n) {
  static uint8_t zero[1 << 16], buf[1 << 16];
  z_stream z;
  memset(&z, 0, sizeof z);
  deflateInit(&z, 9);
  int flush;
  do {
    size_t k = n < sizeof zero ? (size_t)n : sizeof zero;
    n -= k;
    z.next_in = zero;
    z.avail_in = (uInt)k;
    flush = n ? Z_NO_FLUSH : Z_FINISH;
    do {
      z.next_out = buf;
      z.avail_out = sizeof buf;
      deflate(&z, flush);
      put(o, buf, sizeof buf - z.avail_out);
    } while (z.avail_out == 0);
  } while (flush != Z_FINISH);
  deflateEnd(&z);
}

/* A w x h PNG (filter 0, all samples zero) whose IDAT inflates to exactly its rows, or to extra more bytes. */
static void png_zero_image(bytes *o, uint32_t w, uint32_t h, int depth, int color_type, uint64_t extra) {
  static const int samples[7] = {1, 0, 3, 1, 2, 0, 4};
  png_start(o, w, h, depth, color_type);
  if (color_type == 3) {
    uint8_t plte[3] = {0, 0, 0};
    png_chunk(o, "PLTE", plte, 3, 3);
  }
  bytes z = {0};
  uint64_t rowbytes = ((uint64_t)w * samples[color_type] * depth + 7) / 8;
  zeros_deflated(&z, (uint64_t)h * (1 + rowbytes) + extra);
  png_chunk(o, "IDAT", z.b, (uint32_t)z.len, (uint32_t)z.len);
  free(z.b);
}

static void png_finish(bytes *o) { png_chunk(o, "IEND", NULL, 0, 0); }

/* A 4096 x 4096 gray progressive JPEG of all-zero coefficients with 1 + 63 x 14 = 883 scans, each valid in
 * sequence (DC, then every AC coefficient alone at Al 13 and refined bit by bit to 0), coded with end-of-band
 * runs so that each AC scan takes a few bytes yet makes libjpeg visit all 262144 blocks. With scans_kept below
 * 883 only that many scans are written, a file libjpeg decodes without complaint. */
typedef struct {
  bytes *o;
  uint32_t acc;
  int n;
} bitw;

static void bits(bitw *w, uint32_t v, int n) {
  for (int i = n - 1; i >= 0; i--) {
    w->acc = w->acc << 1 | ((v >> i) & 1);
    if (++w->n == 8) {
      uint8_t b = (uint8_t)w->acc, zero = 0;
      put(w->o, &b, 1);
      if (b == 0xff) put(w->o, &zero, 1); /* byte stuffing */
      w->acc = 0;
      w->n = 0;
    }
  }
}

static void bits_flush(bitw *w) {
  while (w->n) bits(w, 1, 1);
}

static void jpeg_many_scans(bytes *o, int scans_kept) {
  enum { SIDE = 4096, BLOCKS = (SIDE / 8) * (SIDE / 8) };
  static const uint8_t soi[2] = {0xff, 0xd8}, eoi[2] = {0xff, 0xd9};
  put(o, soi, 2);
  uint8_t dqt[5 + 64] = {0xff, 0xdb, 0, 67, 0};
  memset(dqt + 5, 1, 64);
  put(o, dqt, sizeof dqt);
  uint8_t sof2[] = {0xff, 0xc2, 0, 11, 8, SIDE >> 8, SIDE & 0xff, SIDE >> 8, SIDE & 0xff, 1, 1, 0x11, 0};
  put(o, sof2, sizeof sof2);
  /* DC table 0: category 0 only, code 0. AC table 0: EOB14 (run of 2^14 + 14 bits) code 0, EOB3 code 10. */
  uint8_t dht[] = {0xff, 0xc4, 0, 2 + 17 + 1 + 17 + 2, 0x00, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                   0x10, 1,    1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,    0, 0, 0xe0, 0x30};
  put(o, dht, sizeof dht);
  int scans = 0;
  for (int k = 0; k <= 63 && scans < scans_kept; k++) {
    for (int al = k ? 13 : 0; al >= 0 && scans < scans_kept; al--, scans++) {
      int ah = k && al < 13 ? al + 1 : 0;
      uint8_t sos[] = {0xff, 0xda, 0, 8, 1, 1, 0x00, (uint8_t)k, (uint8_t)k, (uint8_t)(ah << 4 | al)};
      put(o, sos, sizeof sos);
      bitw w = {o, 0, 0};
      if (k == 0) {
        for (int b = 0; b < BLOCKS; b++) bits(&w, 0, 1);
      } else {
        int left = BLOCKS;
        for (; left >= 32767; left -= 32767) bits(&w, 0, 1), bits(&w, 32767 - 16384, 14);
        if (left) bits(&w, 2, 2), bits(&w, (uint32_t)left - 8, 3); /* EOB3: 8 to 15 blocks */
      }
      bits_flush(&w);
    }
  }
  put(o, eoi, 2);
}

/* What one decode in a child process did. */
typedef struct {
  int rc;
  double seconds;
  long grew_kib; /* VmHWM after minus before, -1 when unknown */
  int32_t width, height, channels;
  char err[256];
} decode_cost;

static long vm_hwm_kib(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  long v = -1;
  while (f && fgets(line, sizeof line, f))
    if (!strncmp(line, "VmHWM:", 6)) v = atol(line + 6);
  if (f) fclose(f);
  return v;
}

/* Decodes data in a forked child (its peak RSS starts from its own, not this process's, and the libraries' code
 * is paged in first by decoding two tiny images) and reports rc, time and the peak's growth. */
static decode_cost measure_decode(const uint8_t *data, size_t len, sg_image_params p) {
  decode_cost c;
  memset(&c, 0, sizeof c);
  c.rc = 1;
  int fd[2];
  if (pipe(fd)) return c;
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    close(fd[0]);
    sg_image im;
    char e[256];
    uint8_t one = 9, *png, *jpg = NULL;
    size_t png_len;
    unsigned long jpg_len = 0;
    if (sg_png_encode(&one, 1, 1, 1, NULL, 0, &png, &png_len, e, sizeof e) == 0) {
      sg_image_decode(png, png_len, p, &im, e, sizeof e);
      sg_image_free(&im);
      free(png);
    }
    tjhandle tj = tjInitCompress();
    uint8_t rgb[8 * 8 * 3] = {0};
    if (tj && tjCompress2(tj, rgb, 8, 0, 8, TJPF_RGB, &jpg, &jpg_len, TJSAMP_444, 90, TJFLAG_PROGRESSIVE) == 0) {
      sg_image_decode(jpg, jpg_len, p, &im, e, sizeof e);
      sg_image_free(&im);
    }
    tjFree(jpg);
    tjDestroy(tj);
    FILE *f = fopen("/proc/self/clear_refs", "w"); /* resets VmHWM to the current RSS where allowed */
    if (f) {
      fputs("5", f);
      fclose(f);
    }
    long before = vm_hwm_kib();
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    decode_cost r;
    memset(&r, 0, sizeof r);
    r.rc = sg_image_decode(data, len, p, &im, r.err, sizeof r.err);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long after = vm_hwm_kib();
    r.grew_kib = before >= 0 && after >= 0 ? after - before : -1;
    r.seconds = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    r.width = im.width, r.height = im.height, r.channels = im.channels;
    sg_image_free(&im);
    ssize_t put_n = write(fd[1], &r, sizeof r);
    _exit(put_n == (ssize_t)sizeof r ? 0 : 1);
  }
  close(fd[1]);
  if (pid > 0) {
    ssize_t got = read(fd[0], &c, sizeof c);
    int status = 0;
    waitpid(pid, &status, 0);
    if (got != (ssize_t)sizeof c || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      memset(&c, 0, sizeof c);
      c.rc = 1;
      snprintf(c.err, sizeof c.err, "the decoding child died (status %d)", status);
    }
  }
  close(fd[0]);
  return c;
}

/* One hostile case: the code and message wanted, and the bound on the peak RSS growth in KiB. */
static void expect_cost(const char *what, const bytes *file, sg_image_params p, int want_rc, const char *want_err,
                        long bound_kib) {
  decode_cost c = measure_decode(file->b, file->len, p);
  printf("hostile %-44s %8zu bytes: rc %d, peak RSS +%ld KiB (bound %ld), %.3f s%s%s\n", what, file->len, c.rc,
         c.grew_kib, bound_kib, c.seconds, c.rc ? ": " : "", c.rc ? c.err : "");
  CHECK(c.rc == want_rc, "%s: rc %d (%s), want %d", what, c.rc, c.err, want_rc);
  CHECK(!want_err || strstr(c.err, want_err), "%s: message \"%s\" lacks \"%s\"", what, c.err, want_err);
  CHECK(c.grew_kib >= 0 && c.grew_kib <= bound_kib, "%s: peak RSS grew by %ld KiB, over the bound of %ld KiB", what,
        c.grew_kib, bound_kib);
}

/* The PNG bound: the pixels kept, two libpng rows of the file's samples, and 1 MiB for libpng and zlib. */
static long png_bound_kib(uint64_t w, uint64_t h, int out_channels, int in_bytes_per_pixel) {
  return (long)((w * h * (uint64_t)out_channels + 2 * (w * (uint64_t)in_bytes_per_pixel + 1)) / 1024) + 1024;
}

static void test_hostile(void) {
  sg_image_params p = sg_image_default_params();
  const long small = 1024; /* KiB: what a refused or pixel-free decode may cost, libpng and zlib included */
  /* a chunk declaring 2^31 - 1 bytes after a valid 1 x 1 header: 2 GiB and seconds in libpng 1.6 */
  const char *text_types[] = {"tEXt", "zTXt", "iTXt", "sPLT", "iCCP", "eXIf", "prIv"};
  for (size_t i = 0; i < sizeof text_types / sizeof *text_types; i++) {
    bytes f = {0};
    png_start(&f, 1, 1, 8, 2);
    uint8_t body[100];
    memset(body, 'a', sizeof body);
    memcpy(body, "Comment", 8);
    png_chunk(&f, text_types[i], body, sizeof body, 0x7fffffff);
    char what[64];
    snprintf(what, sizeof what, "%s declaring 2^31-1 bytes", text_types[i]);
    expect_cost(what, &f, p, SG_IMAGE_ECORRUPT, "declares 2147483647 bytes", small);
    free(f.b);
  }
  /* real compressed text and profiles inflating to 256 MiB, in a 1 x 1 image that is otherwise fine */
  const char *bomb_types[] = {"zTXt", "iTXt", "iCCP"};
  const char *bomb_heads[] = {"Comment\0\0", "Comment\0\1\0\0\0", "icc\0\0"};
  const size_t head_len[] = {9, 12, 5};
  for (size_t i = 0; i < 3; i++) {
    bytes z = {0}, f = {0};
    put(&z, bomb_heads[i], head_len[i]);
    zeros_deflated(&z, (uint64_t)256 << 20);
    png_start(&f, 1, 1, 8, 0);
    png_chunk(&f, bomb_types[i], z.b, (uint32_t)z.len, (uint32_t)z.len);
    bytes idat = {0};
    zeros_deflated(&idat, 2);
    png_chunk(&f, "IDAT", idat.b, (uint32_t)idat.len, (uint32_t)idat.len);
    png_finish(&f);
    char what[64];
    snprintf(what, sizeof what, "%s inflating to 256 MiB", bomb_types[i]);
    expect_cost(what, &f, p, 0, NULL, small);
    free(z.b);
    free(f.b);
    free(idat.b);
  }
  /* many chunks: IHDR and 999 tEXt are the limit and pass, one more is refused before libpng parses any */
  const int counts[] = {SG_IMAGE_PNG_MAX_CHUNKS - 1, SG_IMAGE_PNG_MAX_CHUNKS, 100000};
  for (size_t c = 0; c < sizeof counts / sizeof *counts; c++) {
    int n = counts[c];
    bytes f = {0};
    png_start(&f, 1, 1, 8, 0);
    for (int i = 0; i < n; i++) png_chunk(&f, "tEXt", "k\0v", 3, 3);
    bytes idat = {0};
    zeros_deflated(&idat, 2);
    png_chunk(&f, "IDAT", idat.b, (uint32_t)idat.len, (uint32_t)idat.len);
    png_finish(&f);
    char what[64];
    snprintf(what, sizeof what, "%d tEXt chunks", n);
    expect_cost(what, &f, p, n < SG_IMAGE_PNG_MAX_CHUNKS ? 0 : SG_IMAGE_ETOOBIG,
                n < SG_IMAGE_PNG_MAX_CHUNKS ? NULL : "more than 1000 chunks", small);
    free(f.b);
    free(idat.b);
  }
  /* decompression bombs: a small IDAT filling the largest image allowed decodes within the bound */
  struct {
    const char *what;
    uint32_t w, h;
    int depth, color_type, out_ch, in_bpp;
  } bombs[] = {
      {"4096 x 4096 RGBA 16-bit from zeros", 4096, 4096, 16, 6, 4, 8},
      {"16384 x 1024 RGBA 16-bit from zeros (widest rows)", SG_IMAGE_MAX_SIDE, 1024, 16, 6, 4, 8},
      {"1024 x 16384 gray from zeros (most rows)", 1024, SG_IMAGE_MAX_SIDE, 8, 0, 1, 1},
      {"4096 x 4096 palette 1-bit from zeros", 4096, 4096, 1, 3, 3, 1},
  };
  for (size_t i = 0; i < sizeof bombs / sizeof *bombs; i++) {
    bytes f = {0};
    png_zero_image(&f, bombs[i].w, bombs[i].h, bombs[i].depth, bombs[i].color_type, 0);
    png_finish(&f);
    expect_cost(bombs[i].what, &f, p, 0, NULL,
                png_bound_kib(bombs[i].w, bombs[i].h, bombs[i].out_ch, bombs[i].in_bpp));
    free(f.b);
  }
  /* strips within max_pixels but with a side over SG_IMAGE_MAX_SIDE: refused from the header (the 2^24 x 1 16-bit
   * RGBA one cost 320 MiB and 4 to 9 s of libpng's row buffers) */
  const uint32_t strips[][2] = {{1u << 24, 1}, {1, 1u << 24}, {SG_IMAGE_MAX_SIDE + 1, 1}};
  for (size_t i = 0; i < sizeof strips / sizeof *strips; i++) {
    bytes f = {0};
    png_zero_image(&f, strips[i][0], strips[i][1], 16, 6, 0);
    png_finish(&f);
    char what[64];
    snprintf(what, sizeof what, "%u x %u RGBA 16-bit strip", strips[i][0], strips[i][1]);
    expect_cost(what, &f, p, SG_IMAGE_ETOOBIG, "a side over the limit of 16384 pixels", small);
    free(f.b);
  }
  /* image data inflating far past the image is refused once 64 KiB too many have come out (libpng would go on
   * to the end: 16 GiB for 16 MiB of deflated zeros); a little extra is ignored as libpng ignores it */
  bytes f = {0};
  png_zero_image(&f, 1, 1, 8, 0, (uint64_t)256 << 20);
  png_finish(&f);
  expect_cost("1 x 1 whose IDAT inflates to 256 MiB", &f, p, SG_IMAGE_ECORRUPT, "image data inflates to over",
              small);
  free(f.b);
  f = (bytes){0};
  png_zero_image(&f, 1, 1, 8, 0, 60000);
  png_finish(&f);
  expect_cost("1 x 1 whose IDAT has 60000 bytes too many", &f, p, 0, NULL, small);
  free(f.b);
  /* the largest header with its data cut short: refused (the pixel buffer exists by then: under meson's
   * MALLOC_PERTURB_ glibc fills it, so the bound is the decode's own) */
  f = (bytes){0};
  png_start(&f, 4096, 4096, 16, 6);
  bytes idat = {0};
  zeros_deflated(&idat, 1000);
  png_chunk(&f, "IDAT", idat.b, (uint32_t)idat.len, (uint32_t)idat.len);
  png_finish(&f);
  expect_cost("4096 x 4096 RGBA 16-bit, 1000 bytes of data", &f, p, SG_IMAGE_ECORRUPT, "Not enough image data",
              png_bound_kib(4096, 4096, 4, 8));
  free(f.b);
  free(idat.b);

  /* JPEG: the largest progressive color image allowed (libjpeg keeps every coefficient: 2 bytes a sample) */
  tjhandle tj = tjInitCompress();
  CHECK(tj != NULL, "tjInitCompress");
  if (!tj) return;
  uint8_t *rgb = calloc((size_t)4096 * 4096, 3), *jpg = NULL;
  unsigned long jpg_len = 0;
  for (size_t i = 0; i < (size_t)4096 * 4096 * 3; i += 97) rgb[i] = (uint8_t)rnd();
  CHECK(tjCompress2(tj, rgb, 4096, 0, 4096, TJPF_RGB, &jpg, &jpg_len, TJSAMP_444, 75, TJFLAG_PROGRESSIVE) == 0,
        "progressive 4096^2: %s", tjGetErrorStr2(tj));
  free(rgb);
  f = (bytes){jpg, (size_t)jpg_len, (size_t)jpg_len};
  /* pixels 3 bytes a pixel, coefficients 6, and 2 MiB for libjpeg's rows and tables */
  expect_cost("progressive 4096 x 4096 4:4:4 JPEG", &f, p, 0, NULL, (long)((uint64_t)4096 * 4096 * 9 / 1024) + 2048);
  tjFree(jpg);
  tjDestroy(tj);
  /* many scans: the limit decodes, one more is refused before decoding (libjpeg's own limit is 500) */
  const int scans[] = {SG_IMAGE_JPEG_MAX_SCANS, SG_IMAGE_JPEG_MAX_SCANS + 1, 883};
  for (size_t i = 0; i < sizeof scans / sizeof *scans; i++) {
    f = (bytes){0};
    jpeg_many_scans(&f, scans[i]);
    char what[64];
    snprintf(what, sizeof what, "gray 4096 x 4096 JPEG of %d scans", scans[i]);
    int over = scans[i] > SG_IMAGE_JPEG_MAX_SCANS;
    /* gray: pixels 1 byte a pixel, coefficients 2 */
    expect_cost(what, &f, p, over ? SG_IMAGE_ETOOBIG : 0, over ? "more than 100 scans" : NULL,
                over ? small : (long)((uint64_t)4096 * 4096 * 3 / 1024) + 2048);
    free(f.b);
  }
  /* 200 comment markers of 65533 bytes each are skipped in place */
  size_t small_len;
  uint8_t *small_jpg = read_file("rgb.jpg", &small_len);
  CHECK(small_jpg != NULL, "rgb.jpg");
  if (small_jpg) {
    f = (bytes){0};
    put(&f, small_jpg, 2);
    uint8_t *com = calloc(65535, 1);
    com[0] = 0xff, com[1] = 0xfe, com[2] = 0xff, com[3] = 0xfd; /* 2 marker bytes, 65533 counted */
    for (int i = 0; i < 200; i++) put(&f, com, 65535);
    put(&f, small_jpg + 2, small_len - 2);
    free(com);
    expect_cost("JPEG after 200 COM markers of 64 KiB", &f, p, 0, NULL, small);
    free(f.b);
    free(small_jpg);
  }
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s DATA_DIR (tests/core/data/images)\n", argv[0]);
    return 2;
  }
  data_dir = argv[1];
  char path[1024];
  snprintf(path, sizeof path, "%s/images.json", data_dir);
  json_error_t jerr;
  json_t *root = json_load_file(path, 0, &jerr);
  CHECK(root != NULL, "%s: %s", path, jerr.text);
  test_hostile(); /* first, while this process is small: each decode forks it */
  test_sniff_and_names();
  test_png_roundtrip();
  test_interlaced();
  test_conversions();
  if (root) {
    test_decode_fixtures(json_object_get(root, "decode"));
    test_sketch_fixtures(json_object_get(root, "sketch"));
  }
  test_malformed();
  json_decref(root);
  printf("%d failed\n", failures);
  return failures ? 1 : 0;
}
