"""Sample-quality metrics.

- :mod:`.table`: the one table of metrics (name, function, unit, direction, needs) that every
  consumer reads; a new metric is one :func:`.table.register` call (see its docstring);
- :mod:`.features`: a small classifier's features per dataset, Fréchet distance and KID in them
  (and Inception FID when ``pytorch-fid`` and its weights are installed);
- :mod:`.style`: what samples look like: saturation, total variation, pixel-histogram distance;
- :mod:`.distances`: distances between point clouds (energy distance, sliced Wasserstein, W1 to a
  Gaussian) for low-dimensional data.
"""
