/* The prompts of train-lgp --prompts: reading and checking a prompt file, and the built-in list of everyday prompts. */
#include "train_prompts.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errbuf.h"

/* Varied everyday scenes, objects, animals and food, one short photo-like prompt each: the images a Stable
 * Diffusion checkpoint makes from them cover the outlines it draws in everyday use. */
static const char *const BUILTIN[] = {
    "a photo of a cat sitting on a windowsill",
    "a dog running on a sandy beach",
    "a red apple on a wooden table",
    "a bicycle leaning against a brick wall",
    "a cup of coffee on a saucer",
    "a vintage car parked on a city street",
    "a bowl of fresh fruit on a kitchen counter",
    "a lighthouse on a rocky coast",
    "a horse standing in a green field",
    "a teapot and two cups on a tray",
    "a wooden chair in an empty room",
    "a pair of running shoes on the floor",
    "a glass vase with sunflowers",
    "a small boat on a calm lake",
    "a mountain landscape with a clear sky",
    "a bird perched on a tree branch",
    "a slice of pizza on a plate",
    "an old wooden door with an iron handle",
    "a laptop on a desk next to a lamp",
    "a teddy bear on a bed",
    "a butterfly on a purple flower",
    "a red umbrella in the rain",
    "a steam train crossing a bridge",
    "a cozy living room with a sofa",
    "a stack of books on a shelf",
    "a guitar leaning against an amplifier",
    "a loaf of bread on a cutting board",
    "a cow grazing in a meadow",
    "a yellow taxi in traffic",
    "a snowman in a snowy garden",
    "a wristwatch on a leather strap",
    "a rabbit sitting in the grass",
    "a bridge over a river at sunset",
    "a basket of eggs on a farm table",
    "a street market with fruit stalls",
    "a sailboat on the open sea",
    "a church with a tall bell tower",
    "a pot of soup on a stove",
    "a kitten playing with a ball of yarn",
    "an owl sitting on a fence post",
    "a bunch of bananas",
    "a park bench under a tree",
    "a motorcycle parked by the road",
    "a plate of pasta with tomato sauce",
    "a wooden cabin in a pine forest",
    "a duck swimming in a pond",
    "a cake with candles on a table",
    "a pair of glasses on an open book",
    "a fire truck on a city street",
    "a potted plant on a balcony",
    "a giraffe in the savanna",
    "a lemon cut in half",
    "a desk lamp on a wooden desk",
    "an elephant walking through dust",
    "a sandwich on a paper plate",
    "a windmill in a tulip field",
    "a child flying a kite on a hill",
    "a violin lying on a velvet cloth",
    "a bowl of ramen with chopsticks",
    "a penguin standing on ice",
    "a skyscraper against a blue sky",
    "a wicker basket full of apples",
    "an armchair next to a fireplace",
    "a tiger resting in the shade",
    "a bottle of wine and two glasses",
    "a garden path lined with roses",
    "a bus stop on a rainy day",
    "a fox in a snowy forest",
    "a hamburger with fries",
    "an airplane on a runway",
    "a wooden rowing boat on a river bank",
    "a camel in the desert",
    "a chess board with pieces",
    "a bowl of salad with tomatoes",
    "a bear catching a fish in a river",
    "a red telephone box",
    "a woman reading a book in a cafe",
    "a man riding a bicycle in a park",
    "a castle on a hill",
    "a glass of orange juice",
    "a deer in a misty forest",
    "a toaster on a kitchen counter",
    "a goldfish in a round bowl",
    "a pumpkin on a porch",
    "a wooden pier stretching into the sea",
    "a sheep on a grassy hill",
    "a pair of scissors on paper",
    "a helicopter in the sky",
    "a squirrel holding a nut",
    "a ceramic mug with a spoon",
    "a tractor in a wheat field",
    "a cathedral interior with stained glass",
    "a frog on a lily pad",
    "a bowl of cherries",
    "an old stone well in a village",
    "a parrot on a perch",
    "a kettle boiling on a gas stove",
    "a tennis racket and a ball",
    "a waterfall in a jungle",
    "a pizza oven with a fire",
    "a koala in a eucalyptus tree",
    "a skateboard on a ramp",
    "a plate of sushi",
    "a hot air balloon over fields",
    "a dog sleeping on a rug",
    "a candle burning on a table",
    "a zebra drinking at a waterhole",
    "a strawberry on a white plate",
    "a city street at night with lights",
    "a wooden table set for dinner",
    "a turtle on a rock",
    "a pile of autumn leaves",
    "a microscope on a lab bench",
    "a lion lying in the grass",
    "a pot of tulips on a windowsill",
    "a red sports car",
    "a mailbox in front of a house",
    "a swan on a lake",
    "a bowl of popcorn",
    "a backpack on a bench",
    "a farmhouse with a red barn",
    "a jellyfish in dark water",
    "a croissant on a plate",
    "a camera on a tripod",
    "a monkey sitting on a branch",
    "a vegetable garden with cabbages",
    "a ferris wheel at a fair",
    "a bee on a sunflower",
    "a donut with sprinkles",
    "a bedroom with a large window",
    "a wolf howling at the moon",
    "a glass jar full of cookies",
    "a row of colorful houses",
    "a pair of boots in the snow",
    "a peacock spreading its feathers",
    "a mountain lake with reflections",
    "a coffee machine in a cafe",
    "a hedgehog in the leaves",
    "a kitchen with copper pans",
    "a lamp post on a foggy street",
    "a watermelon slice",
    "a piano in a concert hall",
    "a seagull on a harbour wall",
    "an orange cat on a sofa",
    "a picnic blanket in a park",
    "a pine tree covered in snow",
    "a clock tower in a town square",
    "a plate of pancakes with syrup",
    "a shopping cart in a parking lot",
    "a chicken in a farmyard",
    "a bathtub in a bright bathroom",
    "a bunch of grapes on a vine",
    "a tram on a city street",
    "a bowl of soup with bread",
    "a cactus in a clay pot",
    "a polar bear on the ice",
    "a sewing machine on a table",
    "a house with a white picket fence",
    "a pair of headphones on a desk",
    "a mushroom on the forest floor",
    "a fishing boat in a harbour",
    "a cat sleeping in a cardboard box",
    "a street with cherry blossom trees",
    "a lantern on a wooden table",
    "a crab on the sand",
    "a desert road with mountains",
};

