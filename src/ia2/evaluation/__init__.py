"""Scoring a model on held-out prompts: label log-probabilities and the activations at the last prompt token
(`scoring`), the base model's scores cached by content (`cache`), and the metrics computed from them: accuracy,
calibration, asim (`metrics`)."""
