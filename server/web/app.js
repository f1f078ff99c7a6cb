// placeholder: the sketch pad replaces it