void train_prompts_free(train_prompts *p) {
  if (!p) return;
  for (int32_t i = 0; i < p->n; i++) free(p->text[i]);
  free(p->text);
  free(p);
}

/* Appends a copy of s (n bytes) to p, growing its array (cap holds its size). Returns 0, or -1 out of memory. */
static int add(train_prompts *p, int32_t *cap, const char *s, size_t n) {
  if (p->n == *cap) {
    int32_t nc = *cap ? *cap * 2 : 64;
    char **t = realloc(p->text, (size_t)nc * sizeof *t);
    if (!t) return -1;
    p->text = t;
    *cap = nc;
  }
  char *c = malloc(n + 1);
  if (!c) return -1;
  memcpy(c, s, n);
  c[n] = 0;
  p->text[p->n++] = c;
  return 0;
}

train_prompts *train_prompts_builtin(void) {
  train_prompts *p = calloc(1, sizeof *p);
  int32_t cap = 0;
  for (size_t i = 0; p && i < sizeof BUILTIN / sizeof *BUILTIN; i++)
    if (add(p, &cap, BUILTIN[i], strlen(BUILTIN[i]))) {
      train_prompts_free(p);
      return NULL;
    }
  return p;
}

uint64_t train_prompts_hash(const train_prompts *p) {
  uint64_t h = 1469598103934665603ULL;
  for (int32_t i = 0; p && i < p->n; i++)
    for (const unsigned char *s = (const unsigned char *)p->text[i];; s++) {
      h = (h ^ *s) * 1099511628211ULL;
      if (!*s) break;
    }
  return h;
}

/* The length of the valid UTF-8 sequence at s (n bytes left): 1 to 4, or 0 when it is invalid (a stray
 * continuation byte, a truncated or overlong sequence, a surrogate, a code point over U+10FFFF). */
