"""Learning algorithms: SFT now; GRPO, PPO and co-training join here, one module each."""
