"""Features beyond single neurons: semi-NMF decomposition of one layer's MLP activations."""

from neuronwidgets.features.snmf import (
                                         SNMFResult,
                                         coefficients,
                                         feature_direction,
                                         fit_snmf,
                                         match_features,
                                         nnls_rows,
                                         sparsify,
)

__all__ = ["SNMFResult", "fit_snmf", "coefficients", "feature_direction", "match_features", "nnls_rows", "sparsify"]