static int utf8_len(const unsigned char *s, size_t n) {
  unsigned c = s[0];
  if (c < 0x80) return 1;
  int len = c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
  if (!len || (size_t)len > n) return 0;
  for (int k = 1; k < len; k++)
    if ((s[k] & 0xC0) != 0x80) return 0;
  if (c == 0xE0 && s[1] < 0xA0) return 0; /* overlong */
  if (c == 0xED && s[1] > 0x9F) return 0; /* surrogates */
  if (c == 0xF0 && s[1] < 0x90) return 0; /* overlong */
  if (c == 0xF4 && s[1] > 0x8F) return 0; /* over U+10FFFF */
  return len;
}

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v'; }

train_prompts *train_prompts_read(const char *path, const sg_tokenizer *tok, char *err, size_t errlen) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    sg_set_err(err, errlen, "%s", strerror(errno));
    return NULL;
  }
  char *buf = malloc(TRAIN_PROMPTS_MAX_FILE + 1);
  size_t len = buf ? fread(buf, 1, TRAIN_PROMPTS_MAX_FILE + 1, f) : 0;
  int rerr = ferror(f);
  fclose(f);
  train_prompts *p = buf ? calloc(1, sizeof *p) : NULL;
  if (!p) {
    free(buf);
    sg_set_err(err, errlen, "out of memory");
    return NULL;
  }
  int32_t cap = 0, line = 0, skipped = 0;
  int ok = 1;
  if (rerr) {
    sg_set_err(err, errlen, "cannot read the file");
    ok = 0;
  } else if (len > TRAIN_PROMPTS_MAX_FILE) {
    sg_set_err(err, errlen, "over %d MiB; give at most %d prompts of up to %d bytes", TRAIN_PROMPTS_MAX_FILE >> 20,
               TRAIN_PROMPTS_MAX_COUNT, TRAIN_PROMPTS_MAX_BYTES);
    ok = 0;
  }
  for (size_t pos = 0; ok && pos < len;) {
    size_t end = pos;
    while (end < len && buf[end] != '\n') end++;
    line++;
    for (size_t i = pos; ok && i < end;) { /* the whole line is checked, comments included */
      int l = buf[i] ? utf8_len((const unsigned char *)buf + i, end - i) : -1;
      if (l <= 0) {
        sg_set_err(err, errlen, "line %d, byte %zu: %s (prompts are UTF-8 text)", (int)line, i - pos + 1,
                   l < 0 ? "a NUL byte" : "invalid UTF-8");
        ok = 0;
      }
      i += l > 0 ? (size_t)l : 1;
    }
    size_t a = pos, b = end;
    while (a < b && is_space(buf[a])) a++;
    while (b > a && is_space(buf[b - 1])) b--;
    pos = end + 1;
    if (!ok) break;
    if (a == b || buf[a] == '#') {
      skipped++;
      continue;
    }
    if (b - a > TRAIN_PROMPTS_MAX_BYTES) {
      sg_set_err(err, errlen, "line %d: a prompt of %zu bytes, over the limit of %d", (int)line, b - a,
                 TRAIN_PROMPTS_MAX_BYTES);
      ok = 0;
      break;
    }
    if (tok) {
      int64_t n = sg_tokenizer_encode(tok, buf + a, b - a, NULL, 0);
      int32_t max = sg_tokenizer_max_length(tok) - 2;
      if (n > max) {
        sg_set_err(err, errlen, "line %d: a prompt of %lld tokens, over the text encoder's %d (the rest would be "
                   "cut off): shorten it", (int)line, (long long)n, (int)max);
        ok = 0;
        break;
      }
    }
    if (p->n == TRAIN_PROMPTS_MAX_COUNT) {
      sg_set_err(err, errlen, "line %d: over %d prompts", (int)line, TRAIN_PROMPTS_MAX_COUNT);
      ok = 0;
      break;
    }
    if (add(p, &cap, buf + a, b - a)) {
      sg_set_err(err, errlen, "out of memory");
      ok = 0;
    }
  }
  if (ok && p->n == 0) {
    if (len == 0) sg_set_err(err, errlen, "the file is empty: give one prompt per line");
    else sg_set_err(err, errlen, "no prompts: its %d line%s %s blank or comments; give one prompt per line",
                    (int)line, line == 1 ? "" : "s", line == 1 ? "is" : "are all");
    ok = 0;
  }
  free(buf);
  if (!ok) {
    train_prompts_free(p);
    return NULL;
  }
  return p;
}
