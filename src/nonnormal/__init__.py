"""Non-normal diffusion models."""
