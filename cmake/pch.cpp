// Translation unit that owns the precompiled torch headers reused by every torch-facing library.
