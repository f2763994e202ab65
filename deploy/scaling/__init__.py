"""``brigade scale simulate``: KEDA's kafka scaler and the HPA replayed over load traces, on paper.

Entry points: ``simulate(trace, params)``, ``compare(trace, strategies)``, ``params_for_class(...)``, the traces
in ``traces`` and ``plot(result, path)``.
"""

from deploy.scaling.hpa import ScalerParams
from deploy.scaling.params import params_for_class
from deploy.scaling.plot import plot
from deploy.scaling.simulate import SimResult, Summary, compare, simulate

__all__ = ["ScalerParams", "SimResult", "Summary", "compare", "params_for_class", "plot", "simulate"]
