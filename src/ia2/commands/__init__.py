"""The command line: `ia2 run | sweep | report | train | predict | export | data | demo` parsed from the config's
declarations, and the practitioner's commands (train one adapter on all labelled examples, predict, export)."""
