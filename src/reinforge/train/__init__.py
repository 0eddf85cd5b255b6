"""Training infrastructure shared by SFT and RL: metric logging and atomic, resumable checkpoints."""
