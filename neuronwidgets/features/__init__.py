"""Features beyond single neurons: semi-NMF decomposition of one layer's MLP activations (site mlp_in).

`snmf` fits A ~ F G^T (sparse F, G >= 0) on any activation matrix; `units` makes the fitted
features first-class units: a FeatureSession whose "neurons" are the features, so collect,
the index, the widgets, the explainers and the scorers work for them unchanged.
"""

from neuronwidgets.features.snmf import SNMFResult, coefficients, feature_direction, fit_snmf, match_features, nnls_rows, sparsify
from neuronwidgets.features.units import FEATURES_FILE, SOURCE_SITE, FeatureSession, FeatureSet, fit_features, gather_activations

__all__ = ["SNMFResult", "fit_snmf", "coefficients", "feature_direction", "match_features", "nnls_rows", "sparsify",
           "FeatureSet", "FeatureSession", "fit_features", "gather_activations", "SOURCE_SITE", "FEATURES_FILE"]
