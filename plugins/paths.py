"""Integration paths given in closed form."""
import uni_lab
from uni_lab.engine import straight_path


@uni_lab.path("straight")
def straight(x, baseline, alphas):
    """The straight line x' + α (x − x') used by IG, UNI and any baseline."""
    return straight_path(x, baseline, alphas)
