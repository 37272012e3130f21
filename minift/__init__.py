"""minift: a from-scratch, educational InstructGPT pipeline (pretrain -> SFT -> reward model -> PPO)."""
