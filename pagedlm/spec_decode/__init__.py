"""Speculative decoding: config, proposers (n-gram, draft model, EAGLE/EAGLE-3), the exact
rejection sampler, the model runner's seam and the counters. Nothing is imported here: the
scheduler imports the counters without torch."""
