"""What a run learns from and is asked: tasks (declared sources, offline packages, hub loaders, JSONL files), the
held-out draws and a seed's training / dev split, prompts with and without demonstrations, and answer parsers."""
