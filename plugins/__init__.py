"""Built-in plugins. They register with the same public decorators a user would use, and
arrive through the same ``uni_lab`` entry-point group as any third-party package."""
from . import baselines, ig, models, paths, uni  # noqa: F401  (importing registers)
