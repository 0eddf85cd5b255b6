"""The LIBERO adapter: ``env.LiberoEnv`` (the VecEnv, in the caller's process), ``worker`` (what runs in its
worker processes, the only code that touches LIBERO's simulator) and ``options`` (its config section)."""
