"""MLflow's models-from-code entry of a registered tanet model.

MLflow runs this file when it loads the model (after adding the model's code to
``sys.path``) instead of unpickling an object, so a registration neither pickles a class
nor warns about it; the model is :class:`tanet.infer.pyfunc.TanetPyfunc`.
"""

from mlflow.models import set_model

from tanet.infer.pyfunc import TanetPyfunc

set_model(TanetPyfunc())
