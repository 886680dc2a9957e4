"""Scoring a model on held-out prompts: label log-probabilities and the activations at the last prompt token
(`scoring`), and the metrics computed from them: accuracy, calibration, asim (`metrics`)."""
