"""The command line: `ia2 run | sweep | report | train | predict | export | data | demo` parsed from the config's
declarations, and the practitioner's commands (train one adapter on all labelled examples, predict, export)."""

import logging

# bitsandbytes (installed for 4-bit bases) warns at import, on CPUs with AVX-512 BF16, that it cannot fetch an
# optional kernel from the hub, and falls back to its own: noise on every command, set before anything imports it.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
