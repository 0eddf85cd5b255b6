"""World-model RL with verified rewards (VLA-RFT, METHODS.md section 6): an action-conditioned world model over
the policy's camera views (``model``), its training and evaluation (``train``, ``reinforge wm train/eval``), and
``WorldModelEnv`` (``env``, registered as the ``worldmodel`` env), which serves it as a ``VecEnv`` with the
verified reward so GRPO / PPO train in imagination unchanged."""
