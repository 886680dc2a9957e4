"""The base model and what wraps it: loading (hub ids, local folders, the embedded GGUF models), PEFT adapters,
activation taps at each decoder layer, padding, forward passes at the answer positions, greedy generation, memory
estimates, compiled layers, and the process group and FSDP sharding of distributed runs."""
