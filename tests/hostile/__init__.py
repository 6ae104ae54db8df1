"""The hostile-input suite's helpers: a seeded corpus generator (``corpus``), the checks every case
makes (``checks``), a fake Label Studio on loopback (``fakels``) and a kill-point runner (``killpoint``).

Nothing here is a checked-in blob: every hostile file is generated at test time from a seed.
"""
