"""Benchmarks: `harness` (timing, environment, copy bandwidth, JSON as it goes) is
shared by `pix2pix-fast bench` and every script in benchmarks/; `steps` times
the training-step variants that `pix2pix-fast bench` runs."""
