"""Bridges to other libraries. Each submodule imports its library only when it is imported itself,
so ``import nonnormal`` never pulls them in.

- :mod:`nonnormal.integrations.diffusers`: a law-swappable diffusers scheduler, ``UNet2DModel`` as a
  nonnormal network, pretrained diffusers pipelines in and trained runs out
  (``pip install 'nonnormal[diffusers]'``).
"""
