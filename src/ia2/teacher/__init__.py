"""The ICL teacher: the frozen base model's greedy answers to queries with demonstrations and its attention
contributions at the answer positions, collected once and cached on disk (one file, or shards read back per batch)."""
