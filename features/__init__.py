"""Point-in-time behavioural features: :mod:`features.build` runs the ``*.sql`` families, :mod:`features.registry` names them."""
