"""The fast path: a fitted pipeline's own arithmetic on plain arrays, proved equal to the pipeline at save time.

Scope: everything between the prepared input frame and the predictions, for
scikit-learn ``Pipeline``s. Built from the FITTED estimator at save time
(:func:`build_plan`), pickled beside it in the payload, used by
:class:`blackbox.Model` for every prediction when present. One module per concept:

* :mod:`.base`: the node protocol, ``Defer`` (run this call the reference way) and steps called as they are;
* :mod:`.table`: the input frame's columns, taken out once, by position;
* :mod:`.transformers`: SimpleImputer, the Standard/MinMax/Robust/MaxAbs scalers, OneHotEncoder, OrdinalEncoder,
  FunctionTransformer;
* :mod:`.composites`: Pipeline chains, sklearn-pandas DataFrameMapper, ColumnTransformer;
* :mod:`.estimators`: linear models, decision trees and random forests;
* :mod:`.boosting`: HistGradientBoosting classifiers and regressors (numeric splits);
* :mod:`.compiler`: a node per fitted object, each proved on the input it really gets;
* :mod:`.edges`: the generated edge rows;
* :mod:`.plan`: the plan, its whole-path proof, its speed measurement and its manifest record.

The contract: on every training row and on generated edge rows (missing
values, unseen categories, out-of-range numbers) the plan gives the
reference's labels exactly and its probabilities within 1e-9, and defers
where the reference refuses a row. A step that does not meet that, or that
the fast path does not know, runs as it is; the user's own classes and
functions are always called as they are, with the input they expect. No
dependency beyond scikit-learn, numpy, scipy and pandas (ONNX Runtime was
not used: the user's functions and DataFrameMapper have no converter).
"""

from .base import Defer
from .plan import ATTRIBUTE, PLAN_VERSION, Plan, build_plan, summary

__all__ = ["ATTRIBUTE", "PLAN_VERSION", "Defer", "Plan", "build_plan", "summary"]
